"""What a user sees (issue 30): each line of a run said once and mostly audioml's, a mistake as
one line with exit status 2 (never a traceback), --help pages that explain each command's own
keys, and ``audioml --help`` listing every command."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from helpers.runners import run_entry_point

from audioml.commands import COMMANDS
from audioml.commands import main as audioml_main

TINY = ["data=synthetic", "model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16",
        "data.num_workers=0", "trainer.max_epochs=1", "data.clips_per_class=6", "data.num_groups=6"]


def _in_process(monkeypatch, capsys, module, *arguments) -> tuple[int, str, str]:
    """``<module>.main()`` with these command-line arguments, in this process: (status, out, err)."""
    import importlib

    monkeypatch.setattr(sys, "argv", [module, *arguments])
    try:
        importlib.import_module(module).main()
        status = 0
    except SystemExit as error:
        status = error.code if isinstance(error.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def test_a_run_says_each_line_once_and_mostly_audiomls(tmp_path):
    process = run_entry_point("audioml.train", *TINY, "trainer.enable_progress_bar=false",
                              f"paths.output_dir={tmp_path}")
    lines = [line for line in (process.stdout + process.stderr).splitlines() if line.strip()]
    logged = [line.split("] - ", 1)[-1] for line in lines if line.startswith("[")]
    assert not [text for text, count in Counter(logged).items() if count > 1], lines
    for noise in ("litlogger", "weights_only", "Warning", "GPU available", "eval mode", "Creating initial MLflow"):
        assert not [line for line in lines if noise in line], (noise, lines)
    ours = [line for line in lines if "][audioml." in line or line.startswith("  ")]
    assert len(ours) >= 0.6 * len(lines), lines
    everything = process.stdout + process.stderr
    assert "finished in" in everything and "mlflow ui --backend-store-uri" in everything


@pytest.mark.parametrize("module, arguments, message", [
    ("audioml.train", ["data=nosuch"], "Could not find 'data/nosuch'"),
    ("audioml.train", [*TINY, "logger.tracking_uri=http://127.0.0.1:9"], "cannot be reached"),
    ("audioml.train", [*TINY, "trainer=ddp"], "this machine has no CUDA GPU"),
    ("audioml.predict", ["source=models:/no-such-model/1", "inputs=[{clip}]"], "could not be fetched"),
    ("audioml.predict", ["source={ckpt}", "inputs=[{tmp}/missing.wav]"], "no audio file at"),
    ("audioml.evaluate", [], "give the model as source="),
])
def test_a_mistake_is_one_line_and_exit_status_2(monkeypatch, capsys, tmp_path, tiny_run, module, arguments, message):
    output, run_dir, best = tiny_run
    clip = next((output / "cache").glob("synthetic-*/class_0/*.wav"))
    arguments = [a.format(clip=clip, ckpt=best, tmp=tmp_path) for a in arguments]
    status, out, err = _in_process(monkeypatch, capsys, module, *arguments, f"paths.output_dir={tmp_path / 'out'}",
                                   f"tracking_uri=sqlite:///{tmp_path / 'm.db'}" if module == "audioml.predict" else
                                   "seed=42")
    assert status == 2, (out, err)
    assert message in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) <= 24  # one screen (Hydra lists a group's options)


def test_a_dataset_without_one_usable_file_is_one_line(monkeypatch, capsys, tmp_path):
    root = tmp_path / "mine"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "broken.wav").write_bytes(b"RIFF not audio")
    status, out, err = _in_process(monkeypatch, capsys, "audioml.train", "data=folder", f"data.root={root}",
                                   "model=cnn", f"paths.output_dir={tmp_path / 'out'}")
    assert status == 2 and "no usable files" in err and "skipped_files.csv" in err and "Traceback" not in err


def test_help_pages_explain_each_commands_own_keys(monkeypatch, capsys):
    for module, keys in (("audioml.evaluate", ("source=", "split=", "dataset=")),
                         ("audioml.predict", ("source=", "inputs=", "aggregate=")),
                         ("audioml.export", ("source=", "format=", "parity_inputs=")),
                         ("audioml.train", ("experiment=quickstart", "seed=", "== Config groups"))):
        status, out, _ = _in_process(monkeypatch, capsys, module, "--help")
        assert status == 0 and all(key in out for key in keys), (module, out[:2000])
        assert "audioml --help" in out
    assert audioml_main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(f"audioml-{name}" in listing for name in COMMANDS if name != "eval") and "audioml-eval" in listing
    assert audioml_main(["nosuch"]) == 2 and "no command 'nosuch'" in capsys.readouterr().err


def test_a_mistakes_traceback_is_in_the_log_file_and_printed_with_hydra_full_error(tmp_path):
    command = [*TINY, "trainer.max_epochs=-5", f"paths.output_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'job'}"]
    quiet = run_entry_point("audioml.train", *command, check=False, env={"HYDRA_FULL_ERROR": "0"})
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert f"the full traceback is in {tmp_path / 'job' / 'train.log'}" in quiet.stderr
    assert "Traceback (most recent call last)" in (tmp_path / "job" / "train.log").read_text()
    full = run_entry_point("audioml.train", *command, check=False, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback (most recent call last)" in full.stderr and "max_epochs" in full.stderr
