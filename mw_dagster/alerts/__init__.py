"""Alerts domain: `alert_enrichments`, LLM context for the stream's anomalies, and its job.

`definitions.defs` holds the domain's definitions; `new_anomalies_sensor` (`sensors.anomalies`)
requests the job.
"""
