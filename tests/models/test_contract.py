"""Contract over every ``conf/model/*.yaml``: compose with Hydra, build through the entry point's
``build_model``, push random waveforms of the model's sample rate through, and check shapes,
finiteness, where gradients go (trainable parameters only; frozen ones get none; frozen
BatchNorm stays in eval) and that ``reset_classifier`` gives a working new head."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from audioml.config import CONFIG_DIR
from audioml.models.pretrained import get_pretrained_cfg
from audioml.models.regressor import SequenceRegressor
from audioml.run.fit.compose import build_model

MODELS = sorted(p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml"))
#: Input-size overrides that keep CPU time small; the architecture itself is unchanged.
FAST = {"ast": ["+model.frontend={_target_:audioml.features.kaldi_fbank.KaldiFbank,sample_rate:16000,n_mels:128,"
                 "target_frames:128,mean:-4.2677393,std:9.1379948}", "+model.backbone.config={max_length:128}"],
        "imagenet_cnn": ["model.backbone.image_size=64"],
        # flattens a fixed-size spectrogram image (it refuses a variable-size input)
        "cnn_image": ["features=logmel_image", "features.image_size=[32,32]"],
        # a transformers encoder of 2 blocks, 32 wide; the feature encoder trains too (freeze=none checks all)
        "hf_encoder": ["model.backbone.model_type=wav2vec2", "model.backbone.freeze_feature_encoder=false",
                       "model.backbone.config={hidden_size:32,num_hidden_layers:2,num_attention_heads:2,"
                       "intermediate_size:64,conv_dim:[16,16,16,16,16,16,16],"
                       "num_conv_pos_embeddings:16,num_conv_pos_embedding_groups:2}"]}
#: The transformers encoders' presets at full size (95-600M parameters; hf_encoder runs the same code).
HF_PRESETS = {"wavlm_base_plus", "hubert_base", "wav2vec2_base", "data2vec_audio_base", "w2v_bert_2",
              "whisper_base_encoder", "clap_htsat_unfused"}
FAST.update({name: ["model.backbone.freeze_feature_encoder=false"] for name in HF_PRESETS})
#: Full-size transformers take minutes on a shared CPU; ``ast_tiny`` runs the same code by default.
SLOW = {"ast", *HF_PRESETS}
#: Parameters an architecture keeps fixed whatever is frozen (Whisper's sinusoidal positions).
FIXED = ("backbone.model.embed_positions.",)
NUM_CLASSES = 3
BATCH = 2


def compose_model(name: str, tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        probe = compose("train", overrides=[f"model={name}"])
        extra = ["loss=ccc"] if probe.model._target_.endswith("SequenceRegressor") else []
        cfg = compose("train", overrides=[f"model={name}", "data=synthetic", f"paths.output_dir={tmp_path}",
                                          *extra, *FAST.get(name, []), *overrides])
    with open_dict(cfg):
        if "pretrained" in cfg.model:
            cfg.model.pretrained = False  # random initialisation: no weights needed
    return cfg


def random_input(model, cfg) -> torch.Tensor:
    sample_rate = int(cfg.model.sample_rate)
    generator = torch.Generator().manual_seed(0)
    if isinstance(model, SequenceRegressor):
        return 0.1 * torch.randn(BATCH, 3, sample_rate // 2, generator=generator)
    return 0.1 * torch.randn(BATCH, sample_rate // 2, generator=generator)  # 0.5 s clips


def objective(model, waveform: torch.Tensor) -> torch.Tensor:
    output = model(waveform)
    loss = output.float().square().mean()
    if hasattr(model, "reconstruction_loss"):  # two-stage models: the stage-1 objective too
        loss = loss + model.reconstruction_loss(waveform)
    return loss


def check_gradients(model, waveform: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    objective(model, waveform).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"trainable {name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        else:
            assert parameter.grad is None, f"frozen {name} got a gradient"


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in MODELS])
def test_model_contract(name: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    cfg = compose_model(name, tmp_path, "model.freeze=all")
    torch.manual_seed(0)
    model = build_model(cfg, [f"c{i}" for i in range(NUM_CLASSES)], [4, 4, 4])
    model.train()
    waveform = random_input(model, cfg)
    backbone = model.backbone

    # freeze=all: only the head trains, and frozen BatchNorm keeps its running statistics.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("backbone.head.") for n in trainable), sorted(trainable)[:5]
    frozen_bn = [m for n, m in backbone.named_modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not n.startswith("head")]
    assert all(not m.training for m in frozen_bn)
    statistics = [m.running_mean.clone() for m in frozen_bn if m.running_mean is not None]
    output = model(waveform)
    expected = (BATCH, 3, NUM_CLASSES) if isinstance(model, SequenceRegressor) else (BATCH, NUM_CLASSES)
    assert tuple(output.shape) == expected
    assert torch.isfinite(output).all()
    check_gradients(model, waveform)
    assert all(torch.equal(a, m.running_mean) for a, m in
               zip(statistics, [m for m in frozen_bn if m.running_mean is not None]))

    # freeze=none: every parameter trains and gets a gradient.
    backbone.freeze("none")
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith(FIXED))
    check_gradients(model, waveform)

    # A new classifier for another number of classes.
    backbone.reset_classifier(5)
    model.eval()
    with torch.no_grad():
        output = model(waveform)
    assert output.shape[-1] == 5 and torch.isfinite(output).all()
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{time.perf_counter() - started:.1f}s")


@pytest.mark.parametrize("name", [m for m in MODELS if m not in ("cnn", "cnn_deep")])
def test_model_yaml_declares_its_input(name: str, tmp_path: Path) -> None:
    """Every model names its sample rate and a front end whose sample rate is the same (its
    own, or with ``frontend: null`` the one of its weights' record)."""
    cfg = compose_model(name, tmp_path)
    assert int(cfg.model.sample_rate) > 0
    frontend = (OmegaConf.to_container(cfg.model.frontend, resolve=True) if cfg.model.frontend is not None
                else get_pretrained_cfg(cfg.model.backbone.weights).frontend_config())
    assert frontend["sample_rate"] == cfg.model.sample_rate


def test_freeze_block_name_and_unknown_name(tmp_path: Path) -> None:
    cfg = compose_model("efficientat_mn04", tmp_path, "model.freeze=features.12")
    model = build_model(cfg, ["a", "b"])
    params = model.backbone.backbone_parameters()
    first = next(i for i, (n, _) in enumerate(params) if n.startswith("features.12."))
    assert not any(p.requires_grad for _, p in params[:first])
    assert all(p.requires_grad for _, p in params[first:])
    with pytest.raises(ValueError, match="matches no backbone parameter"):
        model.backbone.freeze("features.99")


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in MODELS])
def test_every_model_rebuilds_from_a_record_on_the_meta_device(name: str, tmp_path: Path) -> None:
    """A checkpoint of any model config can be read back: the record's model builds on the meta
    device (``audioml.run.use.checkpoint._check_sizes``, no memory) with exactly the shapes of the
    real model's weights."""
    from audioml.models.base import persist_metric_states
    from audioml.run.use.checkpoint import _check_sizes, _set_pretrained_false

    cfg = compose_model(name, tmp_path)
    model = build_model(cfg, [f"c{i}" for i in range(NUM_CLASSES)], [4, 4, 4])
    persist_metric_states(model)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("optimizer", "scheduler", "pretrain_optimizer"):
        model_cfg.pop(key, None)
    _set_pretrained_false(model_cfg)
    record = {"loss": OmegaConf.to_container(cfg.loss, resolve=True), "class_names": [f"c{i}" for i in range(NUM_CLASSES)],
              "class_counts": [4, 4, 4]}
    _check_sizes(model_cfg, record, model.state_dict(), name)
