"""The machine line every benchmark prints, so results name the hardware they came from."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_name() -> str:
    """CPU model name and core count (``platform.processor()`` is often empty on Linux)."""
    name = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        name = models[0] if models else name
    return f"{name or platform.machine()}, {os.cpu_count()} cores"


def nvidia_smi() -> str | None:
    """One CSV line per GPU (name, driver, memory, max SM clock), or None without nvidia-smi."""
    try:
        q = "name,driver_version,memory.total,clocks.max.sm"
        res = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)  # fmt: skip
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
