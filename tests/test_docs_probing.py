"""docs/guide/probing.md: its runnable shell blocks run as written, in order, in one bash session
in a fresh folder (``tests/helpers/docs.py``; the real RAVDESS sample and EfficientAT weights,
``-m slow``), and its fold table is the one the code splits by."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers.docs import run_page, runnable_blocks
from helpers.runners import REPO

PAGE = REPO / "docs" / "guide" / "probing.md"


def test_the_pages_fold_table_is_the_split_functions():
    from audioml.data.splits import EMOBOX_RAVDESS_FOLDS

    rows = re.findall(r"^\| (\d) \| ([\d, ]+) \|$", PAGE.read_text(), flags=re.MULTILINE)
    assert {int(fold): tuple(int(a) for a in actors.split(",")) for fold, actors in rows} == EMOBOX_RAVDESS_FOLDS
    assert [block.slow for block in runnable_blocks(PAGE)] == [True, True, True, True]


@pytest.mark.slow  # EfficientAT on the real sample, then a 66-run table: about 7 minutes on two cores
def test_all_blocks_run(tmp_path: Path, shared_data: Path, shared_weights: Path, monkeypatch) -> None:
    if shutil.which("audioml-probe", path=str(Path(sys.executable).parent)) is None:
        # an environment installed before the command existed: the same entry point, after the interpreter's
        shims = tmp_path / "bin"
        shims.mkdir()
        (shims / "audioml-probe").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m audioml.probe "$@"\n')
        (shims / "audioml-probe").chmod(0o755)
        monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
    process = run_page(PAGE, tmp_path / "work", include_slow=True, timeout=3600)
    assert process.returncode == 0, (f"{PAGE.name} failed ({process.returncode}); the blocks' output:\n"
                                     f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}")
    table = next((tmp_path / "work" / "outputs" / "probes").glob("*/probe_table.csv")).read_text()
    assert "efficientat_mn04" in table and "hf_encoder:tiny-w2v" in table
