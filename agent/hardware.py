"""What this device has and how busy it is: capabilities for the birth message, samples for telemetry.

GPUs are read through NVML (nvidia-ml-py) when the driver is present; without it the GPU lists are empty.
Every probe is best effort: a failing probe leaves its field empty, it never stops the agent.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

from fleet.messages import TASKS, Capabilities, GpuInfo, GpuSample, MigInstance
from models.engine import available_providers, onnxruntime_version

log = logging.getLogger(__name__)
_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"tried": False, "module": None}


def agent_version() -> str:
    """The installed edgefleet version ('0+unknown' when running from a source tree without metadata)."""
    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "0+unknown"


def _nvml() -> Any | None:
    """The initialised pynvml module, or None when NVML is unavailable (no driver, no GPU)."""
    with _nvml_lock:
        if not _nvml_state["tried"]:
            _nvml_state["tried"] = True
            try:
                import pynvml  # noqa: PLC0415  (optional at runtime: only GPU hosts have the driver)

                pynvml.nvmlInit()
                _nvml_state["module"] = pynvml
            except Exception:  # ImportError or any NVMLError: no GPUs to report
                _nvml_state["module"] = None
        return _nvml_state["module"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpus() -> list[GpuInfo]:
    """GPUs seen through NVML with memory, MIG mode and MIG instances (empty without NVML)."""
    nv = _nvml()
    if nv is None:
        return []
    out: list[GpuInfo] = []
    try:
        count = nv.nvmlDeviceGetCount()
    except Exception:
        return []
    for index in range(min(count, 64)):
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            mig_mode = False
            with contextlib.suppress(Exception):
                current, _pending = nv.nvmlDeviceGetMigMode(handle)
                mig_mode = bool(current)
            out.append(
                GpuInfo(
                    index=index,
                    name=_text(nv.nvmlDeviceGetName(handle))[:128],
                    uuid=_text(nv.nvmlDeviceGetUUID(handle))[:128],
                    memory_bytes=int(mem.total),
                    mig_mode=mig_mode,
                    mig_instances=_mig_instances(nv, handle) if mig_mode else [],
                )
            )
        except Exception as e:  # one unreadable GPU must not hide the others
            log.debug("NVML probe failed: %s", e)
            continue
    return out


def _mig_instances(nv: Any, handle: Any) -> list[MigInstance]:
    out: list[MigInstance] = []
    try:
        slots = nv.nvmlDeviceGetMaxMigDeviceCount(handle)
    except Exception:
        return out
    for i in range(min(slots, 64)):
        try:
            mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except Exception as e:
            log.debug("NVML probe failed: %s", e)
            continue
        try:
            mem = nv.nvmlDeviceGetMemoryInfo(mig)
            name = _text(nv.nvmlDeviceGetName(mig))
            profile = name.split("MIG", 1)[-1].strip() or name
            out.append(
                MigInstance(
                    profile=profile[:64], uuid=_text(nv.nvmlDeviceGetUUID(mig))[:128], memory_bytes=int(mem.total)
                )
            )
        except Exception as e:
            log.debug("NVML probe failed: %s", e)
            continue
    return out


def gpu_samples() -> list[GpuSample]:
    """Utilisation and memory in use per GPU (empty without NVML)."""
    nv = _nvml()
    if nv is None:
        return []
    out: list[GpuSample] = []
    with contextlib.suppress(Exception):
        for index in range(min(nv.nvmlDeviceGetCount(), 64)):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                util = 0.0
                with contextlib.suppress(Exception):  # not supported in MIG mode
                    util = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
                out.append(
                    GpuSample(index=index, util_percent=min(max(util, 0.0), 100.0), memory_used_bytes=int(mem.used))
                )
            except Exception as e:
                log.debug("NVML probe failed: %s", e)
                continue
    return out


def capabilities(store_root: Path, *, mode: str = "single", nodes: list[Any] | None = None) -> Capabilities:
    """The birth message's capabilities of this device."""
    disk_free = None
    with contextlib.suppress(OSError):
        disk_free = psutil.disk_usage(str(store_root)).free
    return Capabilities(
        agent_version=agent_version()[:64],
        onnxruntime_version=onnxruntime_version()[:64],
        providers=list(available_providers())[:16],
        cpu_count=psutil.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        disk_free_bytes=disk_free,
        platform=f"{platform.system()}-{platform.machine()}"[:128],
        gpus=gpus(),
        mode="k3s" if mode == "k3s" else "single",
        nodes=nodes or [],
        tasks=list(TASKS),
    )


class HostSampler:
    """CPU percent since the previous sample and this process's RSS."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        psutil.cpu_percent(None)  # prime: the first call has no interval to measure

    def sample(self) -> tuple[float, int]:
        """(host CPU percent since the last call, agent RSS bytes)."""
        return float(psutil.cpu_percent(None)), int(self._proc.memory_info().rss)
