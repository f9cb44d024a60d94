"""docs/guide/probing.md: its runnable shell blocks run in order in one bash session in a fresh
folder (the real RAVDESS sample and EfficientAT weights; ``-m slow``), and its fold table is the
one the code splits by."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.runners import REPO, SHARED

PAGE = REPO / "docs" / "guide" / "probing.md"
#: ``<!-- runnable -->`` or ``<!-- runnable: slow -->``, then a bash block.
RUNNABLE = re.compile(r"^<!-- runnable(: slow)? -->\n```bash\n(.*?)^```", re.S | re.M)


def runnable_blocks(page: Path) -> list[tuple[bool, str]]:
    """``(slow, script)`` of each runnable block of ``page``, in order."""
    return [(bool(slow), script) for slow, script in RUNNABLE.findall(page.read_text())]


def test_the_pages_fold_table_is_the_split_functions():
    from audioml.data.splits import EMOBOX_RAVDESS_FOLDS

    rows = re.findall(r"^\| (\d) \| ([\d, ]+) \|$", PAGE.read_text(), flags=re.M)
    assert {int(fold): tuple(int(a) for a in actors.split(",")) for fold, actors in rows} == EMOBOX_RAVDESS_FOLDS
    assert len(runnable_blocks(PAGE)) == 4


@pytest.mark.slow  # EfficientAT on the real sample: minutes on two cores
def test_the_pages_runnable_blocks_run(tmp_path, shared_data, shared_weights):
    weights = shared_weights / "efficientat-mn04"
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")},
           "AUDIOML_DATA_DIR": str(shared_data), "AUDIOML_WEIGHTS_DIR": str(weights),
           "AUDIOML_OUTPUT_DIR": str(tmp_path / "outputs"), "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    scripts = Path(sys.executable).parent
    shims = tmp_path / "bin"  # console scripts of an environment installed before audioml-probe existed
    shims.mkdir()
    for name, module in (("audioml-train", "audioml.train"), ("audioml-eval", "audioml.evaluate"),
                         ("audioml-predict", "audioml.predict"), ("audioml-probe", "audioml.probe")):
        if shutil.which(name, path=str(scripts)) is None or name == "audioml-probe":
            (shims / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
            (shims / name).chmod(0o755)
    env["PATH"] = os.pathsep.join([str(shims), str(scripts), env.get("PATH", "")])
    script = "set -euo pipefail\n" + "\n".join(block for _, block in runnable_blocks(PAGE))
    work = tmp_path / "work"
    work.mkdir()
    finished = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                              timeout=3600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    table = next((tmp_path / "outputs" / "probes").glob("*/probe_table.csv"))
    assert "efficientat_mn04" in table.read_text() and "hf_encoder:tiny-w2v" in table.read_text()
