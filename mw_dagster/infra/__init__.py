"""Infra domain: the PostgreSQL schema (`db_schema`) and the health of the price flow (`service_health`).

`definitions.defs` holds the domain's assets; `health` records `service_health` observations (used
by `service_health_sensor` and by any process that reports its own health).
"""
