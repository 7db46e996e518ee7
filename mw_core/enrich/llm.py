"""LLM adapter: one synchronous client for any OpenAI-compatible chat-completions API.

Contract:
- `LLMClient.complete(messages)` sends one chat completion and returns a `Completion` (raw text,
  token usage, wall latency including retries, served model). It is synchronous because Dagster
  assets are; async callers run it in a worker thread.
- Provider base URLs: openai -> ``https://api.openai.com/v1``, gemini ->
  ``https://generativelanguage.googleapis.com/v1beta/openai/``, ollama ->
  ``http://127.0.0.1:11434/v1`` (no key needed); ``Settings.llm_base_url`` overrides.
  `LLMClient.from_settings` returns None when the settings disable the LLM (provider ``template``
  or no key), so callers use the template without any HTTP call.
- Retries: `mw_core.adapters.retry` is the only retry layer (the openai client runs with
  ``max_retries=0``).
  Timeouts, connection errors, 408/409/429/5xx and malformed responses are retried up to
  `max_attempts` times with exponential backoff and full jitter; a ``Retry-After`` /
  ``retry-after-ms`` header replaces the backoff, capped at `retry_after_max_s`. When attempts run
  out, `TransientLLMError` is raised. 400/401/403/404/422 raise `PermanentLLMError` at once
  (``fatal`` for auth / not-found errors: later calls in the run would fail the same way).
- Secrets never appear in exceptions, logs or reprs: errors carry our own short messages (never
  the provider's body or request) and are raised outside the ``except`` block, so they hold no
  reference to the underlying request and its ``Authorization`` header.
- Library code never reads the environment: the key and base URL are always passed explicitly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import openai

from mw_core.adapters.retry import parse_retry_after, retry_sync
from mw_core.config import redact_url

if TYPE_CHECKING:
    from mw_core.config import Settings

log = logging.getLogger(__name__)

PROVIDER_BASE_URLS: Final[dict[str, str]] = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai/",
    "ollama": "http://127.0.0.1:11434/v1",
}
# Ollama ignores the key, but the openai client insists on one (and would otherwise read the env).
_KEYLESS_PLACEHOLDER = "ollama"
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_FATAL_STATUS = frozenset({401, 403, 404})


class LLMError(Exception):
    """Base of LLM failures. `reason` is a short machine-readable code; messages hold no secrets."""

    def __init__(
        self, reason: str, detail: str = "", *, status: int | None = None, attempts: int = 1
    ) -> None:
        msg = reason + (f" (HTTP {status})" if status is not None else "") + (f": {detail}" if detail else "")
        super().__init__(msg)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.attempts = attempts


class TransientLLMError(LLMError):
    """The provider was slow, overloaded or garbled and stayed so through the bounded retries."""


class PermanentLLMError(LLMError):
    """A request the provider will keep refusing (bad request, auth, unknown model)."""

    @property
    def fatal(self) -> bool:
        """True when every later call with this configuration would fail too (stop calling)."""
        return self.status in _FATAL_STATUS


class _Retryable(Exception):
    """Internal: one failed attempt worth retrying."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Completion:
    """One successful chat completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float  # wall time of `complete()`, retries and backoff included
    model: str  # the model the provider says served the request
    attempts: int = 1

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _classify(exc: Exception) -> _Retryable | PermanentLLMError:
    """Map an openai / decoding exception to a retryable failure or a permanent error."""
    if isinstance(exc, openai.APITimeoutError):
        return _Retryable("timeout")
    if isinstance(exc, openai.APIConnectionError):
        return _Retryable("connection_error")
    if isinstance(exc, openai.APIResponseValidationError):
        return _Retryable("malformed_response", status=exc.status_code)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = parse_retry_after(exc.response.headers)
        if status == 429:
            return _Retryable("rate_limited", status=status, retry_after=retry_after)
        if status >= 500 or status in _RETRYABLE_STATUS:
            return _Retryable("server_error", status=status, retry_after=retry_after)
        kind = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status, "bad_request")
        return PermanentLLMError(kind, status=status)
    if isinstance(exc, ValueError):  # JSON decoding of a garbled body (json.JSONDecodeError)
        return _Retryable("malformed_response")
    return _Retryable("unexpected_error", status=None)


class LLMClient:
    """Chat completions over an OpenAI-compatible API with bounded, jittered retries.

    Args:
        base_url: API base URL, e.g. ``https://api.openai.com/v1``.
        api_key: Bearer key; None only for keyless servers (Ollama).
        model: Model name sent with each request (and stored with each enrichment).
        timeout_s: Per-attempt HTTP timeout.
        max_attempts: Attempts per `complete()` call, the first included.
        backoff_base_s: Scale of the exponential backoff (full jitter: uniform in [0, base * 2^n]).
        backoff_max_s: Upper bound of one backoff.
        retry_after_max_s: Upper bound of a wait requested by ``Retry-After``.
        max_completion_tokens: ``max_tokens`` of each request.
        temperature: Sampling temperature.
        sleep: How to wait between attempts (a seam for tests that record the waits).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout_s: float = 20.0,
        max_attempts: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        retry_after_max_s: float = 20.0,
        max_completion_tokens: int = 220,
        temperature: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_completion_tokens = max_completion_tokens
        self._temperature = temperature
        self._retry_after_max_s = retry_after_max_s
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._client = openai.OpenAI(
            api_key=api_key or _KEYLESS_PLACEHOLDER,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,  # `retry_sync` is the only retry layer
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> LLMClient | None:
        """A client for `settings`, or None when the LLM is disabled (template provider / no key).

        `options` are passed to the constructor (e.g. ``max_attempts``, ``backoff_base_s``).
        """
        if not settings.llm_enabled or settings.llm_provider == "template":
            return None
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else None
        return cls(
            base_url=settings.llm_base_url or PROVIDER_BASE_URLS[settings.llm_provider],
            api_key=key,
            model=settings.llm_model,
            timeout_s=settings.llm_timeout_s,
            **options,
        )

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={_safe_url(self.base_url)!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls ------------------------------------------------------------------------------------

    def complete(self, messages: Sequence[Mapping[str, str]]) -> Completion:
        """One chat completion for `messages`.

        Raises:
            TransientLLMError: every attempt failed with a retryable error (the last one is reported).
            PermanentLLMError: the provider refused the request (no retry).
        """
        start = time.perf_counter()
        payload = [dict(m) for m in messages]
        attempts = 0

        def attempt() -> tuple[str, tuple[int, int], str]:
            nonlocal attempts
            attempts += 1
            return self._attempt(payload)

        failure: _Retryable | None = None
        try:
            text, usage, served = retry_sync(
                attempt,
                base_s=self._backoff_base_s,
                cap_s=self._backoff_max_s,
                max_attempts=self.max_attempts,
                retry_on=(_Retryable,),
                on_retry=self._log_retry,
                retry_after=self._asked_wait,
                sleep=self._sleep,
            )
        except _Retryable as exc:
            failure = exc
        if failure is not None:
            # Raised outside the except block: the error keeps no reference to the request.
            raise TransientLLMError(
                failure.reason,
                f"gave up after {self.max_attempts} attempt(s)",
                status=failure.status,
                attempts=self.max_attempts,
            )
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Completion(
            text=text,
            prompt_tokens=usage[0],
            completion_tokens=usage[1],
            latency_ms=latency_ms,
            model=served or self.model,
            attempts=attempts,
        )

    def _attempt(self, payload: list[dict[str, str]]) -> tuple[str, tuple[int, int], str]:
        failure: _Retryable | PermanentLLMError | None = None
        response: Any = None
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=payload,  # type: ignore[arg-type]  # plain role/content dicts
                max_tokens=self.max_completion_tokens,
                temperature=self._temperature,
            )
        except (openai.OpenAIError, ValueError) as exc:
            failure = _classify(exc)
        if failure is not None:
            raise failure
        return _parse_completion(response, payload)

    def _asked_wait(self, exc: BaseException) -> float | None:
        """A ``Retry-After`` replaces the backoff, capped at `retry_after_max_s`."""
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, self._retry_after_max_s)
        return None

    def _log_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        reason = exc.reason if isinstance(exc, _Retryable) else type(exc).__name__
        log.warning(
            "llm attempt %d/%d failed (%s); retrying in %.2fs", attempt, self.max_attempts, reason, delay
        )


def _parse_completion(
    response: Any, payload: Sequence[Mapping[str, str]]
) -> tuple[str, tuple[int, int], str]:
    """Text, (prompt, completion) tokens and served model from a response, or `_Retryable`."""
    # A non-JSON content type makes the openai client hand back the raw body as a string.
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise _Retryable("malformed_response")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        raise _Retryable("malformed_response")
    if getattr(choices[0], "finish_reason", None) == "content_filter":
        raise PermanentLLMError("content_filter")
    usage = getattr(response, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        # Some compatible servers omit usage; estimate so budgets still hold.
        prompt_tokens = sum(len(m.get("content", "")) for m in payload) // 4
        completion_tokens = len(content) // 4
    served = getattr(response, "model", None)
    return content, (prompt_tokens, completion_tokens), served if isinstance(served, str) else ""


def _safe_url(url: str) -> str:
    """Base URL without credentials or query string (Gemini-style ``?key=`` included)."""
    return redact_url(url.split("?", 1)[0])


__all__ = [
    "PROVIDER_BASE_URLS",
    "Completion",
    "LLMClient",
    "LLMError",
    "PermanentLLMError",
    "TransientLLMError",
]
