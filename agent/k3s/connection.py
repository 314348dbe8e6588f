"""The lightkube client: where its configuration comes from, and how its errors become ours.

Configuration, in order: an explicit kubeconfig path (K3s writes `/etc/rancher/k3s/k3s.yaml`, readable by root
only), the in-cluster service account, `$KUBECONFIG`, `~/.kube/config`. Errors are classified once here:
unreachable, 5xx, 429 and 410 are temporary (retried with backoff, or after the server's Retry-After when it
sends one: API Priority and Fairness answers 429 with it); 401, 403, 404, 409, 4xx are permanent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx2
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig

from agent.k3s.errors import ApiCallError, ClusterConfigError
from agent.k3s.settings import ClusterSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
K3S_KUBECONFIG = Path("/etc/rancher/k3s/k3s.yaml")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")  # where kubelet mounts the token
TEMPORARY_STATUS = frozenset({408, 410, 425, 429, 500, 502, 503, 504})
MAX_MESSAGE = 1500  # leaves room for context when the control side reports it (2048 on the wire)
MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After beyond this is cut to it: one call stays bounded
CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict", 410: "expired", 422: "invalid"}


def load_config(settings: ClusterSettings) -> KubeConfig:
    """The Kubernetes configuration `settings` point to (see the module docstring for the order).

    Raises:
        ClusterConfigError: nothing usable was found, or the file named cannot be read.
    """
    try:
        if settings.kubeconfig is not None:
            return KubeConfig.from_file(settings.kubeconfig)
        try:
            return KubeConfig.from_service_account(SERVICE_ACCOUNT_DIR)
        except (ConfigError, KeyError):
            pass
        path = os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
        return KubeConfig.from_file(path)
    except Exception as e:  # lightkube raises whatever the YAML makes it trip on
        hint = (
            f"; K3s writes {K3S_KUBECONFIG} (root only): pass it with --kubeconfig or EDGEFLEET_K3S_KUBECONFIG"
            if K3S_KUBECONFIG.exists()
            else ""
        )
        raise ClusterConfigError(f"no usable Kubernetes configuration: {e}{hint}") from e


def make_client(settings: ClusterSettings) -> AsyncClient:
    """An async lightkube client for `settings` (call inside the event loop that will use it)."""
    config = load_config(settings)
    try:
        return AsyncClient(
            config.get(settings.context),
            namespace=settings.namespace,
            timeout=httpx2.Timeout(settings.request_timeout_s),
            field_manager=settings.field_manager,
            trust_env=False,
        )
    except Exception as e:  # lightkube raises whatever the YAML makes it trip on
        raise ClusterConfigError(f"cannot use the Kubernetes configuration: {e}") from e


def translate(error: BaseException, what: str) -> ApiCallError:
    """Our error for a failed call `what` (e.g. "patch deployments.apps edgefleet/inference"). Never raises."""
    try:
        translated = _translate(error, what)
        if len(translated.message) > MAX_MESSAGE:  # a hostile or verbose server must not bloat our reports
            translated.message = translated.message[: MAX_MESSAGE - 3] + "..."
        return translated
    except Exception as e:  # a malformed Status must not take a loop down
        return ApiCallError(
            f"{what}: {type(error).__name__} ({type(e).__name__} reading it)", code="bad_response", permanent=False
        )


def _translate(error: BaseException, what: str) -> ApiCallError:
    if isinstance(error, ApiCallError):
        return error
    if isinstance(error, ApiError):
        status = int(error.status.code or (error.response.status_code if error.response is not None else 0))
        reason = error.status.message or error.status.reason or "no message"
        translated = _from_status(status, f"{what}: {reason}")
        if error.response is not None:
            translated.retry_after = retry_after(error.response.headers.get("retry-after"))
        return translated
    if isinstance(error, httpx2.HTTPStatusError):
        status = error.response.status_code
        translated = _from_status(status, f"{what}: HTTP {status} {_body(error.response)}")
        translated.retry_after = retry_after(error.response.headers.get("retry-after"))
        return translated
    if isinstance(error, httpx2.TransportError):
        kind = type(error).__name__
        return ApiCallError(f"{what}: API server unreachable ({kind}: {error})", code="unreachable", permanent=False)
    return ApiCallError(f"{what}: {type(error).__name__}: {error}", code="bad_response", permanent=False)


def _body(response: httpx2.Response) -> str:
    """The start of an error body, or a note when it was streamed and not read (a watch)."""
    try:
        return repr(response.text[:200])
    except httpx2.ResponseNotRead:
        return f"({response.headers.get('content-type', 'no content type')} body not read)"


def _from_status(status: int, message: str) -> ApiCallError:
    temporary = status in TEMPORARY_STATUS or status >= 500
    code = CODES.get(status, "server_error" if status >= 500 else f"http_{status}")
    if status == 403:
        message += " (grant it in deploy/base/rbac.yaml, or check the agent's ServiceAccount and RoleBinding)"
    elif status == 409:
        message += " (another field manager owns these fields: set EDGEFLEET_K3S_FORCE_CONFLICTS=true to take them)"
    return ApiCallError(message, code=code, permanent=not temporary, status=status)


def retry_after(header: str | None) -> float | None:
    """The seconds a Retry-After header asks for, at most MAX_RETRY_AFTER_S; None when absent or not a number of
    seconds (Kubernetes sends seconds; an HTTP date or garbage falls back to our own backoff)."""
    try:
        seconds = float(header) if header is not None else math.nan
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def backoff(settings: ClusterSettings, attempt: int) -> float:
    """Delay before try `attempt + 1`: exponential from `retry_backoff_s`, capped, with +-25 % jitter."""
    base = min(settings.retry_backoff_max_s, settings.retry_backoff_s * (2**attempt))
    return float(base * random.uniform(0.75, 1.25))


def retry_delay(settings: ClusterSettings, error: ApiCallError, attempt: int) -> tuple[float, str]:
    """How long to wait after `error` before try `attempt + 1` of a call, or before a watch resumes, and a note
    for the log: the server's Retry-After when it sent one (API Priority and Fairness' 429, a 503; at most
    MAX_RETRY_AFTER_S), else our own `backoff`. Every retry of cluster mode waits through here."""
    if error.retry_after is not None:
        return error.retry_after, " (the server's Retry-After)"
    return backoff(settings, attempt), ""


async def with_retries(settings: ClusterSettings, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`, retrying temporary failures `retry_attempts` times in all.

    Raises:
        ApiCallError: a permanent failure at once, or the last temporary one when the tries are spent.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            error = translate(e, what)
            attempt += 1
            if error.permanent or attempt >= settings.retry_attempts:
                if not error.permanent:
                    error.message = f"{error.message} (after {attempt} tries)"
                raise error from e
            delay, asked = retry_delay(settings, error, attempt - 1)
            log.warning("%s; retrying in %.2fs%s (try %d of %d)", error, delay, asked, attempt + 1,
                        settings.retry_attempts)  # fmt: skip
            await asyncio.sleep(delay)
