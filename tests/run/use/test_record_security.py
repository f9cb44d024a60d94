"""Round two of the checkpoint trust cases (issue 35, 3a/3b/3e): every field of a record is plain
data of its type before anything is instantiated, a record never chooses where to write, what to
download or which weights folder to use, and it cannot make the process allocate more than the
file holds."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers.runners import run_entry_point

from audioml.config import compose_config
from audioml.run.use.checkpoint import MAX_CLASSES, UntrustedCheckpointError, datamodule_from_record, read_record
from audioml.run.use.export import export_checkpoint
from audioml.run.use.inference import evaluate_checkpoint, predict_files


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _craft(checkpoint, tmp_path, name, change):
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    change(content)
    path = tmp_path / name
    torch.save(content, path)
    return path


def _record(change):
    return lambda content: change(content["audioml"])


def test_class_names_and_counts_that_name_code_are_refused_by_every_command(tiny_run, tmp_path):
    output, _, best = tiny_run
    written = tmp_path / "written.txt"
    savetxt = _craft(best, tmp_path, "names.ckpt", _record(lambda r: r.update(class_names=[
        {"_target_": "numpy.savetxt", "fname": str(written), "X": [1.0]}, "b", "c"])))
    marker, payload = tmp_path / "pwned", tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(_Payload(marker)))
    read_pickle = _craft(best, tmp_path, "counts.ckpt", _record(lambda r: r.update(class_counts={
        "_target_": "pandas.read_pickle", "filepath_or_buffer": str(payload)})))
    for crafted, message in ((savetxt, "class_names must be a list"), (read_pickle, "class_counts must be a list")):
        with pytest.raises(UntrustedCheckpointError, match=message):
            read_record(crafted)
    clip = next((output / "cache").glob("synthetic-*/class_0/*.wav"))
    cfg = compose_config([f"source={best}", f"paths.output_dir={output}"], config_name="eval")
    for crafted in (savetxt, read_pickle):  # eval, predict and export read records through read_record
        with pytest.raises(UntrustedCheckpointError):
            evaluate_checkpoint(crafted, cfg.paths, cfg.trainer)
        with pytest.raises(UntrustedCheckpointError):
            predict_files(crafted, [clip], device="cpu")
        with pytest.raises(UntrustedCheckpointError):
            export_checkpoint(crafted, "onnx", tmp_path / "m.onnx")
    refused = run_entry_point("audioml.predict", f"source={savetxt}", f"inputs=[{clip}]",
                              f"output={tmp_path / 'p.csv'}", cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "class_names must be a list" in refused.stderr
    assert not written.exists() and not marker.exists()
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(task={"_target_": "os.getcwd"}), "task="),
    (lambda r: r.update(class_names=[f"c{i}" for i in range(MAX_CLASSES + 1)]), "class_names must be"),
    (lambda r: r.update(class_names=["a", "a", "b"]), "repeats a name"),
    (lambda r: r.update(class_counts=[1, -2, 3]), "class_counts must be"),
    (lambda r: r.update(seed="0; rm -rf"), "seed must be"),
    (lambda r: r.update(decoder={**r["decoder"], "sample_rate": {"_target_": "os.getpid"}}), "decoder settings"),
    (lambda r: r.update(decoder={**r["decoder"], "clip_seconds": 1e9}), "decoder settings"),
    (lambda r: r["model"]["backbone"].update(pretrained=1), "pretrained=1 must be true or false"),
])
def test_every_plain_field_of_a_record_is_checked(tiny_run, tmp_path, change, message):
    crafted = _craft(tiny_run[2], tmp_path, "crafted.ckpt", _record(change))
    with pytest.raises(UntrustedCheckpointError, match=message):
        read_record(crafted)


def test_a_record_cannot_make_the_process_allocate_more_than_the_file_holds(tiny_run, tmp_path):
    best = tiny_run[2]
    dense = _craft(best, tmp_path, "dense.ckpt", _record(lambda r: r["model"]["backbone"].update(dense=10**9)))
    fft = _craft(best, tmp_path, "fft.ckpt", _record(lambda r: r["model"]["frontend"].update(n_fft=2**31)))
    for crafted, message in ((dense, "tensors differ from the weights it holds"), (fft, "features.n_fft=2147483648")):
        record, state_dict = read_record(crafted)
        with pytest.raises(UntrustedCheckpointError, match=message):
            predict_files(crafted, [], device="cpu")


def test_non_finite_weights_are_refused_not_answered_with_nan(tiny_run, tmp_path):
    def poison(content):
        name = next(k for k, v in content["state_dict"].items() if v.is_floating_point() and "head" in k)
        content["state_dict"][name][0] = float("nan")

    crafted = _craft(tiny_run[2], tmp_path, "nan.ckpt", poison)
    with pytest.raises(UntrustedCheckpointError, match="NaN or infinite"):
        predict_files(crafted, [], device="cpu")


def test_a_record_never_chooses_where_data_is_written_or_downloaded(tiny_run, tmp_path):
    """The synthetic DataModule writes its data into ``root``: a record's root pointing at a
    user's folder must not overwrite the files there; the evaluation generates under this
    machine's cache instead. ``download: true`` in a record is dropped."""
    output, run_dir, best = tiny_run
    users = tmp_path / "users_project"
    users.mkdir()
    (users / "manifest.csv").write_text("my own table\n")
    crafted = _craft(best, tmp_path, "root.ckpt", _record(lambda r: r["data"].update(
        root=str(users), cache_dir=str(users / "cache"))))
    cfg = compose_config([f"source={crafted}", f"paths.output_dir={tmp_path / 'eval_out'}",
                          "trainer.enable_progress_bar=false"], config_name="eval")
    metrics, _ = evaluate_checkpoint(crafted, cfg.paths, cfg.trainer)
    assert "test/acc" in metrics
    assert sorted(p.name for p in users.iterdir()) == ["manifest.csv"]
    assert (users / "manifest.csv").read_text() == "my own table\n"
    assert list((tmp_path / "eval_out" / "cache").glob("synthetic-*/manifest.csv"))

    record, _ = read_record(best)
    ravdess = {**record, "data": {"_target_": "audioml.data.ravdess.RavdessDataModule", "root": str(tmp_path / "none"),
                                  "download": True, "sample_rate": 16000, "clip_seconds": 1.0}}
    with pytest.raises(FileNotFoundError, match="none"):
        datamodule_from_record(ravdess, cfg.paths)
    assert not (tmp_path / "none").exists()


