"""Installing audioml on a machine that has its own torch (Colab, a notebook GPU image) as
docs/guide/colab.md says: pip keeps the machine's working torch/torchaudio pair, and audioml runs
on it (slow: a fresh virtual environment of several gigabytes, minutes of pip). The pair check
itself is tested in ``tests/features/test_torchaudio_pair.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.runners import REPO

# A working pair other than constraints.txt's (torch 2.14.1, torchaudio 2.11.1), at pyproject's
# lower bound of torch. PyPI's torch build: a CPU build (2.13.0+cpu, which pip may find in a
# local wheel folder) pairs only with the CPU torchaudio of download.pytorch.org.
TORCH, TORCHAUDIO = "2.13.0", "2.11.0"
_PAIR = [f"torch=={TORCH},!={TORCH}+cpu", f"torchaudio=={TORCHAUDIO}"]
_LOADS = ("import torch; from torchaudio.compliance.kaldi import fbank; fbank(torch.randn(1, 16000)); "
          "from importlib.metadata import version; import json; "
          "print(json.dumps({'torch': version('torch'), 'torchaudio': version('torchaudio')}))")
GUIDE = REPO / "docs" / "guide" / "colab.md"
_INSTALL_BLOCK = re.compile(r"<!-- install-test -->\s*\n```bash\n(.*?)\n```", re.S)
# pip's words when it cannot get a distribution (offline, not in its cache or wheel folders)
_UNAVAILABLE = ("No matching distribution found", "Could not find a version that satisfies",
                "Failed to establish a new connection", "Name or service not known")


def _pip(python: Path, env: dict[str, str], *arguments: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "install", "--progress-bar", "off", *arguments], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _pair(python: Path, env: dict[str, str]) -> dict[str, str]:
    """The venv's torch and torchaudio versions, after loading torchaudio's compiled ops."""
    process = subprocess.run([str(python), "-c", _LOADS], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_pip_install_keeps_the_machines_own_torch_and_torchaudio(tmp_path):
    venv = tmp_path / "venv"
    try:
        _install_into_a_venv_with_its_own_pair(tmp_path, venv)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # several gigabytes


def _install_into_a_venv_with_its_own_pair(tmp_path: Path, venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    _pip(python, env, "--upgrade", "pip", timeout=600)
    # the machine's own pair, as a notebook image ships it
    process = _pip(python, env, *_PAIR, timeout=1800)
    if process.returncode != 0 and any(words in process.stdout + process.stderr for words in _UNAVAILABLE):
        pytest.skip(f"this machine cannot provide torch {TORCH} + torchaudio {TORCHAUDIO} (PyPI's builds) offline "
                    f"and has no network: {(process.stderr.strip().splitlines() or [''])[-1]}")
    assert process.returncode == 0, process.stderr[-3000:]
    assert _pair(python, env) == {"torch": TORCH, "torchaudio": TORCHAUDIO}

    # the guide's install block, as written, with the checkout as the project folder
    block, = _INSTALL_BLOCK.findall(GUIDE.read_text())
    install = subprocess.run(["bash", "-c", f"set -euo pipefail\n{block}"], cwd=tmp_path,
                             env={**env, "AUDIOML_SRC": str(REPO)}, capture_output=True, text=True, timeout=3000)
    if install.returncode != 0 and any(words in install.stdout + install.stderr for words in _UNAVAILABLE):
        pytest.skip(f"audioml's other dependencies are not available offline: {install.stderr.strip()[-300:]}")
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "Uninstalling torch-" not in install.stdout and "Uninstalling torchaudio-" not in install.stdout
    assert _pair(python, env) == {"torch": TORCH, "torchaudio": TORCHAUDIO}

    # and audioml trains on it, through torchaudio (AST's Kaldi filterbank), from the installed package
    env.update(AUDIOML_OUTPUT_DIR=str(tmp_path / "outputs"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run([str(venv / "bin" / "audioml-train"), "data=synthetic", "model=ast_tiny",
                          "data.clips_per_class=6", "data.num_groups=6", "+trainer.fast_dev_run=true"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert list((tmp_path / "outputs" / "runs").glob("synthetic-ast_tiny-*/config.yaml"))
