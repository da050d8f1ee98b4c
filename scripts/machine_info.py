"""The machine line every benchmark prints, so results name the hardware they came from."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """CPU model name and core count (``platform.processor()`` is often empty on Linux)."""
    name = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        name = models[0] if models else name
    return f"{name or platform.machine()}, {os.cpu_count()} cores"