def test_a_record_never_chooses_a_weights_folder_or_a_hub_repository(tiny_run, tmp_path):
    """A record asking for pretrained weights from a folder of its choice (``pretrained: true``,
    ``weights_dir``) gets neither: the checkpoint's own weights are loaded, nothing is fetched."""
    from omegaconf import OmegaConf

    from audioml.models.backbones.imagenet import ImageNetCNN
    from audioml.models.base import persist_metric_states
    from audioml.run.use.checkpoint import instantiate_model, model_from_record

    cfg = compose_config(["data=synthetic", "model=efficientat_mn04", "model.pretrained=false"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("optimizer", "scheduler"):
        model_cfg.pop(key)
    trained = instantiate_model(model_cfg, None, ["a", "b"], None)
    persist_metric_states(trained)
    weights = tmp_path / "weights"
    model_cfg["pretrained"] = True
    model_cfg["backbone"].update(pretrained=True, weights_dir=str(weights))
    record, _ = read_record(tiny_run[2])
    rebuilt = model_from_record({**record, "model": model_cfg, "loss": None, "class_names": ["a", "b"],
                                 "class_counts": None}, trained.state_dict())
    assert not weights.exists()
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(ValueError, match="not a timm architecture name"):
        ImageNetCNN("hf-hub:someone/evil")


def test_the_synthetic_generator_never_writes_into_a_folder_it_did_not_make(tmp_path):
    from audioml.data.synthetic import generate_synthetic_dataset

    (tmp_path / "manifest.csv").write_text("keep me\n")
    with pytest.raises(FileExistsError, match="holds files that synthetic data did not write"):
        generate_synthetic_dataset(tmp_path)
    assert (tmp_path / "manifest.csv").read_text() == "keep me\n"
    fresh = generate_synthetic_dataset(tmp_path / "new", clips_per_class=2, num_groups=2)
    assert generate_synthetic_dataset(fresh, clips_per_class=2, num_groups=2) == fresh  # its own folder: reused
    assert np.isfinite(len(list(fresh.rglob("*.wav"))))
