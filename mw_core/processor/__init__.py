"""Processor service: `prices` -> analysis -> PostgreSQL -> `alerts`, and its benchmark."""
