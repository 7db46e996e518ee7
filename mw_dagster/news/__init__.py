"""News domain: `headlines` from the RSS/Atom feeds, its checks and `headlines_job`.

`definitions.defs` holds the domain's definitions; `rss_poll_sensor` (`sensors.rss`) requests the job.
"""
