"""``audioml-reproduce``: the registry covers every study experiment and each of its jobs composes
(both protocols, --quick) with the weights it declares; a --quick report on generated RAVDESS
runs both protocols in their own processes and writes the md/csv columns with the honest numbers
of the runs' metrics.json; missing weights and too few actors are skipped with the reason
before anything starts; a job that fails is a row with its error's first line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from helpers.datasets import make_cleaned_corpus, make_ravdess
from helpers.experiments import EXPERIMENT_DIR, deprecated_aliases, study_experiments
from omegaconf import OmegaConf

from audioml.config import compose_config
from audioml.reproduce.cli import main, skip_reason
from audioml.reproduce.jobs import first_error_line, job_overrides, merge_overrides
from audioml.reproduce.registry import Locations, load_registry
from audioml.reproduce.report import CSV_COLUMNS

REGISTRY = load_registry()
STUDY_EXPERIMENTS = study_experiments()
CONFIG_NAME = {"train": "train", "classical": "classical"}
#: Overrides that keep a generated-data job to seconds (sizes only).
TINY = ["data.clip_seconds=0.6", "features.image_size=[32,32]", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2", "data.num_workers=0", "logger=none"]


def test_registry_covers_every_study_experiment():
    experiments = [entry.experiment for entry in REGISTRY.entries]
    assert len(experiments) == len(set(experiments))
    assert set(STUDY_EXPERIMENTS) <= set(experiments), set(STUDY_EXPERIMENTS) - set(experiments)
    assert not set(experiments) & set(deprecated_aliases()), "the registry names experiments by their current names"
    for entry in REGISTRY.entries:
        assert (EXPERIMENT_DIR / f"{entry.experiment}.yaml").is_file(), entry.experiment
        assert entry.runner.name in CONFIG_NAME and entry.reported.text and entry.study_protocol.text


def _declared_weights(config) -> set[str]:
    """The weights records a composed config loads: the model's, or a classical backbone's."""
    if "descriptors" in config:
        if config.descriptors.kind != "backbone":
            return set()
        model = compose_config([f"model={config.descriptors.model}", *config.descriptors.overrides]).model
    else:
        model = config.model
    return {model.backbone.weights} if model.get("pretrained") and "weights" in model.backbone else set()


@pytest.mark.parametrize("entry", REGISTRY.entries, ids=lambda entry: entry.experiment)
def test_every_entry_composes_under_both_protocols_and_quick(entry, tmp_path):
    locations = Locations(tmp_path / "data", tmp_path / "weights", {"muse": tmp_path / "muse"})
    for protocol in entry.protocols:
        if protocol.same_as or protocol.not_run:
            continue
        for quick in (False, True):
            features = tmp_path / "crnn-run" if entry.features_from else None
            overrides = job_overrides(entry, protocol, locations, quick, features_dir=features)
            config = compose_config([*overrides, f"paths.output_dir={tmp_path}"], CONFIG_NAME[entry.runner.name])
            resolved = OmegaConf.to_container(config.data, resolve=True)
            assert resolved.get("split", "grouped") == ("random" if protocol.key == "study_protocol" else "grouped") \
                or entry.study_protocol.same_as, (entry.experiment, protocol.key)
            if quick and entry.runner.name == "train":
                assert config.trainer.max_epochs <= 10 and config.evaluation.bootstrap_samples <= 200
            assert _declared_weights(config) == set(entry.weights), entry.experiment
            if entry.dataset.name == "muse":
                assert resolved["root"] == str(tmp_path / "muse")


def test_merge_overrides_keeps_the_last_value_of_a_key():
    assert merge_overrides(["a=1", "b=2"], ["+a=3"], ["c=4"]) == ["b=2", "+a=3", "c=4"]


def test_missing_weights_and_too_few_actors_are_skipped_with_the_reason(tmp_path):
    make_cleaned_corpus(tmp_path / "data" / "donateacry-corpus", seconds=0.5)
    make_ravdess(tmp_path / "data" / "ravdess", actors=(1, 2), emotions=(1,), statements=(1,))
    locations = Locations(tmp_path / "data", tmp_path / "no-weights")
    panns = REGISTRY.entry("donateacry/panns_mlp")
    reason = skip_reason(panns, panns.grouped_protocol, locations)
    assert "Cnn14_mAP=0.431.pth" in reason and str(tmp_path / "no-weights") in reason and "zenodo" in reason
    gender = REGISTRY.entry("ravdess/gender_cnn")
    assert skip_reason(gender, gender.study_protocol, locations) is None  # a random split of 2 actors runs
    assert "holds 2 actors" in skip_reason(gender, gender.grouped_protocol, locations)
    assert "no emotify data" in skip_reason(REGISTRY.entry("emotify/handcrafted"),
                                            REGISTRY.entry("emotify/handcrafted").grouped_protocol, locations)

    out = tmp_path / "out"
    assert main(["donateacry/panns_mlp", "--quick", "--out", str(out), "--data-dir", str(tmp_path / "data"),
                 "--weights-dir", str(tmp_path / "no-weights")]) == 0
    (record,) = list(csv.DictReader(open(out / "reproduction.csv")))
    assert record["same_protocol_status"] == record["grouped_status"] == "skipped"
    assert "Cnn14_mAP=0.431.pth" in record["notes"] and record["grouped_value"] == ""
    assert not (out / "runs").exists()  # nothing was started
    markdown = (out / "reproduction.md").read_text()
    assert "| skipped [1] | skipped [1] |" in markdown
    assert "[1] donateacry/panns_mlp, both protocols skipped: weights not in" in markdown


def test_first_error_line_is_the_exception_line():
    log = "[info] starting\nTraceback (most recent call last):\n  File x\nValueError: data.root=/x has no Actor_XX\n" \
          "  folders; download RAVDESS\n"
    assert first_error_line(log) == "ValueError: data.root=/x has no Actor_XX"
    assert first_error_line("just a last line\n\n") == "just a last line"


@pytest.fixture(scope="module")
def generated_ravdess(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("reproduce-data")
    make_ravdess(data / "ravdess", actors=range(1, 7), emotions=(1, 2), statements=(1, 2), seconds=0.6,
                 sample_rate=16000)
    return data


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_quick_report_runs_both_protocols_and_writes_md_and_csv(generated_ravdess, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["ravdess/gender_cnn", "--quick", "--out", str(out), "--data-dir", str(generated_ravdess),
                 "--", *TINY, f"paths.output_dir={tmp_path / 'outputs'}"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    (record,) = list(csv.DictReader(open(out / "reproduction.csv")))
    assert tuple(record) == CSV_COLUMNS
    assert record["same_protocol_status"] == record["grouped_status"] == "ok", record
    grouped_dir = Path(record["grouped_run_dir"])
    metrics = json.loads((grouped_dir / "metrics.json").read_text())
    assert float(record["grouped_value"]) == pytest.approx(metrics["test/acc"], abs=1e-4)
    assert float(record["grouped_ci_low"]) <= float(record["grouped_value"]) <= float(record["grouped_ci_high"])
    assert float(record["grouped_baseline"]) == pytest.approx(metrics["baseline/acc"], abs=1e-4)
    assert float(record["reported_value"]) == pytest.approx(0.9722)
    assert all(math.isfinite(float(record[k])) and float(record[k]) > 0
               for k in ("same_protocol_seconds", "grouped_seconds", "seconds"))
    # each protocol reached its job: the study's split shares actors between train and test, the grouped one does not
    study_split = OmegaConf.load(Path(record["same_protocol_run_dir"]) / "config.yaml").data.split
    assert (study_split, OmegaConf.load(grouped_dir / "config.yaml").data.split) == ("random", "grouped")
    assert "trainer.max_epochs=2" in (out / "logs" / f"{grouped_dir.name}.log").read_text().splitlines()[0]
    markdown = (out / "reproduction.md").read_text()
    assert "| study | system | metric | study's protocol: reported |" in markdown and "--quick" in markdown
    assert "| RAVDESS, Milan | gender CNN | acc | random 70/15/15 of the files: test accuracy 97.22 % |" in markdown
    assert "| RAVDESS, Milan | gender CNN |" in printed
    # the same command again reuses both finished jobs (no process started) with their numbers and times
    assert main(["ravdess/gender_cnn", "--quick", "--out", str(out), "--data-dir", str(generated_ravdess),
                 "--", *TINY, f"paths.output_dir={tmp_path / 'outputs'}"]) == 0
    (again,) = list(csv.DictReader(open(out / "reproduction.csv")))
    assert again["grouped_status"] == "ok (reused)" and again["grouped_value"] == record["grouped_value"]
    assert again["seconds"] == record["seconds"]


@pytest.mark.slow  # a reproduction job run as a process (about 12 s)
def test_a_failing_job_is_a_row_with_its_error(generated_ravdess, tmp_path):
    out = tmp_path / "report"
    code = main(["ravdess/statement_cnn", "--quick", "--protocol", "study", "--out", str(out), "--data-dir",
                 str(generated_ravdess), "--", *TINY, "data.val_fraction=1.5",
                 f"paths.output_dir={tmp_path / 'outputs'}"])
    assert code == 1
    (record,) = list(csv.DictReader(open(out / "reproduction.csv")))
    assert record["same_protocol_status"] == "failed" and record["grouped_status"] == "not run"
    assert "exit 1: " in record["notes"] and "Error" in record["notes"] and "val_fraction" in record["notes"], record
    assert "failed [1]" in (out / "reproduction.md").read_text()


def test_a_changed_command_never_reports_the_old_runs_numbers(tmp_path):
    """A run folder finished by another command (other overrides, data, registry) is emptied
    before the job runs: audioml-train would skip it and its old metrics.json would pass as new."""
    import sys

    from audioml.reproduce.jobs import JOB_FILE, run_job

    run_dir, logs = tmp_path / "runs" / "job", tmp_path / "logs"
    run_dir.mkdir(parents=True)
    logs.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"test/acc": 0.99}))
    (logs / f"job.{JOB_FILE}").write_text(json.dumps({"returncode": 0, "seconds": 1.0,
                                                      "command": [sys.executable, "-m", "other"]}))
    result = run_job("audioml.reproduce", ["--no-such-option"], run_dir, logs, "test/acc", timeout=60)
    assert result.status == "failed" and not result.reused and result.value("test/acc") is None
    assert not (run_dir / "metrics.json").exists()
