"""Market Watch core: pure market logic plus thin I/O adapters. Never imports dagster."""

__version__ = "0.1.0"
