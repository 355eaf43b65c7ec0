"""What the numbers were measured on: CPU model, cores, load, library versions; and the
process's resident memory (current and peak, with the peak reset between phases)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ..engines.ort import cpu_count
from .peak import precision_units

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_FLAGS_OF_INTEREST = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni",
)  # fmt: skip


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (part.strip() for part in line.split(":", 1))
                info.setdefault(key, value)
    except OSError:
        pass
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(threads: int) -> dict[str, object]:
    """A JSON-ready description of the machine and the software measured."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    info: dict[str, object] = {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": cpu.get("vendor_id"),
        "cpu_mhz": float(cpu["cpu MHz"]) if "cpu MHz" in cpu else None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": cpu_count(),
        "threads": threads,
        "simd": [f for f in _FLAGS_OF_INTEREST if f in flags],
        # the unit each precision runs on here, by flag (AMX-BF16, AVX512-VNNI...; None: none)
        "units": {p: u["unit"] for p, u in precision_units(flags).items()},
        "hypervisor": "hypervisor" in flags,
        "memory_total_mb": _meminfo_mb("MemTotal"),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_start": load_average(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }
    info.update(library_versions())
    return info


def library_versions() -> dict[str, str | None]:
    """numpy and onnxruntime versions (torch's is added by the caller when it is loaded)."""
    import numpy as np

    try:
        import onnxruntime as ort

        ort_version: str | None = ort.__version__
    except ImportError:
        ort_version = None
    return {"numpy": np.__version__, "onnxruntime": ort_version}


def _meminfo_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Resident memory of this process now (MB), from ``/proc/self/status``."""
    kb = _status_kb("VmRSS")
    return kb / 1024.0 if kb is not None else None


def peak_rss_mb() -> float | None:
    """Peak resident memory (MB) since start or the last :func:`reset_peak_rss`."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return kb / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ``clear_refs`` 5).

    Returns False where that is not possible; the peak then covers the whole process.
    """
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False
