"""The runnable shell blocks of a documentation page (``docs/**/*.md``): a block preceded by
``<!-- runnable -->`` (or ``<!-- runnable: slow -->``) is run, with the page's other selected
blocks in order, in one bash session in a fresh folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.runners import REPO, SHARED

_BLOCK = re.compile(r"^<!-- runnable(?P<slow>: slow)? -->\n```(?:bash|sh|console)\n(?P<code>.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    code: str
    slow: bool
    line: int


def runnable_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(m["code"], bool(m["slow"]), text.count("\n", 0, m.start()) + 1) for m in _BLOCK.finditer(text)]


def run_page(page: Path, folder: Path, include_slow: bool, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run the page's runnable blocks (the slow ones too with ``include_slow``) in ``folder``
    with ``AUDIOML_DATA_DIR`` / ``AUDIOML_WEIGHTS_DIR`` on ``../shared`` and
    ``AUDIOML_OUTPUT_DIR`` in ``folder``; the entry points of this interpreter first on PATH."""
    blocks = [b for b in runnable_blocks(page) if include_slow or not b.slow]
    script = "set -euo pipefail\n" + "".join(
        f"echo '>>> {page.name}:{b.line}'\n{b.code}\n" for b in blocks)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    env.update(AUDIOML_DATA_DIR=str(SHARED / "data"), AUDIOML_WEIGHTS_DIR=str(SHARED / "weights" / "efficientat-mn04"),
               AUDIOML_OUTPUT_DIR=str(folder / "outputs"), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1")
    return subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)
