"""SimAgent without a network: decoded messages in, actions out, through the agent's own reconciler."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.reconcile import Reconciler
from agent.settings import DownloadSettings
from fleet.address import BrokerAddress
from fleet.chunks import chunk_of, encode_frame
from fleet.codec import decode, encode
from fleet.messages import (
    Command,
    CommandAck,
    CommandName,
    DesiredModel,
    DesiredState,
    DeviceStatus,
    ModelRef,
    Phase,
    ReportedState,
    TelemetryWindow,
    Want,
)
from fleet.plan import plan_bytes
from fleet.signing import HubSigningKey
from fleet.topics import Topics
from sim.actions import Action, GoOffline, PauseReading, Publish, Subscribe, Unsubscribe
from sim.agent import SimAgent
from sim.config import AgentIdentity, Faults, SimConfig
from sim.profile import Profiles
from sim.store import SharedBlobs
from tests.support.hubside import one

PREFIX = "fleet/v1"
BLOB = bytes(range(256)) * 1024 * 3 + b"tail"  # 768 KiB + 4 bytes: 4 chunks of 256 KiB, the last short


class Hub:
    def __init__(self) -> None:
        self.key = HubSigningKey.generate()
        self.topics = Topics(PREFIX)
        self.manifest = plan_bytes(BLOB, chunking="fixed")
        self.version = 0

    def model(self, version: str = "1.0.0") -> ModelRef:
        return ModelRef(name="resnet", version=version, task="classification", blob=self.manifest)

    def desired(self, device_id: str, model: ModelRef | None, *, key: HubSigningKey | None = None,
                ttl: float = 600, version: int | None = None) -> bytes:  # fmt: skip
        self.version = version if version is not None else self.version + 1
        now = time.time()
        state = DesiredState(device_id=device_id, version=self.version, issued_at=now, expires_at=now + ttl,
                             models=[DesiredModel(model=model)] if model is not None else [])  # fmt: skip
        return encode((key or self.key).sign(state))

    def frames(self) -> list[bytes]:
        m = self.manifest
        return [encode_frame(m.sha256, i, m.count, chunk_of(BLOB, m, i)) for i in range(m.count)]


def make_agent(hub: Hub, tmp_path: Path, device_id: str = "sim-00001", blobs: SharedBlobs | None = None,
               **config: object) -> SimAgent:  # fmt: skip
    identity = AgentIdentity(device_id=device_id, broker=BrokerAddress(host="127.0.0.1", port=1883),
                             hub_public_key=hub.key.public.to_text(), labels={"site": "a"})  # fmt: skip
    cfg = SimConfig.model_validate({"telemetry_s": 10.0, **config})
    settings = cfg.agent_settings(tmp_path / "devices")
    settings.data_dir.mkdir(exist_ok=True)
    return SimAgent(identity, cfg, blobs or SharedBlobs(tmp_path / "cache"), Profiles.parse(["1.0.0:p50=5ms,err=0.5"]),
                    random.Random(1), settings=settings, now=time.time())  # fmt: skip


def reports(actions: Sequence[Action]) -> list[ReportedState]:
    return [
        decode(a.payload, ReportedState) for a in actions if isinstance(a, Publish) and a.topic.endswith("/reported")
    ]


def download_all(agent: SimAgent, hub: Hub) -> list[Action]:
    actions: list[Action] = []
    for frame in hub.frames():
        actions += agent.on_message(hub.topics.chunk(hub.manifest.sha256), frame, time.time())
    return actions


def test_connect_publishes_birth_subscribes_and_has_an_offline_will(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    assert agent.will(0).retain
    will = decode(agent.will(time.time()).payload, DeviceStatus)
    assert will.state == "offline"
    actions = agent.on_connect(time.time())
    subs = {a.topic for a in actions if isinstance(a, Subscribe)}
    assert subs == {hub.topics.desired("sim-00001"), hub.topics.cmd("sim-00001")}
    birth = decode(
        next(a.payload for a in actions if isinstance(a, Publish) and a.topic.endswith("/status")), DeviceStatus
    )
    assert birth.state == "online" and birth.labels == {"site": "a"} and birth.capabilities is not None
    # the birth carries its connection's time, as the will does: the hub orders the will after the birth
    assert (birth.ts, birth.session) == (will.ts, will.session)
    assert reports(actions)[0].phase is Phase.IDLE


def test_desired_state_downloads_verifies_and_activates(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    agent.on_connect(time.time())
    actions = agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", hub.model()), time.time())
    assert Subscribe(hub.topics.chunk(hub.manifest.sha256)) in actions
    want = decode(next(a.payload for a in actions if isinstance(a, Publish) and a.topic.endswith("/want")), Want)
    assert want.missing == [(0, hub.manifest.count)]
    assert reports(actions)[-1].phase is Phase.DOWNLOADING
    actions = download_all(agent, hub)
    assert Unsubscribe(hub.topics.chunk(hub.manifest.sha256)) in actions
    assert (tmp_path / "cache" / "blobs" / hub.manifest.sha256).read_bytes() == BLOB
    phases = [r.phase for r in reports(actions)]
    assert phases[-2:] == [Phase.ACTIVATING, Phase.ACTIVE]  # the agent's order: report, load, swap, report
    final = reports(actions)[-1]
    active = one(final).active
    assert active is not None and active.version == "1.0.0" and final.desired_version == 1
    assert agent.stats.downloads_done == 1 and agent.stats.activations == 1 and agent.stats.chunks == hub.manifest.count


def test_redelivered_retained_state_is_ignored_and_a_downgrade_refused(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    payload = hub.desired("sim-00001", None, version=5)
    agent.on_message(hub.topics.desired("sim-00001"), payload, time.time())
    again = reports(agent.on_message(hub.topics.desired("sim-00001"), payload, time.time()))[-1]
    assert again.error is None and again.desired_version == 5 and agent.stats.refused_desired == 0
    old = hub.desired("sim-00001", None, version=3)
    refused = reports(agent.on_message(hub.topics.desired("sim-00001"), old, time.time()))[-1]
    assert refused.error is not None and refused.error.code == "stale_version" and refused.desired_version == 5


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        ("other_key", "unknown_signing_key"),
        ("expired", "expired"),
        ("other_device", "wrong_subject"),
        ("tampered", "bad_signature"),
        ("garbage", "malformed_envelope"),
    ],
)
def test_hostile_desired_states_are_refused_with_a_reason(tmp_path: Path, mutate: str, code: str) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    if mutate == "other_key":
        payload = hub.desired("sim-00001", hub.model(), key=HubSigningKey.generate())
    elif mutate == "expired":
        payload = hub.desired("sim-00001", hub.model(), ttl=-3600)
    elif mutate == "other_device":
        payload = hub.desired("sim-00002", hub.model())
    elif mutate == "tampered":
        payload = hub.desired("sim-00001", hub.model()).replace(b'"1.0.0"', b'"6.6.6"')
    else:
        payload = b"\xff{not json" * 10
    refused = reports(agent.on_message(hub.topics.desired("sim-00001"), payload, time.time()))[-1]
    assert refused.error is not None and refused.error.code == code
    assert refused.phase is Phase.IDLE and agent.reconciler.download is None and agent.stats.refused_desired == 1


def test_bad_chunks_are_refused_and_stay_wanted(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path, want_retry_s=0.05)
    agent.on_connect(time.time())
    agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", hub.model()), time.time())
    topic = hub.topics.chunk(hub.manifest.sha256)
    good = hub.frames()[1]
    corrupt = good[:-1] + bytes([good[-1] ^ 1])
    for payload in (good[:30], b"", b"EFC1" + b"\x00" * 100, good[:-5]):
        assert agent.on_message(topic, payload, time.time()) == []
    # a chunk that fails its digest is wanted again at once, like the product agent does
    again = agent.on_message(topic, corrupt, time.time())
    assert [decode(a.payload, Want).missing for a in again if isinstance(a, Publish)] == [[(1, 2)]]
    download = agent.reconciler.download
    assert agent.stats.refused_chunks == 5 and download is not None and download.receiver.have_count == 0
    agent.on_message(topic, good, time.time())
    agent.on_message(topic, good, time.time())
    assert agent.stats.duplicate_chunks == 1
    time.sleep(0.1)  # the agent's re-want timer runs on the monotonic clock
    retry = [a for a in agent.tick(time.time()) if isinstance(a, Publish) and a.topic.endswith("/want")]
    assert decode(retry[0].payload, Want).missing == [(0, 1), (2, hub.manifest.count)]


def test_messages_on_foreign_or_malformed_topics_are_counted_not_fatal(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    assert agent.on_message("other/topic", b"x", 0) == []
    assert agent.on_message(hub.topics.desired("sim-00002"), b"x", 0) == []
    assert agent.on_message(hub.topics.reported("sim-00001"), b"x", 0) == []
    assert agent.on_message(hub.topics.chunk("a" * 64), b"x" * 10_000, 0) == []
    assert agent.on_message(hub.topics.desired("sim-00001"), b"", 0) == []  # a cleared retained state
    assert agent.stats.malformed == 3 and agent.stats.ignored_chunks == 1


def test_activation_failure_keeps_the_previous_model(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", hub.model()), time.time())
    download_all(agent, hub)
    assert agent.models["resnet"].active is not None
    agent.activation.faults = Faults(activation_fail_p=1.0)
    other = hub.model("2.0.0")  # same blob, new version: no download needed, but a new activation
    actions = agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", other), time.time())
    assert not [a for a in actions if isinstance(a, Publish) and a.topic.endswith("/want")]
    failed = reports(actions)[-1]
    error = one(failed).error
    assert failed.phase is Phase.FAILED and error is not None and error.code == "activation_failed"
    active = one(failed).active
    assert active is not None and active.version == "1.0.0"


def test_telemetry_follows_the_active_versions_profile(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path, telemetry_s=1.0)
    agent.on_connect(time.time())
    agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", hub.model()), time.time())
    download_all(agent, hub)
    agent.tick(time.time())
    now = time.time()
    agent.tick(now + 2)  # the first window starts at a random offset
    actions = agent.tick(now + 12)
    window = decode(
        next(a.payload for a in actions if isinstance(a, Publish) and a.topic.endswith("/telemetry")), TelemetryWindow
    )
    (w,) = window.models
    assert w.version == "1.0.0" and w.requests > 0 and w.latency.count == w.requests
    assert 0 < w.errors < w.requests  # err=0.5


def test_offline_fault_and_slow_link(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(
        hub, tmp_path, faults={"offline_p": 1.0, "offline_s": 3.0, "slow_fraction": 1.0, "slow_chunk_s": 0.1}
    )
    agent.on_connect(time.time())
    assert GoOffline(3.0) in agent.tick(time.time() + 20)
    agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", hub.model()), time.time())
    assert PauseReading(0.1) in agent.on_message(hub.topics.chunk(hub.manifest.sha256), hub.frames()[0], time.time())


def test_signed_commands_are_acknowledged(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    now = time.time()
    cmd = Command(device_id="sim-00001", version=1, issued_at=now, expires_at=now + 60, correlation_id="c1",
                  name=CommandName.PING)  # fmt: skip
    actions = agent.on_message(hub.topics.cmd("sim-00001"), encode(hub.key.sign(cmd)), now)
    ack = decode(next(a.payload for a in actions if isinstance(a, Publish) and a.topic.endswith("/ack")), CommandAck)
    assert ack.ok and ack.correlation_id == "c1" and ack.result == {"pong": True}
    replay = agent.on_message(hub.topics.cmd("sim-00001"), encode(hub.key.sign(cmd)), now)
    assert replay == [] and agent.stats.malformed == 1  # like the agent: a replayed command is refused, not run


def test_many_agents_share_one_copy_but_each_verifies_every_chunk(tmp_path: Path) -> None:
    hub = Hub()
    blobs = SharedBlobs(tmp_path / "cache")
    agents = [make_agent(hub, tmp_path, f"sim-{i:05d}", blobs=blobs) for i in range(5)]
    for agent in agents:
        agent.on_message(hub.topics.desired(agent.device_id), hub.desired(agent.device_id, hub.model()), time.time())
    topic, first = hub.topics.chunk(hub.manifest.sha256), hub.frames()[0]
    agents[0].on_message(topic, first, time.time())  # verified and written by the first device
    agents[1].on_message(topic, first[:-1] + bytes([first[-1] ^ 1]), time.time())
    assert agents[1].stats.refused_chunks == 1  # a copy differing from the verified one is checked in full
    for agent in agents:
        download_all(agent, hub)
        assert agent.models["resnet"].phase is Phase.ACTIVE
    assert blobs.chunks_written == hub.manifest.count
    assert blobs.chunks_verified == 5 * hub.manifest.count
    assert blobs.chunks_hashed == 0  # the other copies equal the verified ones: compared, not hashed again
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == [hub.manifest.sha256]
    late = make_agent(hub, tmp_path, "sim-late", blobs=blobs)
    late.on_message(hub.topics.desired("sim-late"), hub.desired("sim-late", hub.model()), time.time())
    corrupt = bytearray(hub.frames()[0])
    corrupt[-1] ^= 1
    late.on_message(hub.topics.chunk(hub.manifest.sha256), bytes(corrupt), time.time())
    assert late.stats.refused_chunks == 1  # a complete cache does not spare a late agent its checks


def test_it_runs_the_agents_reconciler_with_the_agents_re_want_delay(tmp_path: Path) -> None:
    agent = make_agent(Hub(), tmp_path)
    assert type(agent.reconciler) is Reconciler  # not a copy: sim-found bugs are the agent's bugs
    assert SimConfig().want_retry_s == DownloadSettings().rewant_after_s
    assert agent.reconciler.settings.download.rewant_after_s == DownloadSettings().rewant_after_s


def test_a_new_version_takes_the_chunks_the_device_holds_and_wants_only_the_others(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    agent.on_connect(time.time())
    agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", hub.model()), time.time())
    download_all(agent, hub)
    newer = BLOB[: 256 * 1024] + b"\x01" * (256 * 1024) + BLOB[512 * 1024 :]  # chunk 1 differs
    manifest = plan_bytes(newer, chunking="fixed")
    ref = ModelRef(name="resnet", version="2.0.0", task="classification", blob=manifest)
    actions = agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", ref), time.time())
    wants = [decode(a.payload, Want) for a in actions if isinstance(a, Publish) and a.topic.endswith("/want")]
    assert [w.missing for w in wants] == [[(1, 2)]]  # the agent's download reused the other chunks
    frame = encode_frame(manifest.sha256, 1, manifest.count, chunk_of(newer, manifest, 1))
    final = reports(agent.on_message(hub.topics.chunk(manifest.sha256), frame, time.time()))[-1]
    active, previous = one(final).active, one(final).previous
    assert active is not None and active.version == "2.0.0"
    assert previous is not None and previous.version == "1.0.0"
    assert (tmp_path / "cache" / "blobs" / manifest.sha256).read_bytes() == newer


def test_a_desired_state_without_a_model_stops_serving_and_keeps_the_previous(tmp_path: Path) -> None:
    hub = Hub()
    agent = make_agent(hub, tmp_path)
    agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", hub.model()), time.time())
    download_all(agent, hub)
    idle = reports(agent.on_message(hub.topics.desired("sim-00001"), hub.desired("sim-00001", None), time.time()))[-1]
    assert idle.phase is Phase.IDLE and one(idle).active is None
    previous = one(idle).previous
    assert previous is not None and previous.version == "1.0.0"


def test_a_simulated_device_serves_three_models_each_on_its_own(tmp_path: Path) -> None:
    hub = Hub()
    blobs = {name: bytes([i]) * (300 * 1024) for i, name in enumerate(("det", "cls", "ocr"))}
    refs = {n: ModelRef(name=n, version="1.0.0", task="classification", blob=plan_bytes(b)) for n, b in blobs.items()}
    agent = make_agent(hub, tmp_path, telemetry_s=1.0)
    agent.on_connect(time.time())
    now = time.time()
    state = DesiredState(device_id="sim-00001", version=1, issued_at=now, expires_at=now + 600,
                         models=[DesiredModel(model=r) for r in refs.values()])  # fmt: skip
    actions = agent.on_message(hub.topics.desired("sim-00001"), encode(hub.key.sign(state)), now)
    wants = [a for a in actions if isinstance(a, Publish) and a.topic.endswith("/want")]
    assert len(wants) == 1, "one transfer at a time"
    for name, data in blobs.items():  # each blob in turn: the next transfer starts when one completes
        m = refs[name].blob
        for i in range(m.count):
            frame = encode_frame(m.sha256, i, m.count, chunk_of(data, m, i))
            actions = agent.on_message(hub.topics.chunk(m.sha256), frame, time.time())
    final = reports(actions)[-1]
    assert final.phase is Phase.ACTIVE
    assert {m.name: m.active.version for m in final.models if m.active} == {
        "det": "1.0.0",
        "cls": "1.0.0",
        "ocr": "1.0.0",
    }
    agent.tick(time.time() + 2)
    actions = agent.tick(time.time() + 12)
    window = decode(next(a.payload for a in actions if isinstance(a, Publish) and a.topic.endswith("/telemetry")),
                    TelemetryWindow)  # fmt: skip
    assert sorted(m.name for m in window.models) == ["cls", "det", "ocr"]
    # the classifier goes: the others keep serving, it is kept as previous
    state = state.model_copy(update={"version": 2, "models": [s for s in state.models if s.name != "cls"]})
    final = reports(agent.on_message(hub.topics.desired("sim-00001"), encode(hub.key.sign(state)), time.time()))[-1]
    assert {m.name: (m.phase.value, m.active is not None) for m in final.models} == {
        "det": ("active", True), "ocr": ("active", True), "cls": ("idle", False),
    }  # fmt: skip
    models = agent.summary()["models"]
    assert isinstance(models, dict) and models["cls"] == {"phase": "idle", "active": None, "error": None}
