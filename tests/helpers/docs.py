"""The shell blocks of a documentation page (``docs/**/*.md``, README.md) that tests execute: a
fenced ``bash`` block preceded by the line ``<!-- runnable -->`` (or ``<!-- runnable: slow -->``)
runs, the page's blocks in order in one bash session (``set -euo pipefail``), in a fresh folder,
with ``AUDIOML_DATA_DIR`` / ``AUDIOML_WEIGHTS_DIR`` at the shared samples and ``AUDIOML_OUTPUT_DIR``
in that folder, this interpreter's entry points first on PATH, the hub offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.runners import REPO, SHARED

_BLOCK = re.compile(r"<!-- runnable(?P<slow>: slow)? -->\s*\n```(?:bash|sh|console)\n(?P<code>.*?)\n```", re.S)
PAGES = REPO / "docs"


@dataclass(frozen=True)
class Block:
    code: str
    slow: bool
    line: int


def runnable_blocks(page: Path) -> list[Block]:
    """The page's runnable blocks, in order."""
    text = Path(page).read_text()
    return [Block(m.group("code"), bool(m.group("slow")), text.count("\n", 0, m.start()) + 1)
            for m in _BLOCK.finditer(text)]


def run_script(blocks: list[Block], folder: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run ``blocks`` in one bash session in ``folder`` (created); the finished process."""
    folder.mkdir(parents=True, exist_ok=True)
    script = ["set -euo pipefail"]
    for block in blocks:
        script += [f"echo '>>> block at line {block.line}'", block.code]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    env.update(AUDIOML_DATA_DIR=str(SHARED / "data"), AUDIOML_WEIGHTS_DIR=str(SHARED / "weights" / "efficientat-mn04"),
               AUDIOML_OUTPUT_DIR=str(folder / "outputs"), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return subprocess.run(["bash", "-c", "\n".join(script)], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_blocks(blocks: list[Block], folder: Path, timeout: float = 1800) -> str:
    """``run_script``; its output, or ``AssertionError`` naming the block that failed."""
    process = run_script(blocks, folder, timeout)
    output = process.stdout + process.stderr
    if process.returncode != 0:
        started = re.findall(r">>> block at line (\d+)", process.stdout)
        raise AssertionError(f"the block at line {started[-1] if started else '?'} failed "
                             f"({process.returncode}):\n{output[-6000:]}")
    return output


def run_page(page: Path, folder: Path, include_slow: bool, timeout: float = 1800) -> subprocess.CompletedProcess:
    """The page's runnable blocks (the slow ones too with ``include_slow``), run by ``run_script``."""
    return run_script([b for b in runnable_blocks(page) if include_slow or not b.slow], folder, timeout)
