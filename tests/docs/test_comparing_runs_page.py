"""``docs/guide/comparing-runs.md`` runs as written: its ``<!-- runnable -->`` shell blocks, in
order, in one bash session in a fresh folder with the shared sample data and weights (slow), and
the commands it shows exist (fast)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import tomllib
from helpers.runners import REPO

PAGE = REPO / "docs" / "guide" / "comparing-runs.md"
_BLOCK = re.compile(r"<!-- runnable(?P<slow>: slow)? -->\n```bash\n(?P<code>.*?)```", re.S)


def runnable_blocks() -> list[tuple[str, bool]]:
    """``(code, slow)`` of each block marked runnable, in page order."""
    return [(found["code"], bool(found["slow"])) for found in _BLOCK.finditer(PAGE.read_text())]


def test_the_page_is_linked_and_its_commands_are_audioml_entry_points():
    assert "docs/guide/comparing-runs.md" in (REPO / "README.md").read_text()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    blocks = runnable_blocks()
    assert len(blocks) == 4
    for code, _ in blocks:
        for line in code.strip().splitlines():
            assert line.split()[0] in scripts, line


@pytest.mark.slow
def test_the_worked_example_runs_as_written(tmp_path, shared_data, shared_weights):
    work = tmp_path / "work"
    work.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "AUDIOML_DATA_DIR": str(shared_data), "AUDIOML_WEIGHTS_DIR": str(shared_weights / "efficientat-mn04"),
           "AUDIOML_OUTPUT_DIR": str(tmp_path / "outputs"),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = "set -euo pipefail\n" + "\n".join(code for code, _ in runnable_blocks())
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # the numbers the page quotes come from these commands
    assert "89 test items in 64 groups, paired on file + sha256" in done.stdout
    assert "macro_f1: B - A = " in done.stdout and "logged as MLflow run" in done.stdout
    assert "(from models:/cry-probe@champion)" in done.stdout and "test/ece " in done.stdout
