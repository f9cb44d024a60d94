"""``model=hf_encoder``: small random transformers encoders written with ``save_pretrained`` and
loaded by folder name (the ``from_pretrained`` call a hub id takes). Hidden layers against
transformers' own outputs with its own feature extractors, padding (a padded clip pools as the
clip alone), the embedding-cache key, the checkpoint record rebuilding the model with the folder
gone, prediction, export, refusals; a training run logging its layer weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers as T
from helpers.encoders import TINY, save_encoder
from hydra.utils import instantiate
from mlflow import MlflowClient

from audioml.api import compose_config, train
from audioml.config import compose_config as compose
from audioml.data.decoder import ClipDecoder
from audioml.models.backbones.hf_encoder import FAMILIES, HFAudioEncoder, conv_output_lengths
from audioml.models.embedding_cache import module_fingerprint
from audioml.models.heads import LayerWeightedHead
from audioml.models.pretrained import PRETRAINED_CFGS
from audioml.run.fit.compose import build_model
from audioml.run.use.checkpoint import model_from_record, read_record
from audioml.run.use.export import ExportError, export_checkpoint
from audioml.run.use.inference import predict_files

RATES = {"clap": 48000}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {model_type: save_encoder(root / model_type, model_type) for model_type in TINY}


def tone(seconds: float, rate: int = 16000, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    return 0.3 * torch.sin(2 * torch.pi * 330 * t) + 0.05 * torch.randn(t.shape, generator=generator) + 0.01


def padded(clips: list[torch.Tensor], size: int) -> torch.Tensor:
    batch = torch.zeros(len(clips), size)
    for row, clip in enumerate(clips):
        batch[row, : clip.numel()] = clip
    return batch


def encoder(folder: Path, tmp_path: Path, *overrides: str):
    """The model ``model=hf_encoder model.backbone.name=<folder>`` builds (3 classes), in eval mode."""
    rate = RATES.get(folder.name, 16000)
    cfg = compose(["data=synthetic", "model=hf_encoder", f"model.backbone.name={folder}", f"model.sample_rate={rate}",
                   f"paths.output_dir={tmp_path}", *overrides])
    return build_model(cfg, ["a", "b", "c"]).eval()


# -------------------------------------------------------------------------- loading, layers
@pytest.mark.parametrize("model_type", list(TINY))
def test_every_family_loads_by_folder_name_with_all_its_layers(model_type, folders, tmp_path) -> None:
    model = encoder(folders[model_type], tmp_path)
    backbone = model.backbone
    assert isinstance(backbone, HFAudioEncoder) and backbone.model_type in FAMILIES
    assert isinstance(backbone.head, LayerWeightedHead) and model.hparams.freeze == "all"
    rate = RATES.get(model_type, 16000)
    waveform = padded([tone(1.0, rate), tone(0.6, rate, seed=1)], rate)
    with torch.no_grad():
        states = backbone.forward_layers(model.frontend(waveform))
        logits = model(waveform)
    blocks = 2  # every tiny model has two blocks (CLAP: two Swin stages)
    assert len(states.layers) == len(backbone.layer_dims) == blocks + 1 == backbone.num_blocks + 1
    for layer, dim in zip(states.layers, backbone.layer_dims):
        assert layer.shape[0] == 2 and layer.shape[2] == dim and torch.isfinite(layer).all()
    torch.testing.assert_close(states.layers[-1], backbone.forward_features(waveform))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    if model_type == "clap":
        assert states.mask is None  # the clip is repeated to the tower's length: no padding left
    else:
        assert states.mask.shape == states.layers[0].shape[:2] and states.mask[0].all() and not states.mask[1].all()


def _reference_layers(model_type: str, folder: Path, clip: np.ndarray) -> tuple[torch.Tensor, ...]:
    """transformers alone: its feature extractor on the clip, its model's hidden states."""
    extractor = T.AutoFeatureExtractor.from_pretrained(folder)
    rate = extractor.sampling_rate
    inputs = extractor(clip, sampling_rate=rate, return_tensors="pt")
    model = T.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        if model_type == "whisper":
            return model.get_encoder()(inputs.input_features, output_hidden_states=True).hidden_states
        if model_type == "clap":
            out = model.audio_model(inputs.input_features, output_hidden_states=True)
            return tuple(h.flatten(2).transpose(1, 2) for h in (*out.hidden_states[:-1], out.last_hidden_state))
        values = inputs.input_values if "input_values" in inputs else inputs.input_features
        return model(values, attention_mask=inputs.get("attention_mask"), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("model_type", ["wav2vec2", "wavlm", "wav2vec2-bert", "whisper", "clap"])
def test_layers_equal_transformers_with_its_own_feature_extractor(model_type, folders, tmp_path) -> None:
    """One clip, unpadded: every hidden layer equals the transformers model fed by the
    transformers feature extractor (normalisation, log-mel, fbank), so the contract is applied."""
    folder = folders[model_type]
    rate = RATES.get(model_type, 16000)
    clip = tone(0.7, rate)
    backbone = encoder(folder, tmp_path).backbone
    with torch.no_grad():
        states = backbone.forward_layers(clip[None])
    expected = _reference_layers(model_type, folder, clip.numpy())
    assert len(states.layers) == len(expected)
    for index, (got, want) in enumerate(zip(states.layers, expected)):
        valid = int(states.mask[0].sum()) if states.mask is not None else want.shape[1]
        torch.testing.assert_close(got[0, :valid], want[0, :valid], rtol=1e-3, atol=1e-3, msg=f"layer {index}")


def test_normalisation_is_the_extractors(folders, tmp_path) -> None:
    """The same clip at two levels: normalised input (do_normalize) gives the same layers; the
    unnormalised contract does not."""
    clip = tone(0.8)
    normalised = encoder(folders["wav2vec2"], tmp_path).backbone
    raw = encoder(folders["wav2vec2"], tmp_path, "+model.backbone.extractor={_target_:"
                  "audioml.features.hf_extractors.WaveformNormalize,do_normalize:false,return_attention_mask:true}"
                  ).backbone
    with torch.no_grad():
        same = [normalised.forward_features(level * clip[None]) for level in (1.0, 0.1)]
        different = [raw.forward_features(level * clip[None]) for level in (1.0, 0.1)]
    torch.testing.assert_close(same[0], same[1], rtol=1e-4, atol=1e-4)
    assert (different[0] - different[1]).abs().max() > 1e-2
    assert normalised.extractor.do_normalize and not raw.extractor.do_normalize


# ------------------------------------------------------------------------------- padding
# Not data2vec-audio: its positional embedding is 5 stacked convolutions, and transformers zeroes
# the padded frames before the first only, so frames near a padded clip's end differ (by ~1e-2).
@pytest.mark.parametrize("model_type", ["wav2vec2", "wavlm", "hubert", "wav2vec2-bert", "whisper"])
@pytest.mark.parametrize("pad_mode", ["start", "center"])
def test_a_padded_clip_pools_as_the_clip_alone(model_type, pad_mode, folders, tmp_path) -> None:
    model = encoder(folders[model_type], tmp_path)
    backbone = model.backbone
    long, short = tone(1.0, seed=0), tone(0.43, seed=1)
    if pad_mode == "start":
        batch = padded([long, short], 16000)
    else:
        batch = torch.from_numpy(np.stack([ClipDecoder(16000, 1.0, pad_mode="center").finish(c.numpy())
                                           for c in (long, short)]))
    with torch.no_grad():
        together = backbone.forward_layers(batch)
        pooled_together = torch.stack(together.pooled(), dim=1)
        logits_together = model(batch)
        for row, clip in enumerate([long, short]):
            alone = backbone.forward_layers(clip[None])
            torch.testing.assert_close(pooled_together[row], torch.stack(alone.pooled(), dim=1)[0], rtol=1e-4,
                                       atol=1e-4)
            torch.testing.assert_close(logits_together[row], model(clip[None])[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(backbone.forward_head(backbone.forward_features(batch), pre_logits=True)[row],
                                       backbone.forward_head(backbone.forward_features(clip[None]), pre_logits=True)[0],
                                       rtol=1e-4, atol=1e-4)


def test_an_encoder_trained_without_attention_mask_gets_none_but_pools_real_frames(folders, tmp_path) -> None:
    """wav2vec2-base's kind (group-normalised feature encoder): no attention mask is given to
    it; pooling still skips the padded frames."""
    backbone = encoder(folders["wav2vec2-group"], tmp_path).backbone
    seen = []
    backbone.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("attention_mask")),
                                             with_kwargs=True)
    with torch.no_grad():
        states = backbone.forward_layers(padded([tone(1.0), tone(0.5, seed=1)], 16000))
    assert seen == [None]
    config = backbone.model.config
    assert states.mask.sum(dim=1).tolist() == conv_output_lengths(torch.tensor([16000, 8000]), list(config.conv_kernel),
                                                                  list(config.conv_stride)).tolist() == [49, 24]
    assert torch.all(states.layers[-1][1, int(states.mask[1].sum()):] == 0)
    with_mask = encoder(folders["wav2vec2"], tmp_path).backbone
    seen_with = []
    with_mask.model.register_forward_pre_hook(lambda m, a, kwargs: seen_with.append(kwargs.get("attention_mask")),
                                              with_kwargs=True)
    with torch.no_grad():
        with_mask.forward_layers(padded([tone(1.0), tone(0.5, seed=1)], 16000))
    assert seen_with[0].sum(dim=1).tolist() == [16000, 8000]


# ----------------------------------------------------------------------- cache key, record
def test_the_embedding_cache_key_changes_with_the_encoder_weights(folders, tmp_path) -> None:
    other = save_encoder(tmp_path / "other-seed", "wav2vec2", seed=1)
    copy = shutil.copytree(folders["wav2vec2"], tmp_path / "copy")
    first, again, changed = (encoder(folder, tmp_path) for folder in (folders["wav2vec2"], copy, other))
    key = module_fingerprint(first.frontend, first.backbone)
    assert module_fingerprint(again.frontend, again.backbone) == key  # same weights elsewhere: same entry
    assert module_fingerprint(changed.frontend, changed.backbone) != key
    no_norm = encoder(folders["wav2vec2"], tmp_path, "+model.backbone.extractor={_target_:"
                      "audioml.features.hf_extractors.WaveformNormalize,do_normalize:false}")
    assert module_fingerprint(no_norm.frontend, no_norm.backbone) != key  # the contract is part of the key


@pytest.mark.parametrize("model_type", ["wav2vec2", "whisper", "clap"])
def test_rebuild_config_is_plain_data_and_rebuilds_without_the_folder(model_type, folders, tmp_path) -> None:
    model = encoder(folders[model_type], tmp_path)
    rebuilt = model.backbone.rebuild_config()
    assert rebuilt["pretrained"] is False and rebuilt["model_type"] == model.backbone.model_type

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and not k.startswith("_") or k == "_target_" for k in value) and all(
                plain(v) for v in value.values())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str))

    assert plain(rebuilt["config"]) and plain(rebuilt["extractor"])
    assert "auto_map" not in rebuilt["config"] and "_name_or_path" not in rebuilt["config"]
    backbone = HFAudioEncoder(pretrained=False, model_type=rebuilt["model_type"], config=rebuilt["config"],
                              extractor=instantiate(rebuilt["extractor"]), num_classes=3)
    backbone.reset_classifier(3, model.backbone.head.__class__)
    backbone.load_state_dict(model.backbone.state_dict())
    waveform = padded([tone(1.0, RATES.get(model_type, 16000))], RATES.get(model_type, 16000))
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(waveform), model.backbone(waveform))


