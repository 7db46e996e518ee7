"""Assets per domain: `infra` (schema, service health), `markets`, `news`, `alerts`."""
