"""What machine a number was made on: the CPU model, recorded beside results that depend on it.

The same seed and locked environment give other numbers on another CPU: numpy's AVX-512F kernels move a few synthetic
pixels by one grey level, enough to train another model (docs/reproducibility.md); on one machine it is deterministic.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_model"]


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``; else what :mod:`platform` knows)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
                if name:
                    return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
