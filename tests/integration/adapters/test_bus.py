"""Kafka adapter against a real Kafka-protocol broker: topic errors, replication, mutual TLS.

What the embedded Tansu broker can and cannot show (probed, aiokafka 0.14): it accepts any
replication factor (even 0) and any partition count, and TOPIC_ALREADY_EXISTS is the only
CreateTopics error it returns. So here:
- a replication factor above the brokers is refused by `ensure_topics` from the cluster's own
  broker list (a real Kafka answers INVALID_REPLICATION_FACTOR for it, which the per-topic check
  below turns into the same `TopicSetupError`);
- the per-topic error codes are proven with the real TOPIC_ALREADY_EXISTS of concurrent creators,
  and the other codes with aiokafka's own CreateTopics response type.
Mutual TLS runs end to end: Tansu behind a TLS proxy that requires a client certificate signed by
a throwaway CA (made with the openssl CLI), with Tansu advertising the proxy's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import NotControllerError, for_code
from aiokafka.protocol.admin import CreateTopicsResponse_v3

from mw_core.adapters import bus
from mw_core.config import Settings, load_settings
from mw_core.local.broker import tansu_binary
from mw_core.local.ports import free_port, wait_for_port

pytestmark = pytest.mark.integration


async def topics_of(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(**bus.client_options(settings))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


# --- replication factor and per-topic errors ------------------------------------------------


async def test_replication_factor_above_the_brokers_fails_start_up_clearly(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(kafka_replication_factor=3)
    with pytest.raises(bus.TopicSetupError) as err:
        await bus.ensure_topics(settings)
    assert set(err.value.errors) == set(bus.topic_specs(settings))
    message = str(err.value)
    assert "INVALID_REPLICATION_FACTOR" in message and "MW_KAFKA_REPLICATION_FACTOR=3" in message
    assert "1 broker(s)" in message and settings.topic_prices in message
    assert not isinstance(err.value, bus.KafkaError)  # not retried as a transient Kafka error
    assert not (set(bus.topic_specs(settings)) & await topics_of(settings))  # nothing half-created


async def test_concurrent_creators_each_topic_created_once(settings: Settings) -> None:
    """The broker's real per-topic TOPIC_ALREADY_EXISTS (losers of the race) is success, not an error."""
    results = await asyncio.gather(*(bus.ensure_topics(settings) for _ in range(4)))
    created = [name for names in results for name in names]
    assert sorted(created) == sorted(bus.topic_specs(settings))  # each reported by one creator only
    assert set(bus.topic_specs(settings)) <= await topics_of(settings)
    assert await bus.ensure_topics(settings) == []


def test_every_per_topic_error_code_is_checked() -> None:
    ok = CreateTopicsResponse_v3(
        throttle_time_ms=0, topic_errors=[("a", 0, None), ("b", 36, "Topic with this name already exists.")]
    )
    bus.check_create_topics_response(ok.topic_errors)  # success and TOPIC_ALREADY_EXISTS
    refused = CreateTopicsResponse_v3(
        throttle_time_ms=0,
        topic_errors=[
            ("prices", 38, "Replication factor: 3 larger than available brokers: 1."),
            ("news", 44, None),
            ("alerts", 29, None),
            ("dlq", 0, None),
        ],
    )
    with pytest.raises(bus.TopicSetupError) as err:
        bus.check_create_topics_response(refused.topic_errors)
    assert err.value.errors == {
        "prices": "INVALID_REPLICATION_FACTOR: Replication factor: 3 larger than available brokers: 1.",
        "news": f"POLICY_VIOLATION: {for_code(44).description}",
        "alerts": f"TOPIC_AUTHORIZATION_FAILED: {for_code(29).description}",
    }
    # A retriable code (the controller moved) stays a KafkaError: the caller's retry policy applies.
    with pytest.raises(NotControllerError, match="'prices'"):
        bus.check_create_topics_response([("prices", 41, None)])


async def test_acks_and_idempotence_follow_the_replication_factor(
    make_settings: Callable[..., Settings],
) -> None:
    single = bus.producer(make_settings())
    cluster = bus.producer(make_settings(kafka_replication_factor=3))
    try:
        # Tansu (and any one-replica topic) has no idempotent producer; a cluster gets one.
        assert single._txn_manager is None
        assert cluster._txn_manager is not None
    finally:
        for p in (single, cluster):
            await p.stop()
    assert bus.min_insync_replicas(1) == 1
    assert bus.min_insync_replicas(2) == 1
    assert bus.min_insync_replicas(3) == 2
    assert bus.min_insync_replicas(5) == 2


