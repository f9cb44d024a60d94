"""The shell blocks of a documentation page that tests execute: a fenced ``bash`` block preceded
by the line ``<!-- runnable -->`` (or ``<!-- runnable: slow -->``) runs, the page's blocks in
order in one bash session (``set -euo pipefail``), in a fresh folder, with
``AUDIOML_DATA_DIR`` at the shared sample data and ``AUDIOML_OUTPUT_DIR`` in a temp folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.runners import REPO, SHARED

_BLOCK = re.compile(r"<!-- runnable(?P<slow>: slow)? -->\s*\n```(?:bash|sh)\n(?P<code>.*?)\n```", re.S)


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


def run_blocks(blocks: list[Block], folder: Path, timeout: float = 1800) -> str:
    """Run ``blocks`` in one bash session in ``folder`` (created; outputs under ``folder/outputs``);
    returns the output, raises ``AssertionError`` naming the block that failed."""
    folder.mkdir(parents=True, exist_ok=True)
    script = ["set -euo pipefail"]
    for block in blocks:
        script += [f"echo '>>> block at line {block.line}'", block.code]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    env.update(AUDIOML_DATA_DIR=str(SHARED / "data"), AUDIOML_OUTPUT_DIR=str(folder / "outputs"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    process = subprocess.run(["bash", "-c", "\n".join(script)], cwd=folder, env=env, capture_output=True, text=True,
                             timeout=timeout)
    output = process.stdout + process.stderr
    if process.returncode != 0:
        started = re.findall(r">>> block at line (\d+)", process.stdout)
        raise AssertionError(f"the block at line {started[-1] if started else '?'} failed "
                             f"({process.returncode}):\n{output[-6000:]}")
    return output


PAGES = REPO / "docs"
