"""``optuna-dashboard <journal file>`` (the guide's command) serves a search's study as audioml
writes it: the journal file and its lock as the sweeper and the jobs use them."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from audioml.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return json.loads(answer.read())


def test_the_dashboard_serves_the_study_of_a_journal_file(tmp_path):
    command = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip("optuna-dashboard is not installed (pip install 'audioml[dashboard]')")
    journal = tmp_path / "runs" / ".optuna" / "synthetic-cnn-abc.journal"
    study = optuna.create_study(storage=open_storage(str(journal)), study_name="synthetic-cnn-abc", direction="maximize")
    trial = study.ask()
    trial.report(0.4, 1)
    study.tell(trial, 0.5)
    port = _free_port()
    server = subprocess.Popen([command, str(journal), "--port", str(port), "--host", "127.0.0.1", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, studies = time.monotonic() + 120, None
        while studies is None:
            assert server.poll() is None, server.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "optuna-dashboard did not answer"
            try:
                studies = _get(port, "/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.3)
        (shown,) = studies
        assert shown["study_name"] == "synthetic-cnn-abc" and shown["directions"] == ["maximize"]
        (shown_trial,) = _get(port, f"/api/studies/{shown['study_id']}")["trials"]
        assert shown_trial["values"] == [0.5] and shown_trial["intermediate_values"] == [{"step": 1, "value": 0.4}]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(optuna.load_study(study_name="synthetic-cnn-abc", storage=open_storage(str(journal))).trials) == 1