# --- mutual TLS end to end ------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with `password`
    password: str = "s3cret-key-pass"


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=mw test CA", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")
    for who, key_args in (("server", ["-nodes"]), ("client", ["-passout", f"pass:{pki.password}"])):
        _openssl("req", "-newkey", "rsa:2048", *key_args, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN=mw-{who}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext", cwd=d)  # fmt: skip
    return pki


@dataclass
class TlsProxy:
    """TLS in front of a plaintext broker; requires a client certificate signed by the CA."""

    upstream_port: int
    context: ssl.SSLContext
    port: int = field(default_factory=lambda: free_port("127.0.0.1"))
    peers: list[str] = field(default_factory=list)  # CN of each verified client certificate
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        self.peers.extend(v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@pytest.fixture
async def tls_broker(pki: Pki, tmp_path: Path) -> AsyncIterator[TlsProxy]:
    """Tansu on a loopback port, advertising the TLS proxy (`localhost:<proxy port>`) to clients."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    proxy = TlsProxy(upstream_port=free_port("127.0.0.1"), context=context)
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", proxy.port, ssl=context)
    with (tmp_path / "tansu.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{proxy.upstream_port}",
             "--advertised-listener-url", f"tcp://localhost:{proxy.port}", "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", proxy.upstream_port, timeout=30)
        yield proxy
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
        server.close()
        for task in list(proxy._tasks):
            task.cancel()


def tls_settings(port: int, **overrides: object) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        kafka_bootstrap=f"localhost:{port}",
        topic_prices=f"prices-{suffix}",
        topic_news=f"news-{suffix}",
        topic_alerts=f"alerts-{suffix}",
        topic_dlq=f"dlq-{suffix}",
        prices_partitions=1,
        **overrides,
    )


async def test_mutual_tls_end_to_end(tls_broker: TlsProxy, pki: Pki) -> None:
    settings = tls_settings(
        tls_broker.port,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pki.ca,
        kafka_ssl_certfile=pki.client_cert,
        kafka_ssl_keyfile=pki.client_key,
        kafka_ssl_password=pki.password,
    )
    assert sorted(await bus.ensure_topics(settings)) == sorted(bus.topic_specs(settings))

    async def send(producer: bus.AIOKafkaProducer) -> None:
        await producer.send_and_wait(settings.topic_prices, b"over mutual TLS", key=b"BTCUSDT")

    await bus.with_producer(settings, send)
    consumer = bus.consumer(settings, settings.topic_prices, group_id=None)
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()
    assert [r.value for records in batch.values() for r in records] == [b"over mutual TLS"]
    assert tls_broker.peers and set(tls_broker.peers) == {"mw-client"}  # every connection presented it


async def test_without_a_client_certificate_the_broker_is_unreachable(tls_broker: TlsProxy, pki: Pki) -> None:
    settings = tls_settings(tls_broker.port, kafka_security_protocol="SSL", kafka_ssl_cafile=pki.ca)
    with pytest.raises((bus.KafkaError, OSError, TimeoutError)):
        await bus.ping(settings, timeout=5.0)
    assert tls_broker.peers == []


def test_unusable_tls_files_fail_at_start_up_as_configuration_errors(pki: Pki, tmp_path: Path) -> None:
    base = {"kafka_bootstrap": "localhost:9093", "kafka_security_protocol": "SSL", "kafka_ssl_cafile": pki.ca}
    cases: dict[str, dict[str, object]] = {
        "wrong key password": {"kafka_ssl_certfile": pki.client_cert, "kafka_ssl_keyfile": pki.client_key,
                               "kafka_ssl_password": "wrong"},
        "missing file": {"kafka_ssl_certfile": tmp_path / "absent.pem"},
        "key without certificate": {"kafka_ssl_keyfile": pki.client_key},
        "key of another certificate": {"kafka_ssl_certfile": pki.server_cert, "kafka_ssl_keyfile": pki.client_key,
                                       "kafka_ssl_password": pki.password},
    }  # fmt: skip
    for case, overrides in cases.items():
        with pytest.raises(ValueError) as err:  # not OSError: a retry policy must not wait for it
            bus.client_options(load_settings(**base, **overrides))
        assert not isinstance(err.value, OSError), case
    with pytest.raises(ValueError, match="MW_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"):
        bus.client_options(load_settings(kafka_bootstrap="localhost:9092", kafka_ssl_cafile=pki.ca))
    context = bus.ssl_context(
        load_settings(**base, kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.client_key,
                      kafka_ssl_password=pki.password)
    )  # fmt: skip
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


@pytest.fixture(autouse=True)
def _no_env_tls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings built here must not pick up MW_KAFKA_* from the developer's environment or .env."""
    for key in ("MW_KAFKA_SECURITY_PROTOCOL", "MW_KAFKA_SSL_CAFILE", "MW_KAFKA_SSL_CERTFILE",
                "MW_KAFKA_SSL_KEYFILE", "MW_KAFKA_SSL_PASSWORD", "MW_KAFKA_REPLICATION_FACTOR"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    yield
