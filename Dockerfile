# syntax=docker/dockerfile:1
# Market Watch production image: one image for every service (ingest, processor, Dagster webserver
# and daemon, init job); the service's `command` picks the role. Runs as a non-root user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md constraints.txt ./
COPY mw_core ./mw_core
COPY mw_dagster ./mw_dagster
COPY sensors ./sensors
# constraints.txt pins every runtime dependency (and pip itself): the same versions on every build.
# No `local` extra: the embedded PostgreSQL / Kafka servers are for laptops, not for this image.
RUN /opt/venv/bin/pip install -c constraints.txt pip \
    && /opt/venv/bin/pip install -c constraints.txt .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="market-watch" \
      org.opencontainers.image.description="Real-time crypto market watch: Binance -> Kafka -> processor -> PostgreSQL, orchestrated by Dagster"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/home \
    MW_STATE_DIR=/var/lib/mw \
    MW_HOST=0.0.0.0 \
    MW_METRICS_PORT=9100 \
    MW_LOG_FORMAT=json
RUN groupadd --system --gid 10001 mw \
    && useradd --system --uid 10001 --gid mw --home-dir /home/mw --create-home --shell /usr/sbin/nologin mw
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# workspace.yaml loads the one code location (mw_dagster.definitions); dagster.yaml keeps runs,
# events and schedules in PostgreSQL (env DAGSTER_PG_URL), shared by webserver and daemon.
COPY workspace.yaml dagster.yaml deploy/healthcheck.py ./
# $DAGSTER_HOME/storage is where compose mounts the dagster-storage volume: it must exist, owned by
# mw, so that a new named volume is created mw-owned (an absent mount point makes it root-owned,
# and compute logs and the maintenance job's pickled outputs could not be written).
RUN mkdir -p "$DAGSTER_HOME/storage" /var/lib/mw \
    && cp /app/dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && chown -R mw:mw "$DAGSTER_HOME" /var/lib/mw
USER mw
EXPOSE 3000 9100
CMD ["mw"]
