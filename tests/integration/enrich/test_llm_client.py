"""`LLMClient` over real HTTP against the local OpenAI-compatible fake: retries, errors, secrets."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mw_core.enrich.llm import LLMClient, PermanentLLMError, TransientLLMError
from tests.fakes.llm import INJECTED_TEXT, FakeLLMServer, Malformed, Reply, Stall, Status

pytestmark = pytest.mark.integration

SECRET = "sk-test-SECRET-0123456789"
MESSAGES = [
    {"role": "system", "content": "Summarize."},
    {"role": "user", "content": "- symbol: BTCUSDT\n- window: 5 min (300 s)\n- return: -3.21%\n(0 item(s)"},
]


@pytest.fixture
def fake() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=SECRET) as server:
        yield server


class Sleeps:
    """Records the waits tenacity asks for and sleeps them for real (they are tiny)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


def client(fake: FakeLLMServer, **options: Any) -> LLMClient:
    opts: dict[str, Any] = {
        "base_url": fake.base_url,
        "api_key": SECRET,
        "model": "fake-model",
        "timeout_s": 0.3,
        "max_attempts": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "retry_after_max_s": 0.2,
    }
    opts.update(options)
    return LLMClient(**opts)


def test_success_returns_text_usage_and_latency(fake: FakeLLMServer) -> None:
    with client(fake) as llm:
        out = llm.complete(MESSAGES)
    assert out.text.startswith("BTCUSDT fell 3.21% in 5 min")
    assert out.prompt_tokens > 0
    assert out.completion_tokens > 0
    assert out.latency_ms > 0
    assert out.model == "fake-model"
    assert out.attempts == 1
    (request,) = fake.completion_requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    body = request.json()
    assert body["model"] == "fake-model"
    assert body["messages"] == MESSAGES
    assert body["max_tokens"] == llm.max_completion_tokens


def test_any_base_path_and_served_model(fake: FakeLLMServer) -> None:
    fake.set_script(Reply(content="hello there", model="fake-model-2024-01-01", include_usage=False))
    base = fake.base_url.removesuffix("/v1") + "/v1beta/openai/"
    with client(fake, base_url=base) as llm:
        out = llm.complete(MESSAGES)
    assert fake.completion_requests[0].path == "/v1beta/openai/chat/completions"
    assert out.model == "fake-model-2024-01-01"
    assert out.completion_tokens == len("hello there") // 4  # estimated when usage is missing


def test_rate_limit_storm_then_success_honours_retry_after(fake: FakeLLMServer) -> None:
    fake.set_script(Status(429, retry_after="0.05"), Status(429, retry_after_ms="80"), Reply())
    sleeps = Sleeps()
    with client(fake, sleep=sleeps) as llm:
        out = llm.complete(MESSAGES)
    assert fake.calls == 3
    assert out.attempts == 3
    assert sleeps.waits == pytest.approx([0.05, 0.08])
    gaps = [b.received_at - a.received_at for a, b in zip(fake.requests, fake.requests[1:], strict=False)]
    assert gaps[0] >= 0.05
    assert gaps[1] >= 0.08


def test_long_retry_after_is_capped(fake: FakeLLMServer) -> None:
    fake.set_script(Status(429, retry_after="3600"), Reply())
    sleeps = Sleeps()
    with client(fake, sleep=sleeps, retry_after_max_s=0.1) as llm:
        llm.complete(MESSAGES)
    assert sleeps.waits == [0.1]


def test_persistent_5xx_gives_transient_error_after_bounded_jittered_retries(fake: FakeLLMServer) -> None:
    fake.set_script(default=Status(503))
    sleeps = Sleeps()
    with client(fake, sleep=sleeps, max_attempts=4) as llm, pytest.raises(TransientLLMError) as info:
        llm.complete(MESSAGES)
    assert info.value.reason == "server_error"
    assert info.value.status == 503
    assert info.value.attempts == 4
    assert fake.calls == 4
    assert len(sleeps.waits) == 3
    assert all(0 <= w <= 0.05 for w in sleeps.waits)


def test_stall_times_out(fake: FakeLLMServer) -> None:
    fake.set_script(default=Stall(5.0))
    started = time.monotonic()
    with client(fake, timeout_s=0.2, max_attempts=2) as llm, pytest.raises(TransientLLMError) as info:
        llm.complete(MESSAGES)
    assert info.value.reason == "timeout"
    assert fake.calls == 2
    assert time.monotonic() - started < 2.0


def test_stall_then_answer(fake: FakeLLMServer) -> None:
    fake.set_script(Stall(5.0), Reply())
    with client(fake, timeout_s=0.2) as llm:
        out = llm.complete(MESSAGES)
    assert out.attempts == 2


@pytest.mark.parametrize(
    "malformed",
    [
        Malformed(),
        Malformed(body=b'{"id": "x", "object": "chat.completion"}'),
        Malformed(body=b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": null}}]}'),
        Malformed(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
    ],
    ids=["truncated-json", "no-choices", "null-content", "html"],
)
def test_malformed_responses_are_transient(fake: FakeLLMServer, malformed: Malformed) -> None:
    fake.set_script(default=malformed)
    with client(fake, max_attempts=2) as llm, pytest.raises(TransientLLMError) as info:
        llm.complete(MESSAGES)
    assert info.value.reason == "malformed_response"
    assert fake.calls == 2


def test_malformed_then_success(fake: FakeLLMServer) -> None:
    fake.set_script(Malformed(), Reply(content=INJECTED_TEXT))
    with client(fake) as llm:
        out = llm.complete(MESSAGES)
    assert out.text == INJECTED_TEXT  # the client returns raw text; vetting is the caller's job


def test_wrong_key_is_permanent_fatal_and_not_retried(fake: FakeLLMServer) -> None:
    with client(fake, api_key="sk-wrong") as llm, pytest.raises(PermanentLLMError) as info:
        llm.complete(MESSAGES)
    assert info.value.status == 401
    assert info.value.reason == "unauthorized"
    assert info.value.fatal
    assert fake.calls == 1


def test_bad_request_is_permanent_not_fatal(fake: FakeLLMServer) -> None:
    fake.set_script(Status(400, message="context_length_exceeded"))
    with client(fake) as llm, pytest.raises(PermanentLLMError) as info:
        llm.complete(MESSAGES)
    assert info.value.reason == "bad_request"
    assert not info.value.fatal
    assert fake.calls == 1


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = LLMClient(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET, model="m", max_attempts=2, backoff_base_s=0.01
    )
    with llm, pytest.raises(TransientLLMError) as info:
        llm.complete(MESSAGES)
    assert info.value.reason == "connection_error"


def test_secret_never_in_errors_reprs_or_logs(fake: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    fake.set_script(
        Status(429, retry_after="0"), Status(500), Malformed(), Status(401, message=f"bad key {SECRET}")
    )
    with client(fake, max_attempts=3) as llm:
        try:
            llm.complete(MESSAGES)
        except TransientLLMError as exc:
            errors.append(exc)
        try:
            llm.complete(MESSAGES)
        except PermanentLLMError as exc:
            errors.append(exc)
        text = repr(llm)
    assert len(errors) == 2
    for err in errors:
        assert SECRET not in str(err)
        assert SECRET not in repr(err)
        assert err.__context__ is None  # no chained openai error holding the request headers
        assert err.__cause__ is None
    assert SECRET not in text
    assert SECRET not in caplog.text
    assert "retrying" in caplog.text
