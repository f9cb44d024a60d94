"""Trainer speed options: precision chosen by device, torch.compile switch, float32 front end
under mixed precision."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from audioml.features import LogMel
from audioml.models.backbones.cnn import ScratchCNN
from audioml.models.classifier import AudioClassifier
from audioml.run.fit.trainer import CompileModules, make_trainer, resolve_precision


def small_model() -> AudioClassifier:
    torch.manual_seed(0)
    return AudioClassifier(ScratchCNN(channels=[4, 8], dense=8), LogMel(16000, n_fft=512, hop_length=160, n_mels=32),
                           num_classes=2)


@pytest.mark.parametrize(("precision", "accelerator", "cuda", "bf16", "expected"), [
    ("auto", "auto", False, False, "32-true"),
    ("auto", "cpu", True, True, "32-true"),
    ("auto", "auto", True, True, "bf16-mixed"),
    ("auto", "gpu", True, False, "16-mixed"),
    (None, "cuda", True, True, "bf16-mixed"),
    ("16-mixed", "cpu", False, False, "16-mixed"),
])
def test_resolve_precision(precision, accelerator, cuda, bf16, expected):
    assert resolve_precision(precision, accelerator, cuda, bf16) == expected


def test_default_trainer_config_is_full_precision_and_uncompiled_on_cpu():
    from audioml.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["trainer=cpu", "trainer.max_epochs=1"])
    assert cfg.trainer.compile is False and cfg.trainer.precision == "auto"
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.precision == "32-true"
    assert not any(isinstance(c, CompileModules) for c in trainer.callbacks)
    compiled = make_trainer(compile=True, compile_mode="reduce-overhead", accelerator="cpu", logger=False)
    (callback,) = [c for c in compiled.callbacks if isinstance(c, CompileModules)]
    assert callback.mode == "reduce-overhead"


def test_compile_callback_compiles_in_place_and_keeps_parameter_names():
    model = small_model()
    names = list(model.state_dict())
    callback = CompileModules()
    callback.setup(None, model, "fit")
    assert callback.compiled == ["frontend", "backbone"]
    assert model.backbone._compiled_call_impl is not None and model.frontend._compiled_call_impl is not None
    assert list(model.state_dict()) == names  # checkpoints load into uncompiled models


def test_front_end_stays_float32_under_autocast():
    model = small_model()
    waveform = torch.randn(2, 16000)
    reference = model.spectrogram(waveform)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = model.spectrogram(waveform)
        logits = model(waveform)
    assert spec.dtype == torch.float32
    torch.testing.assert_close(spec, reference)
    assert logits.dtype == torch.bfloat16  # the backbone itself does run in mixed precision


@pytest.mark.slow
def test_compiled_model_matches_eager_outputs():
    model = small_model()
    waveform = torch.randn(4, 16000)
    model.eval()
    with torch.no_grad():
        eager = model(waveform)
        CompileModules().setup(None, model, "test")
        compiled = model(waveform)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hint is for machines without a CUDA GPU")
def test_gpu_trainer_without_a_gpu_says_what_to_use():
    with pytest.raises(ValueError, match="trainer=ddp_cpu"):
        make_trainer(accelerator="gpu", devices=2, strategy="ddp")
