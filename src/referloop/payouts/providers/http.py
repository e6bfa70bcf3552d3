"""HTTP to a payout provider: one pooled client, timeouts, and retries that resend the very same
request (same idempotency key, same body) via tenacity.

In-process retries are short (a few seconds in all); Razorpay suggests retrying at 1, 2 and 5
minutes, which is the worker's job: it calls again later with the same key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from referloop.payouts.providers.errors import (
    PayoutProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    RetryableProviderError,
)

log = structlog.get_logger(__name__)

# (method, path, response) -> the error it means. Only called for non-2xx answers.
Classifier = Callable[[str, str, httpx.Response], PayoutProviderError]


class ProviderHttp:
    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        classify: Classifier,
        timeout_seconds: float,
        max_attempts: int,
        retry_base_seconds: float,
        retry_max_seconds: float,
        auth: httpx.Auth | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self._classify = classify
        self._max_attempts = max_attempts
        self._retry_max = retry_max_seconds
        self._backoff = wait_exponential_jitter(
            initial=retry_base_seconds, max=retry_max_seconds, jitter=retry_base_seconds
        )
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=auth,
            headers={"User-Agent": "referloop-payouts/1", "Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0)),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        form: Sequence[tuple[str, str]] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send until it succeeds, fails for good, or attempts run out; always the same bytes."""
        # Encoded once: every attempt sends these very bytes (a provider compares retries' bodies).
        content: bytes | None = None
        request_headers = dict(headers or {})
        if json is not None:
            content = orjson.dumps(json)
            request_headers["Content-Type"] = "application/json"
        elif form is not None:
            content = urlencode(list(form)).encode()
            request_headers["Content-Type"] = "application/x-www-form-urlencoded"
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path, content=content, params=params, headers=request_headers)
        raise AssertionError("tenacity re-raises the last error")  # pragma: no cover

    async def _once(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        params: dict[str, str] | None,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        # A read changes nothing, so only a write can leave us not knowing what happened.
        writes = method != "GET"
        started = time.perf_counter()
        try:
            response = await self._client.request(
                method, path, content=content, params=params, headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ProviderUnavailable(
                f"Could not connect to {self.provider}: {exc!r}",
                provider=self.provider,
                outcome_unknown=False,
            ) from exc
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                f"{self.provider} did not answer in time", provider=self.provider, outcome_unknown=writes
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"Connection to {self.provider} failed: {exc!r}",
                provider=self.provider,
                outcome_unknown=writes,
            ) from exc
        log.info(
            "payout_provider_http",
            provider=self.provider,
            method=method,
            path=path,
            status=response.status_code,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if not response.is_success:
            raise self._classify(method, path, response)
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderUnavailable(
                f"{self.provider} answered {response.status_code} with a body that is not JSON",
                provider=self.provider,
                http_status=response.status_code,
                outcome_unknown=writes,
            ) from exc
        if not isinstance(body, dict):
            raise ProviderUnavailable(
                f"{self.provider} answered with unexpected JSON",
                provider=self.provider,
                outcome_unknown=writes,
            )
        return body

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, RetryableProviderError) or not exc.retry_in_process:
            return False
        # A long Retry-After is the worker's to honour (it reschedules); we don't sit on a connection.
        return not (
            isinstance(exc, ProviderRateLimited)
            and exc.retry_after is not None
            and exc.retry_after > self._retry_max
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ProviderRateLimited) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "payout_provider_retry",
            provider=self.provider,
            attempt=state.attempt_number,
            error=getattr(exc, "code", type(exc).__name__),
            detail=str(exc),
        )


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from APIs; fall back to our own backoff


def json_error(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of a provider's error body, or {} when the body has none (an HTML 502)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}
