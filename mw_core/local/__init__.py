"""Embedded local infrastructure: PostgreSQL server and Kafka-protocol broker, no Docker needed."""
