"""audioml-probe: the command line, the layer choice made on validation, mistakes that end in one
message and exit status 2 before any encoder runs, and the table end to end on a generated
RAVDESS layout with the real EfficientAT mn04 weights and a small random wav2vec2 saved with
``save_pretrained`` (each probe a normal run: MLflow child, checkpoint that audioml-eval scores)."""

from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers.datasets import make_ravdess
from helpers.encoders import save_encoder

from audioml.probe import main, parse_command_line
from audioml.run.fit.probing import EncoderChoice, ProbeUsageError, choose_layer, parse_layers


def test_layers_encoders_and_the_command_line_parse():
    assert parse_layers(["all"], 4) == [0, 1, 2, 3]
    assert parse_layers(["last", "0", "-2", "weighted", "3"], 4) == [3, 0, 2, "weighted"]
    with pytest.raises(ProbeUsageError, match=r"layers='7'.*-4..3 \(this encoder has 4 layers\)"):
        parse_layers(["7"], 4)
    encoder = EncoderChoice.parse("hf_encoder model.backbone.name=/models/tiny-w2v model.sample_rate=16000")
    assert encoder.preset == "hf_encoder" and encoder.label == "hf_encoder:tiny-w2v"
    assert encoder.overrides == ("model.backbone.name=/models/tiny-w2v", "model.sample_rate=16000")
    with pytest.raises(ProbeUsageError, match="not key=value"):
        EncoderChoice.parse("hf_encoder oops")
    request = parse_command_line(["data=ravdess", 'encoders=[efficientat_mn04,"hf_encoder model.backbone.name=/m/w"]',
                                  "layers=[0,last]", "probes=[knn]", "evaluation=emobox", "trainer.max_epochs=3",
                                  "keep_checkpoints=all"])
    assert [e.label for e in request.encoders] == ["efficientat_mn04", "hf_encoder:w"]
    assert request.layers == ("0", "last") and request.probes == ("knn",) and request.metric == "macro_f1"
    assert request.overrides == ("evaluation=emobox", "trainer.max_epochs=3") and request.keep_checkpoints == "all"


def test_the_best_layer_is_chosen_on_validation_not_test():
    runs = pd.DataFrame({"layer": [0, 1, 2, 3], "val_score": [0.4, 0.7, 0.7, 0.5], "test": [0.9, 0.2, 0.3, 0.95]})
    assert choose_layer(runs)["layer"] == 1  # the best validation score; the lowest layer among equals
    assert choose_layer(runs.assign(val_score=math.nan))["layer"] == 3  # no validation: the last layer


@pytest.mark.parametrize("arguments, message", [
    (["encoders=[nosuchmodel]"], "unknown encoder 'nosuchmodel': encoders are model presets"),
    (["encoders=[cnn]", "probes=[svm]"], r"probes=\['svm'\]: choose from \['linear', 'mlp', 'knn'\]"),
    (["encoders=[cnn]", "data=nosuchdata"], "unknown data 'nosuchdata'"),
    (["encoders=[cnn]", "evaluation=emobox"], ("evaluation=emobox holds out RAVDESS actors, and SyntheticDataModule "
                                               "has no actors: use data=ravdess")),
    (["layers=all"], r"give data=<preset> and encoders=\[<model preset>, ...\]"),
    (["encoders=[cnn]", "layers=[5]"], r"layers='5': use all, last, weighted or layer indices in -3..2"),
])
def test_a_mistake_is_one_message_and_exit_status_2(tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    closed = io.StringIO()
    closed.close()  # what a command run before in this process may leave on the root logger
    monkeypatch.setattr(logging.getLogger(), "handlers", [*logging.getLogger().handlers, logging.StreamHandler(closed)])
    base = [] if any(a.startswith("data=") for a in arguments) or arguments == ["layers=all"] else ["data=synthetic"]
    status = main([*base, *arguments, f"paths.output_dir={tmp_path / 'out'}", "data.clips_per_class=4"])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("audioml-probe: ")]  # past a progress bar
    assert status == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out" / "mlflow").exists()  # no MLflow run opened
    assert not list((tmp_path / "out").glob("cache/embeddings-*"))  # no encoder ran



