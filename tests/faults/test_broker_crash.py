"""The hub's own broker SIGKILLed in the middle of a transfer to two agents: the hub's supervisor restarts
it, the hub and the agents reconnect, the agents resume (only missing chunks are wanted again) and both
activate the verified blob."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

from tests.faults.conftest import FaultWorld
from tests.support.mqtt import wait_for
from tests.support.outcomes import record


def test_broker_killed_mid_transfer_resumes_on_every_agent(fault_world: FaultWorld) -> None:
    w = fault_world
    lb = w.hub.hub.local_broker
    assert lb is not None
    devices = ["cam-1", "cam-2"]
    for d in devices:
        w.spawn(w.enrol(d), w.tmp / f"agent-{d}")
    wait_for(lambda: all((x := w.hub.hub.store.get_device(d)) and x.status == "online" for d in devices), timeout=30)
    count = len(w.hub.hub.registry.get("cls", "1.0.0").manifest["chunks"])
    # slow the chunk server down so the kill lands mid-transfer (the limit is lifted after the kill)
    w.hub.hub.chunks.settings = w.hub.hub.chunks.settings.model_copy(update={"rate_limit_bytes_per_s": 200_000})
    for d in devices:
        w.deploy(d, "1.0.0")

    def have(r: dict[str, Any]) -> int:
        return int((r.get("download") or {}).get("have_chunks") or 0)

    def progress(d: str) -> int:
        return have(w.reported(d))

    wait_for(lambda: all(progress(d) >= 4 for d in devices), timeout=60)
    before = {d: progress(d) for d in devices}
    pid, restarts = lb.pid, lb.restarts
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    w.hub.hub.chunks.settings = w.hub.hub.chunks.settings.model_copy(update={"rate_limit_bytes_per_s": 0})
    wait_for(lambda: lb.restarts == restarts + 1 and lb.pid != pid, timeout=30)
    assert all(progress(d) < count for d in devices), "the transfer was over before the kill"
    lowest = dict(before)
    drops: list[dict[str, Any]] = []  # the reports that went back, to say which (and what the agent logged)

    def all_active() -> bool:
        for d in devices:
            r = w.reported(d)  # one report read once: a second read may already be past the download
            if r.get("phase") == "downloading":
                if have(r) < lowest[d]:
                    drops.append({k: r.get(k) for k in ("device_id", "seq", "ts", "phase", "download", "error")})
                lowest[d] = min(lowest[d], have(r))
        return all((w.reported(d).get("active") or {}).get("version") == "1.0.0" for d in devices)

    wait_for(all_active, timeout=60)
    logs = "\n".join(a.output()[-3000:] for a in w.agents) if drops else ""
    assert lowest == before, f"progress went back (resumed from scratch?): {lowest} < {before}: {drops}\n{logs}"
    for a in w.agents:
        assert not re.search(r"starting [0-9a-f]{12} over", a.output()) and "Traceback" not in a.output()
    assert w.hub.hub.chunks.stats.publish_errors == 0, "the chunk server must survive the lost connection"
    record("fault", "broker killed mid-transfer (2 agents)", "recovered", len(devices))
