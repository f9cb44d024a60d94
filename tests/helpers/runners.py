"""Where the project and ../shared are, and a subprocess runner for the entry points (real Hydra,
real Trainer, real MLflow store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("AUDIOML_SHARED", REPO.parent / "shared"))


def run_entry_point(module: str, *overrides: str, cwd: Path | None = None, env: dict | None = None,
                    timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <overrides>`` and return the finished process."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    full_env.update({"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", **(env or {})})
    process = subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or REPO, env=full_env,
                             capture_output=True, text=True, timeout=timeout)
    if check and process.returncode != 0:
        raise AssertionError(f"{module} {' '.join(overrides)} failed ({process.returncode}):\n"
                             f"{process.stdout[-4000:]}\n{process.stderr[-6000:]}")
    return process


def find_run_dirs(output_dir: Path) -> list[Path]:
    """Run directories (those holding a config.yaml) under ``output_dir/runs``."""
    return sorted(p.parent for p in (output_dir / "runs").glob("*/config.yaml"))


def read_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())
