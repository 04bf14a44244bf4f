"""What a results file records about where it was made: versions, native backend and the build of
the extension, hardware, git revision, device and seed, so a number can be traced and rerun."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import sysconfig
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict

import numpy
import torch

import obfgrad


def _git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if revision.returncode != 0:
        return "unknown"
    return revision.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _build_flavour_stamp(extension: Path) -> str:
    """The flavour (release, debug, march-native, sanitize) setup.py stamps into
    ``build/temp.<platform>-<python>/last-flavour`` of an in-place build (``python setup.py
    build_ext --inplace``); installed wheels carry no stamp."""
    tag = f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    stamp = extension.resolve().parent.parent / "build" / tag / "last-flavour"
    try:
        return stamp.read_text().strip()
    except OSError:
        return "unknown (no in-place build stamp)"


def extension_build() -> Dict[str, Any]:
    """The compiled extension that is loaded: its build info (compiler, SIMD level, sanitizers,
    OpenMP), the build flavour, and the SHA-256 of the binary (two builds with different flags
    differ there even where the build info does not)."""
    cpu = obfgrad.backend_info()["cpu"]
    if not cpu.get("native"):
        return {"native": False, "error": cpu.get("error")}
    path = Path(cpu["path"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "unknown"
    return {"native": True, "version": cpu["version"], "build": cpu["build"], "flavour": _build_flavour_stamp(path),
            "file": path.name, "sha256": digest}


def capture(device: torch.device, seed: int, profile: str) -> Dict[str, Any]:
    hardware: Dict[str, Any] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "machine": platform.machine()}
    if device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(device)
    return {
        "obfgrad": obfgrad.__version__,
        "git_revision": _git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "backend": obfgrad.backend_info(),
        "extension": extension_build(),
        "hardware": hardware,
        "device": str(device),
        "seed": seed,
        "profile": profile,
        "torch_threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
