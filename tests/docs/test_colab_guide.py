"""``docs/guide/colab.md`` as written: the version check in the default run; with ``-m slow`` every
runnable block in order: a run stopped by SIGTERM and continued into the same MLflow run, a sweep
killed and seen with ``audioml-compare --status``, then finished by its rerun. Its install block is
run by ``tests/test_install.py`` (a venv of its own)."""

from __future__ import annotations

import re

import pytest
from helpers.docs import PAGES, run_blocks, runnable_blocks
from helpers.runners import REPO

PAGE = PAGES / "guide" / "colab.md"


def test_the_page_is_linked_and_its_install_keeps_the_machines_torch():
    assert "docs/guide/colab.md" in (REPO / "README.md").read_text()
    text = PAGE.read_text()
    install, = re.findall(r"<!-- install-test -->\s*\n```bash\n(.*?)\n```", text, re.S)
    assert "-c keep-torch.txt" in install and "constraints.txt" not in install
    # the drive is mounted in a Colab cell, never in a block the tests run
    assert all("drive.mount" not in block.code for block in runnable_blocks(PAGE))


def test_the_version_check_runs(tmp_path):
    blocks = [b for b in runnable_blocks(PAGE) if not b.slow]
    assert len(blocks) == 1
    output = run_blocks(blocks, tmp_path)
    assert re.search(r"torch \S+ torchaudio \S+ GPU (True|False)", output), output


@pytest.mark.slow  # a run stopped and continued, a sweep killed and rerun (minutes on 2 cores)
def test_the_resume_and_status_recipes_run_as_written(tmp_path):
    output = run_blocks(runnable_blocks(PAGE), tmp_path)
    assert "exit status 143" in output
    # the rerun went on in the MLflow run the stopped run had left KILLED (the run directory's id)
    run_id = re.search(r"continuing MLflow run (\w+)\nthe run directory's MLflow run: \1\n", output).group(1)
    assert f"KILLED {run_id[:8]}" in output
    killed, finished = re.findall(r"^sweep \w+: 3 jobs, ([^;]*);", output, re.M)
    assert killed != "3 finished" and finished == "3 finished", output[-3000:]
