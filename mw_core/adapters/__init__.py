"""Adapters room: PostgreSQL (pool, schema, repositories), Kafka (the bus) and the one retry helper."""
