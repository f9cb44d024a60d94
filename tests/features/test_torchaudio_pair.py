"""A torch/torchaudio pair that does not load together is one line naming both versions and the
pip command that installs a matching torchaudio (exit status 2), where audioml needs torchaudio:
the Kaldi front ends (EfficientAT, AST) and torch-audiomentations. Simulated with a stub
``torchaudio`` that fails as the real one does (``helpers.torchaudio_stub``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
import tomllib
from helpers.runners import REPO
from helpers.torchaudio_stub import write_broken_torchaudio

from audioml.augment.waveform import Gain
from audioml.features.kaldi_fbank import KaldiFbank
from audioml.features.kaldi_mel import KaldiMelSpectrogram
from audioml.features.torchaudio_pair import (
    MIN_TORCH,
    TORCHAUDIO,
    TorchaudioMismatch,
    matching_torchaudio_command,
    mismatch_message,
    require_torchaudio,
)

SMALL = ["data=synthetic", "model=ast_tiny", "data.clips_per_class=6", "data.num_groups=6", "data.num_workers=0"]
REASON = "libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace"


def expected_line(torch_version: str) -> str:
    return (f"torch {torch_version} and torchaudio 2.11.1 do not work together ({REASON}); install a matching "
            f"torchaudio: pip install --force-reinstall --no-deps torchaudio=={TORCHAUDIO}")


@pytest.mark.parametrize("torch_version, command", [
    ("2.14.1", "pip install --force-reinstall --no-deps torchaudio==2.11.1"),
    ("2.13.0", "pip install --force-reinstall --no-deps torchaudio==2.11.1"),
    ("2.13.0+cpu", ("pip install --force-reinstall --no-deps torchaudio==2.11.1 "
                    "--index-url https://download.pytorch.org/whl/cpu")),
    ("2.14.1+cu126", ("pip install --force-reinstall --no-deps torchaudio==2.11.1 "
                      "--index-url https://download.pytorch.org/whl/cu126")),
    ("2.15.0", "pip install --force-reinstall --no-deps torchaudio==2.11.1"),
    ("2.12.1", 'pip install "torch>=2.13" "torchaudio==2.11.1"'),
    ("2.11.0+cu128", 'pip install "torch>=2.13" "torchaudio==2.11.1" --index-url https://download.pytorch.org/whl/cu128'),
])
def test_the_command_installs_a_torchaudio_for_that_torch_build(torch_version, command):
    assert matching_torchaudio_command(torch_version) == command


def test_a_missing_torchaudio_is_said_with_the_command():
    message = mismatch_message("2.14.1+cu126", None, ModuleNotFoundError("No module named 'torchaudio'"))
    assert message == ("torchaudio is not installed (No module named 'torchaudio') with torch 2.14.1+cu126; install "
                       "a matching torchaudio: pip install --force-reinstall --no-deps torchaudio==2.11.1 "
                       "--index-url https://download.pytorch.org/whl/cu126")


def test_below_the_supported_torch_the_line_says_so():
    """As torchaudio 2.11.1 fails with torch 2.12.1 (its compiled library's error, as seen there)."""
    loader = OSError("/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so: undefined symbol: "
                     "torch_exception_get_what_without_backtrace")
    try:
        raise OSError("Could not load this library: /venv/.../libtorchaudio.so") from loader
    except OSError as error:
        message = mismatch_message("2.12.1", "2.11.1", error)
    assert message == (f"torch 2.12.1 and torchaudio 2.11.1 do not work together ({REASON}); audioml needs "
                       'torch >= 2.13: pip install "torch>=2.13" "torchaudio==2.11.1"')


def test_the_command_and_the_bound_are_the_locks_and_pyprojects():
    lock = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert lock["torchaudio"] == TORCHAUDIO
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]},<3" in dependencies
    assert "torchaudio>=2.11,<3" in dependencies
    assert tuple(int(part) for part in lock["torch"].split(".")[:2]) >= MIN_TORCH


def test_the_installed_pair_loads():
    require_torchaudio.cache_clear()
    assert require_torchaudio() is None
    assert KaldiMelSpectrogram().mel_basis.shape == (128, 513)


@pytest.fixture()
def broken_torchaudio(tmp_path, monkeypatch):
    """This process's torchaudio replaced by the stub until the test ends."""
    monkeypatch.syspath_prepend(str(write_broken_torchaudio(tmp_path / "stub")))
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchaudio", "torch_audiomentations")]:
        monkeypatch.delitem(sys.modules, name)
    require_torchaudio.cache_clear()
    yield
    require_torchaudio.cache_clear()


@pytest.mark.parametrize("build", [KaldiMelSpectrogram, KaldiFbank, Gain])
def test_front_ends_and_waveform_augmentation_say_a_broken_pair_in_one_line(broken_torchaudio, build):
    with pytest.raises(TorchaudioMismatch) as raised:
        build()
    assert str(raised.value) == expected_line(metadata.version("torch"))


def test_a_command_ends_with_the_line_and_exit_status_2(tmp_path):
    stub = write_broken_torchaudio(tmp_path / "stub")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    env.update(PYTHONPATH=os.pathsep.join([str(stub), str(REPO)]), OMP_NUM_THREADS="1")
    process = subprocess.run([sys.executable, "-m", "audioml.train", *SMALL, f"paths.output_dir={tmp_path / 'out'}"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 2, process.stderr[-3000:]
    assert "Traceback" not in process.stdout + process.stderr
    said = [line for line in process.stderr.splitlines() if line.startswith("audioml-train: ")]
    assert said == [f"audioml-train: {expected_line(metadata.version('torch'))}"], process.stderr[-3000:]
    # said before training and before an MLflow run was opened
    assert not list((tmp_path / "out").rglob("*.ckpt"))
    assert not (tmp_path / "out" / "mlflow").exists()
    assert re.search(r"the full traceback is in .*train\.log", process.stderr)


def test_the_same_command_trains_with_the_installed_pair(tmp_path, monkeypatch, capsys):
    from audioml.train import main

    require_torchaudio.cache_clear()
    monkeypatch.setattr(sys, "argv", ["audioml-train", *SMALL, "+trainer.fast_dev_run=true",
                                      f"paths.output_dir={tmp_path / 'out'}"])
    try:
        main()
        status = 0
    except SystemExit as error:
        status = error.code
    assert status in (0, None), capsys.readouterr().err[-3000:]
    assert list((tmp_path / "out" / "runs").glob("synthetic-ast_tiny-*/config.yaml"))
