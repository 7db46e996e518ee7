"""Alerts domain: the stream's `alert_events`, `alert_enrichments` (LLM context per alert), its job.

`definitions.defs` holds the domain's definitions; `new_anomalies_sensor` (`sensors.anomalies`)
requests the job.
"""
