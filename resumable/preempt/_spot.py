"""Spot-interruption watchers: poll a cloud metadata endpoint, raise the guard's flag early.

Re-exported by `resumable.preempt`. Each watcher runs a daemon thread while its guard is
active, polls every `interval_s` (5 s default; AWS and GCP recommend about that) with short
timeouts, logs network errors at debug level and keeps polling, and calls
`guard.request(reason)` once when a notice appears: usually well before the SIGTERM. Requests
never go through an HTTP proxy (metadata endpoints are link-local). stdlib urllib suffices for
these tiny calls.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ._guard import PreemptionGuard

__all__ = ["AwsSpotWatcher", "AzureScheduledEventsWatcher", "GcpPreemptionWatcher", "SpotWatcher"]

logger = logging.getLogger(__name__)


class SpotWatcher:
    """Base class: poll a metadata endpoint in a daemon thread; on a notice, `guard.request()`.

    Subclasses implement `poll()`, returning a reason string when a notice is present. Network
    errors are logged at debug level and polling goes on; `stop()` returns promptly.
    """

    env_var = ""
    default_endpoint = ""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
    ) -> None:
        chosen = endpoint or (os.environ.get(self.env_var, "") if self.env_var else "")
        self.endpoint = (chosen or self.default_endpoint).rstrip("/")
        if interval_s <= 0 or timeout_s <= 0:
            raise ConfigurationError("interval_s and timeout_s must be positive")
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.notice: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        import urllib.request  # here, not at module top: import resumable.preempt stays light

        # Metadata endpoints are link-local: never send these requests through a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def poll(self) -> str | None:  # pragma: no cover - abstract
        """One check: a reason string if an interruption notice is present, else None."""
        raise NotImplementedError

    def start(self, guard: PreemptionGuard) -> None:
        """Start polling on behalf of `guard` (called by the guard)."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(guard,), name=f"resumable-{type(self).__name__}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; does not wait for a request in flight (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=0.2)

    def _run(self, guard: PreemptionGuard) -> None:
        while not self._stop.is_set():
            try:
                reason = self.poll()
            except Exception as exc:
                logger.debug("%s: poll of %s failed: %r", type(self).__name__, self.endpoint, exc)
                reason = None
            if reason and not self._stop.is_set():
                self.notice = reason
                logger.warning("%s", reason)
                guard.request(reason)
                return
            self._stop.wait(self.interval_s)

    def _http(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """(status, body) of one request; HTTP errors are statuses, network errors raise."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            self.endpoint + path, method=method, headers=dict(headers), data=None
        )
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.read(65536)
        except urllib.error.HTTPError as err:
            with err:
                return err.code, b""


class AwsSpotWatcher(SpotWatcher):
    """AWS EC2 spot: IMDSv2 `/latest/meta-data/spot/instance-action` (404 until a notice).

    Endpoint: argument, else env `RESUMABLE_AWS_IMDS_URL`, else ``http://169.254.169.254``.
    """

    env_var = "RESUMABLE_AWS_IMDS_URL"
    default_endpoint = "http://169.254.169.254"
    token_ttl_s = 21600

    def __init__(self, endpoint: str | None = None, **kwargs: float) -> None:
        super().__init__(endpoint, **kwargs)
        self._token: str | None = None
        self._token_expires = 0.0

    def _get_token(self) -> str | None:
        now = time.monotonic()
        if self._token is None or now >= self._token_expires:
            status, body = self._http(
                "PUT",
                "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl_s)},
            )
            if status != 200:
                logger.debug("IMDSv2 token request returned %d; trying without a token", status)
                return None
            self._token = body.decode("ascii", "replace").strip()
            self._token_expires = now + self.token_ttl_s / 2
        return self._token

    def poll(self) -> str | None:
        token = self._get_token()
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        status, body = self._http("GET", "/latest/meta-data/spot/instance-action", headers)
        if status == 401:
            self._token = None
            return None
        if status != 200:
            if status != 404:
                logger.debug("spot/instance-action returned %d", status)
            return None
        try:
            notice = json.loads(body)
            action, when = notice.get("action"), notice.get("time")
        except (ValueError, AttributeError):
            action, when = "?", body[:200].decode("utf-8", "replace")
        return f"AWS spot interruption notice (action={action}, time={when})"


class GcpPreemptionWatcher(SpotWatcher):
    """GCP spot/preemptible: `/computeMetadata/v1/instance/preempted` reads TRUE.

    Endpoint: argument, else env `RESUMABLE_GCP_METADATA_URL`, else ``http://169.254.169.254``.
    """

    env_var = "RESUMABLE_GCP_METADATA_URL"
    default_endpoint = "http://169.254.169.254"

    def poll(self) -> str | None:
        status, body = self._http(
            "GET", "/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"}
        )
        if status == 200 and body.strip().upper() == b"TRUE":
            return "GCP preemption notice (instance/preempted=TRUE)"
        return None


class AzureScheduledEventsWatcher(SpotWatcher):
    """Azure spot: Scheduled Events with ``EventType == "Preempt"``.

    Endpoint: argument, else env `RESUMABLE_AZURE_IMDS_URL`, else ``http://169.254.169.254``.
    Any Preempt event counts (the event's `Resources` are not matched against this VM's name).
    """

    env_var = "RESUMABLE_AZURE_IMDS_URL"
    default_endpoint = "http://169.254.169.254"

    def poll(self) -> str | None:
        status, body = self._http(
            "GET", "/metadata/scheduledevents?api-version=2020-07-01", {"Metadata": "true"}
        )
        if status != 200:
            return None
        try:
            events = json.loads(body).get("Events") or []
        except (ValueError, AttributeError):
            logger.debug("unparseable scheduled events document: %r", body[:200])
            return None
        for event in events:
            if isinstance(event, dict) and event.get("EventType") == "Preempt":
                return (
                    f"Azure Preempt scheduled event (id={event.get('EventId')}, "
                    f"not before={event.get('NotBefore')})"
                )
        return None
