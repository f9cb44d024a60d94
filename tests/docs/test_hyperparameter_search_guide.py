"""The commands of ``docs/guide/hyperparameter-search.md`` run as written: the quick ones in the
default run, every runnable block of the page, in order, with ``-m slow``."""

from __future__ import annotations

import pytest
from helpers.docs import PAGES, run_blocks, runnable_blocks

PAGE = PAGES / "guide" / "hyperparameter-search.md"


def test_the_quick_commands_of_the_guide_run(tmp_path):
    blocks = [b for b in runnable_blocks(PAGE) if not b.slow]
    assert len(blocks) == 2  # the settings, a preset of one's own
    output = run_blocks(blocks, tmp_path)
    assert "_target_: hydra_plugins.audioml_optuna.OptunaSweeper" in output
    assert "model.backbone.dense: choice(64, 128, 256)" in output and "loss: ce" in output


@pytest.mark.slow  # five searches on generated tones (several minutes)
def test_every_runnable_command_of_the_guide_runs_in_order(tmp_path):
    output = run_blocks(runnable_blocks(PAGE), tmp_path)
    assert "8 of 10 trials asked before" in output  # the study continued
    assert "Pareto-optimal trial(s)" in output
    journals = sorted(p.name for p in (tmp_path / "shared").glob("*.journal"))
    assert journals == ["two-workers.journal"]
