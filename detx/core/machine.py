"""What machine a number was made on: the CPU model, recorded beside results that depend on it.

Training on the CPU is deterministic on one machine, but another CPU (another vendor or instruction set) takes other
kernel paths in MKL and oneDNN, so the same seed and locked environment train a slightly different model there
(docs/reproducibility.md).
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
