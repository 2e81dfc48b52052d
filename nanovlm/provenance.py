"""Where a number came from, defined once: the code's commit, the device, the library versions.

    tags = {"git_sha": git_sha(), "device": device_description(device), **library_versions()}

Training runs, profile runs and evaluation results all record these, so rows from each can be
grouped and compared (the same device wording everywhere).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def git_sha(short: bool = True) -> str:
    """The checkout's commit ("+dirty" when tracked files changed), or "unknown" outside a git clone."""
    try:
        sha = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], capture_output=True, timeout=10, cwd=HERE).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty == 1 else "")) if sha else "unknown"


def device_description(device: Any) -> str:
    """"NVIDIA H100 80GB HBM3", or "cpu (x86_64, 2 cores)"."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def library_versions() -> dict[str, str]:
    """torch, transformers, mlflow, python (and CUDA when torch has it), read without importing mlflow."""
    import torch

    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for package in ("transformers", "mlflow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return versions
