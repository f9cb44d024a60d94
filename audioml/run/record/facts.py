"""Facts that identify a run beside its config: the code version (git), a fingerprint of the
data it read, the device it ran on; logged as MLflow tags."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["git_state", "dataset_fingerprint", "device_description"]


def git_state(path: str | Path | None = None) -> dict[str, str]:
    """``{"git.commit": sha, "git.dirty": "true"|"false"}`` of the git work tree holding
    ``path`` (default: this package's source), or ``git.commit=unknown`` outside one."""
    path = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                                timeout=20, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                                capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown"}
    return {"git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


def dataset_fingerprint(paths: Iterable[str | Path], root: str | Path | None = None,
                        extra: Iterable[Iterable[Any]] | None = None) -> str:
    """sha256 (16 hex) over every file's path (relative to ``root`` when inside it, so the same
    data fingerprints alike on every machine) and size, plus per-file ``extra`` values (target,
    segment bounds). Missing files count with size -1."""
    root_path = Path(root).expanduser().resolve() if root is not None else None
    rows = []
    extras = list(extra) if extra is not None else None
    for index, path in enumerate(paths):
        resolved = Path(path).expanduser().resolve()
        try:
            name = resolved.relative_to(root_path).as_posix() if root_path is not None else resolved.as_posix()
        except ValueError:
            name = resolved.as_posix()
        size = resolved.stat().st_size if resolved.is_file() else -1
        values = "|".join(map(str, extras[index])) if extras is not None else ""
        rows.append(f"{name}|{size}|{values}")
    digest = hashlib.sha256("\n".join(sorted(rows)).encode())
    return digest.hexdigest()[:16]


def device_description(accelerator: str, num_devices: int, num_nodes: int = 1) -> str:
    """``"cuda:NVIDIA H100 80GB HBM3 x2"``, ``"cpu x1"``... for the ``device`` tag."""
    name = accelerator
    if accelerator == "cuda":
        import torch

        if torch.cuda.is_available():
            name = f"cuda:{torch.cuda.get_device_name(0)}"
    text = f"{name} x{num_devices}"
    return text + (f" x{num_nodes} nodes" if num_nodes > 1 else "")