def test_probe_table_end_to_end_with_real_efficientat_and_a_saved_wav2vec2(shared_weights, tmp_path, compute_calls,
                                                                             capsys, monkeypatch):
    from audioml.config import compose_config
    from audioml.run.rundir import RunDir
    from audioml.run.use.inference import evaluate_checkpoint, predict_files

    weights = shared_weights / "efficientat-mn04"
    if not any(weights.glob("*.pt")):
        pytest.skip(f"no EfficientAT weights in {weights}")
    monkeypatch.setenv("AUDIOML_WEIGHTS_DIR", str(weights))
    data = make_ravdess(tmp_path / "data" / "ravdess", actors=(1, 2, 3, 4), emotions=(1, 3, 5, 6), statements=(1,))
    encoder = save_encoder(tmp_path / "tiny-w2v", "wav2vec2")
    out = tmp_path / "out"
    arguments = ["data=ravdess", f'encoders=[efficientat_mn04,"hf_encoder model.backbone.name={encoder}"]',
                 "layers=[0,last]", "probes=[knn]", f"paths.data_dir={data.parent}", "data.clip_seconds=0.6",
                 "trainer.enable_progress_bar=false", "evaluation.bootstrap_samples=50", f"paths.output_dir={out}"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert compute_calls == [16, 16]  # one embedding pass per encoder for both of its runs
    (directory,) = (out / "probes").iterdir()
    table = pd.read_csv(directory / "probe_table.csv")
    runs = pd.read_csv(directory / "probe_layers.csv")
    assert runs[["encoder", "layer"]].astype(str).values.tolist() == [
        ["efficientat_mn04", "0"], ["efficientat_mn04", "16"], ["hf_encoder:tiny-w2v", "0"],
        ["hf_encoder:tiny-w2v", "2"]]
    assert table[["encoder", "probe"]].values.tolist() == [["efficientat_mn04", "knn"], ["hf_encoder:tiny-w2v", "knn"]]
    for row in table.itertuples():
        layers = runs[runs["encoder"] == row.encoder]
        assert str(row.best_layer) == str(choose_layer(layers)["layer"])  # chosen on validation
        assert row.ci_low - 1e-6 <= row.test_macro_f1 <= row.ci_high + 1e-6 and row.baseline < 0.5
        assert f"{row.test_macro_f1:.3f}" in printed and row.probe_seconds > 0 and row.embed_seconds > 0
    assert (directory / "probe_layers.png").is_file()
    # keep_checkpoints=best: only the chosen layer's run of each encoder keeps its checkpoints
    kept = {str(Path(path).parent.parent) for path in (directory).glob("*/*/*/checkpoints/*.ckpt")}
    assert kept == set(table["run_dir"]) and all((Path(d) / "metrics.json").is_file() for d in runs["run_dir"])
    # each probe is a normal run: a child of the table's MLflow run, whose checkpoint (the kNN's training
    # embeddings in it) audioml-eval scores alike and audioml-predict runs on recordings
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    found = mlflow.search_runs(search_all_experiments=True)
    (parent_id,) = found.loc[found["tags.audioml.probe_table"] == directory.name, "run_id"]
    assert (found["tags.mlflow.parentRunId"] == parent_id).sum() == 4
    checkpoint = RunDir(table.loc[0, "run_dir"]).tested_checkpoint()
    cfg = compose_config([f"paths.output_dir={out}", f"paths.data_dir={data.parent}"])
    reproduced, _ = evaluate_checkpoint(checkpoint, cfg.paths, cfg.trainer)
    assert reproduced["test/macro_f1"] == pytest.approx(table.loc[0, "test_macro_f1"], abs=1e-6)
    predictions, skipped = predict_files(checkpoint, sorted((data / "Actor_01").glob("*.wav")), device="cpu")
    assert len(predictions) == 4 and skipped.empty and predictions["predicted"].isin(
        ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]).all()
    # rerun: every run is finished, nothing embeds or trains again, the times are the first ones
    compute_calls.clear()
    assert main(arguments) == 0 and compute_calls == []
    assert pd.read_csv(directory / "probe_table.csv")["probe_seconds"].tolist() == table["probe_seconds"].tolist()


@pytest.mark.slow
def test_probe_table_on_ravdess_actors_1_2_with_real_efficientat(shared_data, shared_weights, tmp_path, capsys,
                                                                  monkeypatch):
    """The real sample and weights: EfficientAT mn04's 17 block outputs and a small wav2vec2,
    three probes; a smoke test (two actors: one tests, the other trains)."""
    weights = shared_weights / "efficientat-mn04"
    if not any(weights.glob("*.pt")):
        pytest.skip(f"no EfficientAT weights in {weights}")
    monkeypatch.setenv("AUDIOML_WEIGHTS_DIR", str(weights))
    encoder = save_encoder(tmp_path / "tiny-w2v", "wav2vec2")
    out = tmp_path / "out"
    assert main(["data=ravdess", f'encoders=[efficientat_mn04,"hf_encoder model.backbone.name={encoder}"]',
                 "layers=[0,1,last]", "probes=[linear,mlp,knn]", f"paths.data_dir={shared_data}",
                 "trainer.enable_progress_bar=false", f"paths.output_dir={out}"]) == 0
    (directory,) = (out / "probes").iterdir()
    table = pd.read_csv(directory / "probe_table.csv")
    assert len(table) == 6 and len(pd.read_csv(directory / "probe_layers.csv")) == 18
    efficientat = table[table["encoder"] == "efficientat_mn04"]
    assert set(efficientat["best_layer"].astype(int)) <= {0, 1, 16}
    assert (efficientat["test_macro_f1"] > efficientat["baseline"]).any()  # AudioSet features beat the majority class
