"""Webhook sink: POST each notification as JSON, retrying transient failures with backoff."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC

import httpx
import orjson

from alertwarden.errors import ConfigError, SinkError
from alertwarden.logs import get_logger
from alertwarden.sinks.base import Notification

log = get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# A retried POST may reach the receiver twice (a read timeout after the request was processed),
# which is why every request carries the transition id as its Idempotency-Key.
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

# Slack and Discord webhook URLs carry their secret token as a long path segment, so path
# segments from this length on are masked like credentials.
_SECRET_SEGMENT_MIN_CHARS = 16
_REDACTED = "<redacted>"
# Caps the backoff exponent so that a large max_attempts cannot overflow a float.
_MAX_BACKOFF_EXPONENT = 60


@dataclass(frozen=True, slots=True)
class _AttemptResult:
    """Outcome of one POST: delivered, or the status or transport error that stopped it."""

    delivered: bool
    retryable: bool = False
    status: int | None = None
    reason: str | None = None
    error: str | None = None
    retry_after_s: float | None = None


class WebhookSink:
    """POSTs Notification.as_dict() as JSON with an `Idempotency-Key: <transition_id>` header.

    Connection errors, timeouts, 429 and 5xx responses are retried with exponential backoff and
    jitter, up to `max_attempts` POSTs in total. A Retry-After header replaces the backoff, capped
    at `backoff_max_s`. Any other non-2xx status fails at once. When delivery fails, `send`
    raises SinkError with the redacted URL and the last status or error.

    A client passed in stays open on close(); a client created here is closed by close().
    `sleep` and `random_fraction` (returning a float in [0, 1)) exist so tests control delays.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self._url = parse_webhook_url(url)
        self.display_url = redact_url(self._url)
        _validate_retry_settings(timeout_s, max_attempts, backoff_initial_s, backoff_max_s)
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._headers = httpx.Headers(headers or {})
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self._sleep = sleep
        self._random_fraction = random_fraction
        self._secrets = _url_secrets(self._url)

    @property
    def name(self) -> str:
        return f"webhook {self.display_url}"

    async def send(self, notification: Notification) -> None:
        body = orjson.dumps(notification.as_dict())
        headers = self._headers.copy()
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = notification.transition_id

        for attempt in range(1, self._max_attempts + 1):
            result = await self._post_once(body, headers)
            if result.delivered:
                return
            if not result.retryable or attempt == self._max_attempts:
                self._log_attempt(
                    log.error, "webhook_delivery_failed", result, attempt, notification
                )
                raise SinkError(self._failure_message(result, attempt))
            delay_s = self._retry_delay_s(attempt, result.retry_after_s)
            self._log_attempt(
                log.warning, "webhook_retry", result, attempt, notification, delay_s=delay_s
            )
            await self._sleep(delay_s)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _post_once(self, body: bytes, headers: httpx.Headers) -> _AttemptResult:
        try:
            response = await self._client.post(
                self._url, content=body, headers=headers, timeout=self._timeout_s
            )
        except _RETRYABLE_ERRORS as exc:
            return _AttemptResult(delivered=False, retryable=True, error=self._describe(exc))
        except httpx.HTTPError as exc:
            return _AttemptResult(delivered=False, error=self._describe(exc))

        status = response.status_code
        if 200 <= status < 300:
            return _AttemptResult(delivered=True, status=status)
        retryable = status == 429 or status >= 500
        retry_after_s = None
        if retryable:
            retry_after_s = parse_retry_after_s(response.headers.get("Retry-After"), time.time())
        return _AttemptResult(
            delivered=False,
            retryable=retryable,
            status=status,
            reason=response.reason_phrase,
            retry_after_s=retry_after_s,
        )

    def _retry_delay_s(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self._backoff_max_s)
        exponent = min(attempt - 1, _MAX_BACKOFF_EXPONENT)
        backoff_s = min(self._backoff_initial_s * 2**exponent, self._backoff_max_s)
        # Equal jitter: the fixed half keeps retries spaced out, and the random half spreads
        # the retries of many notifications that failed at the same moment.
        return backoff_s / 2 + self._random_fraction() * backoff_s / 2

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # httpx puts the request URL into some messages, and the URL may contain credentials.
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def _failure_message(self, result: _AttemptResult, attempt: int) -> str:
        attempts = f"{attempt} attempt" + ("" if attempt == 1 else "s")
        if result.status is None:
            return f"webhook {self.display_url} failed after {attempts}: {result.error}"
        status = f"{result.status} {result.reason or ''}".strip()
        if result.retryable:
            return f"webhook {self.display_url} failed after {attempts}: last status {status}"
        return (
            f"webhook {self.display_url} rejected the notification with status {status}, "
            "which is not retried. Check the URL and the payload the receiver expects"
        )

    def _log_attempt(
        self,
        emit: Callable[..., object],
        event: str,
        result: _AttemptResult,
        attempt: int,
        notification: Notification,
        **extra: object,
    ) -> None:
        emit(
            event,
            url=self.display_url,
            attempt=attempt,
            max_attempts=self._max_attempts,
            status=result.status,
            error=result.error,
            transition_id=notification.transition_id,
            rule=notification.rule_id,
            **extra,
        )


