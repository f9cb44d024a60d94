"""The commands of ``docs/guide/classical.md`` run as written: the quick one in the default run,
every runnable block of the page, in order, with ``-m slow``."""

from __future__ import annotations

import pytest
from helpers.docs import PAGES, run_blocks, runnable_blocks

PAGE = PAGES / "guide" / "classical.md"


def test_the_quick_command_of_the_guide_runs(tmp_path):
    blocks = [b for b in runnable_blocks(PAGE) if not b.slow]
    assert len(blocks) == 1  # a grid on generated clips
    assert "best by validation" in run_blocks(blocks, tmp_path)


@pytest.mark.slow  # openSMILE on RAVDESS actors 1-2, a fusion grid, a short training run and prediction (3-6 min)
def test_every_runnable_command_of_the_guide_runs_in_order(shared_data, tmp_path):
    pytest.importorskip("opensmile")
    output = run_blocks(runnable_blocks(PAGE), tmp_path)
    assert output.count("best by validation") == 3 and "118 egemaps__" in output
    assert (tmp_path / "predictions.csv").is_file()