# -------------------------------------------------------------------------------- refusals
def test_architectures_outside_the_audio_encoders_are_refused(tmp_path) -> None:
    T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model; model=hf_encoder takes the audio encoders"):
        HFAudioEncoder(name=str(tmp_path / "bert"))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text('{"model_type": "my-audio-net", "auto_map": {"AutoModel": '
                                        '"modeling_mine.MyAudioNet"}, "hidden_size": 8}')
    (remote / "modeling_mine.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match="does not implement this architecture.*trust_remote_code"):
        HFAudioEncoder(name=str(remote))
    with pytest.raises(ValueError, match="without pretrained weights give one of"):
        HFAudioEncoder(pretrained=False, model_type="bert")
    T.ClapConfig(audio_config={**TINY["clap"]["audio_config"], "enable_fusion": True},
                 text_config=TINY["clap"]["text_config"], projection_dim=16).save_pretrained(tmp_path / "fused")
    with pytest.raises(ValueError, match="fused CLAP"):
        HFAudioEncoder(name=str(tmp_path / "fused"))


def test_missing_weights_name_the_hub_id_and_how_to_fetch_them(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nobody/no-such-encoder.*hf download nobody/no-such-encoder "
                                                r"--cache-dir .*weights"):
        HFAudioEncoder(name="nobody/no-such-encoder", weights_dir=str(tmp_path / "weights"), local_files_only=True)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        HFAudioEncoder(name=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="needs model.backbone.name"):
        HFAudioEncoder()


def test_input_contract_mismatches_are_refused(folders) -> None:
    with pytest.raises(ValueError, match="set model.sample_rate=48000"):
        HFAudioEncoder(name=str(folders["clap"]), sample_rate=16000)
    with pytest.raises(ValueError, match="Whisper encoder takes 100 mel frames"):
        HFAudioEncoder(pretrained=False, model_type="whisper", config=TINY["whisper"],
                       extractor=instantiate({"_target_": "audioml.features.hf_extractors.WhisperLogMel",
                                              "feature_size": 16, "chunk_length": 30}))
    with pytest.raises(ValueError, match="layer drop"):
        HFAudioEncoder(name=str(folders["wav2vec2"]), config={"layerdrop": 0.1})


def test_spectrogram_augmentation_is_refused(folders, tmp_path) -> None:
    with pytest.raises(Exception, match="spectrogram augmentation .* cannot apply: HFAudioEncoder takes waveforms"):
        encoder(folders["wav2vec2"], tmp_path, "augmentation=specaugment")


def test_presets_carry_their_contract_in_the_registry() -> None:
    for preset, weights in (("wavlm_base_plus", "wavlm_base_plus"), ("hubert_base", "hubert_base"),
                            ("wav2vec2_base", "wav2vec2_base"), ("data2vec_audio_base", "data2vec_audio_base"),
                            ("whisper_base_encoder", "whisper_base"), ("clap_htsat_unfused", "clap_htsat_unfused"),
                            ("w2v_bert_2", "w2v_bert_2")):
        cfg = compose([f"model={preset}"])
        record = PRETRAINED_CFGS[weights]
        assert cfg.model.backbone.weights == weights and cfg.model.frontend is None
        assert cfg.model.sample_rate == record.sample_rate == record.extractor_args["sampling_rate"]
        assert record.hub_repo and record.build_frontend().sample_rate == record.sample_rate
        extractor = record.build_extractor()
        assert extractor.sampling_rate == record.sample_rate
        assert FAMILIES[cfg.model.backbone.model_type].extractor is type(extractor)
    assert PRETRAINED_CFGS["whisper_base"].extractor_args["chunk_length"] == 30
    assert PRETRAINED_CFGS["clap_htsat_unfused"].extractor_args["max_length_s"] == 10
    assert PRETRAINED_CFGS["wav2vec2_base"].extractor_args["return_attention_mask"] is False


# ----------------------------------------------------------------- a run, predict, export
QUICK = ["data=synthetic", "data.clips_per_class=6", "data.seconds=0.8", "trainer.max_epochs=2",
         "trainer.enable_progress_bar=false", "data.num_workers=0", "evaluation.bootstrap_samples=0"]


@pytest.fixture(scope="module")
def encoder_run(folders, tmp_path_factory):
    """A probing run (frozen encoder, layer-weighted head on cached layer means) of the tiny
    wav2vec2 loaded by folder name, its folder then moved away: ``(output, run_dir, checkpoint)``."""
    output = tmp_path_factory.mktemp("encoder-run")
    folder = shutil.copytree(folders["wav2vec2"], output / "w2v")
    cfg = compose_config([*QUICK, "model=hf_encoder", f"model.backbone.name={folder}", f"paths.output_dir={output}",
                          f"hydra.run.dir={output / 'run'}", "model.optimizer.lr=0.05"])
    _, run_dir = train(cfg)
    shutil.rmtree(folder)  # the checkpoint must not need it
    return output, run_dir, next((run_dir / "checkpoints").glob("best-*.ckpt"))


def test_the_run_logs_its_layer_weights_and_trained_the_head_on_cached_layers(encoder_run) -> None:
    output, run_dir, _ = encoder_run
    cached = [np.load(path, mmap_mode="r") for path in (output / "cache").glob("embeddings-*.npy")]
    assert [array.shape[1:] for array in cached] == [(96,)]  # 3 layers' means x 32: the encoder ran once
    table = np.loadtxt(run_dir / "layer_weights.csv", delimiter=",", skiprows=1)
    assert table.shape == (3, 2) and np.isclose(table[:, 1].sum(), 1.0, atol=1e-5)
    assert not np.allclose(table[:, 1], 1 / 3)  # learned
    client = MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    metrics = client.get_run(run_id).data.metrics
    assert [round(metrics[f"layer_weight/{i}"], 6) for i in range(3)] == [round(w, 6) for w in table[:, 1]]
    assert {"layer_weights.png", "layer_weights.csv"} <= {a.path for a in client.list_artifacts(run_id)}


def test_the_checkpoint_rebuilds_the_model_with_its_folder_gone(encoder_run, monkeypatch) -> None:
    _, _, checkpoint = encoder_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    record, state = read_record(checkpoint)
    backbone = record["model"]["backbone"]
    assert backbone["pretrained"] is False and backbone["model_type"] == "wav2vec2"
    assert backbone["config"]["hidden_size"] == 32 and backbone["extractor"]["do_normalize"] is True
    model = model_from_record(record, state)
    with torch.no_grad():
        probabilities = model(padded([tone(0.8), tone(0.3, seed=1)], 12800)).softmax(-1)
    assert probabilities.shape == (2, 3) and torch.allclose(probabilities.sum(-1), torch.ones(2))


def test_predict_scores_short_files_as_the_clip_alone(encoder_run, tmp_path) -> None:
    """A file shorter than the clip is padded by the decoder and masked by the encoder: its
    answer is the model's on the unpadded audio."""
    _, _, checkpoint = encoder_run
    files = []
    for index, seconds in enumerate((0.8, 0.35)):
        files.append(tmp_path / f"clip{index}.wav")
        sf.write(files[-1], tone(seconds, seed=index).numpy(), 16000)
    predictions, skipped = predict_files(checkpoint, files, device="cpu")
    assert len(predictions) == 2 and skipped.empty
    record, state = read_record(checkpoint)
    model = model_from_record(record, state)
    columns = [f"p_{name}" for name in record["class_names"]]
    for index, seconds in enumerate((0.8, 0.35)):
        with torch.no_grad():
            alone = model(tone(seconds, seed=index)[None]).softmax(-1)[0].numpy()
        np.testing.assert_allclose(predictions[columns].to_numpy()[index], alone, atol=1e-5)


@pytest.mark.parametrize("format", [pytest.param("onnx", marks=pytest.mark.slow), "torchscript"])  # ONNX: 40 s
def test_export_answers_like_the_model(encoder_run, format, tmp_path) -> None:
    _, _, checkpoint = encoder_run
    result = export_checkpoint(checkpoint, format, tmp_path / f"model.{'onnx' if format == 'onnx' else 'pt'}")
    assert result.path.is_file() and result.contract["parity"]["max_abs_diff"] <= 1e-4
    inputs = padded([tone(0.8), tone(0.5, seed=2), tone(0.2, seed=3)], 12800).numpy()
    record, state = read_record(checkpoint)
    with torch.no_grad():
        expected = model_from_record(record, state)(torch.from_numpy(inputs)).softmax(-1).numpy()
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        answers = session.run(None, {"waveform": inputs})[0]
    else:
        with torch.no_grad():
            answers = torch.jit.load(str(result.path))(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(answers, expected, atol=1e-4)


@pytest.mark.slow  # a run and two exports per family (about a minute each)
@pytest.mark.parametrize("model_type", ["wav2vec2-bert", "whisper", "clap"])
@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_the_other_families_export_answering_like_the_model(model_type, format, folders, tmp_path) -> None:
    """Whisper's encoder and CLAP's tower export to both formats with parity; Wav2Vec2-BERT to
    TorchScript only (torch.export cannot express its filterbank's frame count, 2026-12: the
    refusal says to use TorchScript)."""
    rate = RATES.get(model_type, 16000)
    cfg = compose_config([*QUICK, "trainer.max_epochs=1", "model=hf_encoder", f"model.sample_rate={rate}",
                          f"model.backbone.name={folders[model_type]}", f"data.sample_rate={rate}",
                          f"paths.output_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}", "logger.enabled=false"])
    _, run_dir = train(cfg)
    checkpoint = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    output = tmp_path / f"model.{'onnx' if format == 'onnx' else 'pt'}"
    if (model_type, format) == ("wav2vec2-bert", "onnx"):
        with pytest.raises(ExportError, match="Export with format=torchscript"):
            export_checkpoint(checkpoint, format, output)
        return
    assert export_checkpoint(checkpoint, format, output).contract["parity"]["max_abs_diff"] <= 1e-4


def test_a_hub_id_is_read_from_the_weights_folder(tmp_path) -> None:
    """``model.backbone.name=<org>/<name>`` looks in ``paths.weights_dir`` (laid out as the Hugging
    Face cache: where a download goes), here without the network (``local_files_only``)."""
    weights = tmp_path / "weights"
    repo = weights / "models--audioml-test--tiny-wav2vec2"
    save_encoder(repo / "snapshots" / "0123abcd", "wav2vec2")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    name = ["model=hf_encoder", "model.backbone.name=audioml-test/tiny-wav2vec2",
            "model.backbone.local_files_only=true"]
    cfg = compose(["data=synthetic", *name, f"paths.weights_dir={weights}", f"paths.output_dir={tmp_path}"])
    model = build_model(cfg, ["a", "b", "c"]).eval()
    assert isinstance(model.backbone, HFAudioEncoder) and len(model.backbone.layer_dims) == 3
    with pytest.raises(Exception, match="tiny-wav2vec2: its config could not be read from .*empty"):  # said so
        build_model(compose(["data=synthetic", *name, f"paths.weights_dir={tmp_path / 'empty'}",
                             f"paths.output_dir={tmp_path}"]), ["a", "b"])