def parse_retry_after_s(value: str | None, now_s: float) -> float | None:
    """Return the delay a Retry-After header requests, in seconds, or None when absent or invalid.

    The header contains either a number of seconds or an HTTP date. A date in the past means 0.
    `now_s` is the current Unix time, used only for the date form.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        delay_s = float(text)
    except ValueError:
        return _retry_after_date_s(text, now_s)
    if delay_s != delay_s or delay_s < 0 or delay_s == float("inf"):
        return None
    return delay_s


def _retry_after_date_s(text: str, now_s: float) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        # parsedate_to_datetime returns a naive datetime for the zone "-0000", and HTTP dates
        # are always GMT.
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now_s)


def redact_url(url: httpx.URL) -> str:
    """Return the URL without userinfo, with the query and long path segments masked.

    The result is safe to log and to put in error messages.
    """
    raw_path = url.raw_path.split(b"?", 1)[0].decode("ascii")
    segments = []
    for segment in raw_path.split("/"):
        if len(segment) >= _SECRET_SEGMENT_MIN_CHARS:
            segments.append(_REDACTED)
        else:
            segments.append(segment)
    text = f"{url.scheme}://{url.netloc.decode('ascii')}{'/'.join(segments)}"
    if url.query:
        text += f"?{_REDACTED}"
    return text


def _url_secrets(url: httpx.URL) -> list[str]:
    candidates = [url.userinfo.decode("ascii"), url.password or "", url.query.decode("ascii")]
    for segment in url.raw_path.split(b"?", 1)[0].decode("ascii").split("/"):
        if len(segment) >= _SECRET_SEGMENT_MIN_CHARS:
            candidates.append(segment)
    # Longer secrets are replaced first, so a secret that contains a shorter one is replaced whole.
    return sorted({secret for secret in candidates if secret}, key=len, reverse=True)


def parse_webhook_url(url: str) -> httpx.URL:
    """Return the parsed URL, or raise ConfigError describing the problem without the URL."""
    # Messages here never repeat the raw value because it may contain credentials.
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(
            "invalid webhook URL: it cannot be parsed. Use http(s)://host[:port]/path"
        ) from exc
    if parsed.scheme not in ("http", "https"):
        raise ConfigError(
            f"invalid webhook URL scheme {parsed.scheme!r}: use an http:// or https:// URL"
        )
    if not parsed.host:
        raise ConfigError("invalid webhook URL: the host is missing. Use http(s)://host/path")
    # httpx percent-encodes characters that no host name or address contains, such as a space
    # or an unclosed bracket, instead of rejecting them.
    if "%" in parsed.host:
        raise ConfigError(
            "invalid webhook URL: the host contains characters that no host name contains. Use"
            " http(s)://host/path with a host name or an IP address"
        )
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ConfigError(f"invalid webhook URL port {parsed.port}: use a port from 1 to 65535")
    return parsed


def _validate_retry_settings(
    timeout_s: float, max_attempts: int, backoff_initial_s: float, backoff_max_s: float
) -> None:
    if not timeout_s > 0:
        raise ConfigError(f"invalid webhook timeout_s {timeout_s!r}: use a number above 0")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(f"invalid webhook max_attempts {max_attempts!r}: use an integer >= 1")
    if not backoff_initial_s >= 0:
        raise ConfigError(
            f"invalid webhook backoff_initial_s {backoff_initial_s!r}: use a number >= 0"
        )
    if not backoff_max_s >= backoff_initial_s:
        raise ConfigError(
            f"invalid webhook backoff_max_s {backoff_max_s!r}: "
            f"use a number >= backoff_initial_s ({backoff_initial_s!r})"
        )
