"""Disk full during a download: the write fails, the agent says why, nothing corrupt is kept, and with
space again the download resumes from what was durably written and the model activates."""

from __future__ import annotations

import hashlib
import resource
from pathlib import Path

from fleet.chunks import ChunkReceiver, chunk_of
from fleet.messages import BlobManifest
from tests.faults.conftest import FaultWorld
from tests.support.mqtt import wait_for
from tests.support.outcomes import record

LIMIT = 600 * 1024  # bytes any one file may reach: less than the 1.4 MB blob


def test_disk_full_mid_download_is_reported_then_resumed(fault_world: FaultWorld) -> None:
    w = fault_world
    bundle = w.enrol("cam-disk")
    data = w.tmp / "agent-disk"
    agent = w.spawn(bundle, data, fsize_limit=LIMIT)
    w.deploy("cam-disk", "1.0.0")
    r = wait_for(lambda: (r := w.reported("cam-disk")).get("error") and r, timeout=60)
    assert r["error"]["code"] == "insufficient_disk" and "could not be written" in r["error"]["message"]
    assert r["error"]["permanent"] is False and r["phase"] == "downloading"
    assert agent.proc.poll() is None, "the agent must not die of a full disk"
    assert "control loop error" not in agent.output()
    agent.stop()
    # what is on disk is consistent: every chunk the resume bitmap claims is in the partial file, intact
    durable = _durable_chunks(data, w)
    assert 0 < durable < w.hub.hub.registry.get("cls", "1.0.0").manifest["chunks"].__len__()
    again = w.spawn(bundle, data)
    done = w.wait_active("cam-disk", "1.0.0")
    assert done.get("error") is None
    assert again.stop() == 0
    record("fault", "disk full during download", "recovered")


def _durable_chunks(data: Path, w: FaultWorld) -> int:
    """Open the agent's resume state as the agent would; check each chunk it claims against its digest."""
    manifest = BlobManifest.model_validate(w.hub.hub.registry.get("cls", "1.0.0").manifest)
    partial = next((data / "store" / "partial").glob(f"{manifest.sha256}*.part"))
    receiver = ChunkReceiver(manifest, partial.parent)
    try:
        have = [i for i in range(manifest.count) if receiver.has(i)]
    finally:
        receiver.close()
    blob = partial.read_bytes()
    for i in have:
        chunk = chunk_of(blob, manifest, i)
        assert hashlib.sha256(chunk).hexdigest() == manifest.chunks[i], f"chunk {i} claimed but corrupt"
    return len(have)


def test_telemetry_lost_to_a_full_disk_is_counted_in_the_next_window(fault_world: FaultWorld) -> None:
    """Issue 18 item 7: windows the spool could not take were invisible (no seq gap, spool_dropped 0)."""
    w = fault_world
    bundle = w.enrol("cam-tel")
    agent = w.spawn(bundle, w.tmp / "agent-tel", fsize_limit=128 * 1024, EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S="0.1")
    try:
        # the spool's write-ahead log reaches the file-size limit within a few dozen windows
        # (logged once: a disk that stays bad is logged once per 10 minutes, tests/agent/test_disk_logs.py)
        wait_for(lambda: "telemetry spool failed" in agent.output(), timeout=60)
        assert agent.proc.poll() is None, "the agent must not die of a full disk"
        # the soft limit goes (the hard one was left open for this): the disk has space again
        resource.prlimit(agent.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

        def reported_loss() -> int:  # space again: the next window that gets through says how many were lost
            with w.hub.client() as c:
                windows = c.get("/api/v1/telemetry/devices/cam-tel", params={"raw": True}).json()["windows"]
            return max((x["spool_dropped"] for x in windows), default=0)

        lost = wait_for(reported_loss, timeout=60)
        assert lost >= 1
    finally:
        assert agent.stop() == 0
    record("fault", "disk full while spooling telemetry (loss reported in spool_dropped)", "recovered", 1, 0)
