"""docs/guide/encoders.md: its runnable shell blocks run as written, in order, in one bash session
in a fresh folder (``tests/helpers/docs.py``): the quick ones in the default run, all of them
(the RAVDESS sample, fine-tuning, export) with ``-m slow``."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.docs import run_page, runnable_blocks
from helpers.runners import REPO

PAGE = REPO / "docs" / "guide" / "encoders.md"


def _run(tmp_path: Path, include_slow: bool) -> None:
    process = run_page(PAGE, tmp_path, include_slow)
    assert process.returncode == 0, (f"{PAGE.name} failed ({process.returncode}); the blocks' output:\n"
                                     f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}")


def test_the_quick_blocks_run(tmp_path: Path) -> None:
    assert [block.slow for block in runnable_blocks(PAGE)] == [False, False, True, True, True]
    _run(tmp_path, include_slow=False)
    assert list((tmp_path / "outputs" / "runs").glob("*/layer_weights.png"))


@pytest.mark.slow  # the RAVDESS sample, a fine-tuning run and two exports: minutes on two cores
def test_all_blocks_run(tmp_path: Path, shared_data: Path) -> None:
    _run(tmp_path, include_slow=True)
    assert (tmp_path / "encoder.onnx").is_file() and (tmp_path / "encoder.pt").is_file()
