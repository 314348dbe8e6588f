"""Where simulated agents get their identities: hub enrolment, bundle files, or a direct broker (tests).

Kept small on purpose: the hub's device API is the one moving part here (`enrol_via_hub`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from fleet.address import BrokerAddress
from fleet.bundle import DeviceBundle
from fleet.ids import DEFAULT_PREFIX, check_device_id
from fleet.signing import HubPublicKey
from hubclient.errors import HubApiError
from hubclient.http import HubClient
from sim.config import AgentIdentity
from sim.errors import EnrolmentError

BATCH_PATH = "/api/v1/devices/batch"
BATCH = 10_000  # the hub's limit per enrolment request


def device_ids(id_prefix: str, count: int, start: int = 0) -> list[str]:
    """`count` device ids like `sim-00000`, validated."""
    width = max(5, len(str(start + count)))
    return [check_device_id(f"{id_prefix}-{i:0{width}d}") for i in range(start, start + count)]


def direct_identities(
    broker_url: str,
    hub_public_key: str,
    count: int,
    *,
    id_prefix: str = "sim",
    topic_prefix: str = DEFAULT_PREFIX,
    labels: dict[str, str] | None = None,
    username: str | None = None,
    password: str | None = None,
) -> list[AgentIdentity]:
    """Identities for a broker that needs no per-device enrolment (tests, benchmarks, open brokers)."""
    HubPublicKey.from_text(hub_public_key)  # fail early on a bad key
    broker = BrokerAddress.parse(broker_url)
    return [
        AgentIdentity(
            device_id=device_id,
            broker=broker,
            username=username,
            password=password,
            topic_prefix=topic_prefix,
            hub_public_key=hub_public_key,
            labels=dict(labels or {}),
        )
        for device_id in device_ids(id_prefix, count)
    ]


def load_bundles(directory: Path, extra_labels: dict[str, str] | None = None) -> list[AgentIdentity]:
    """Identities from every `*.json` bootstrap bundle in `directory` (sorted by name).

    Raises:
        EnrolmentError: a file is not a valid bundle (the message names it), or there is none.
    """
    identities = []
    for path in sorted(directory.glob("*.json")):
        try:
            identities.append(AgentIdentity.from_bundle(DeviceBundle.load(path), extra_labels))
        except (OSError, ValueError) as e:
            raise EnrolmentError(f"{path}: not a device bundle: {str(e)[:300]}") from e
    if not identities:
        raise EnrolmentError(f"no *.json bundle files in {directory}")
    return identities


def enrol_via_hub(
    api_url: str,
    token: str,
    count: int,
    *,
    id_prefix: str = "sim",
    labels: dict[str, str] | None = None,
    bundle_dir: Path | None = None,
    timeout_s: float = 120.0,
) -> list[AgentIdentity]:
    """Enrol `count` devices through the hub's REST API and return their identities.

    Devices are added with `POST {api_url}/api/v1/devices/batch` (bearer `token`, admin role), up to
    `BATCH` per request, whose answer holds their bootstrap bundles. With `bundle_dir`, bundles are also saved
    there (mode 0600), so a later run can use `--bundles` without enrolling again.

    Raises:
        EnrolmentError: the hub refused the devices or could not be reached (with its answer).
    """
    identities = []
    ids = device_ids(id_prefix, count)
    with HubClient(api_url, token, timeout=timeout_s) as hub:
        for start in range(0, len(ids), BATCH):
            part = ids[start : start + BATCH]
            body = {"devices": [{"id": device_id, "labels": labels or {}} for device_id in part]}
            try:
                answer = hub.request("POST", BATCH_PATH, json=body)
            except HubApiError as e:
                if e.status == 0:
                    raise EnrolmentError(f"hub at {api_url} unreachable while enrolling {part[0]}..: {e}") from e
                if e.status == 403:
                    raise EnrolmentError(
                        f"hub refused to enrol {part[0]}..: {e.message[:200]} (--token must be an admin token: "
                        "`edgefleet hub token sim --role admin`)"
                    ) from e
                raise EnrolmentError(f"hub refused {part[0]}..: HTTP {e.status} {e.message[:300]}") from e
            except ValueError as e:  # a 2xx answer that is not JSON
                raise EnrolmentError(f"hub answered {part[0]}.. with something that is not bundles: {e}") from e
            try:
                bundles = [DeviceBundle.model_validate(b) for b in answer["bundles"]]
            except (ValidationError, KeyError, TypeError) as e:
                raise EnrolmentError(f"hub answered {part[0]}.. with something that is not bundles: {e}") from e
            for bundle in bundles:
                if bundle_dir is not None:
                    bundle_dir.mkdir(parents=True, exist_ok=True)
                    bundle.save(bundle_dir / f"{bundle.device_id}.json")
                identities.append(AgentIdentity.from_bundle(bundle, labels))
    return identities
