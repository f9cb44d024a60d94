"""The fine-tuning recipe of the transformers encoders: the top n blocks trained, the convolutional
feature encoder frozen, layer-wise learning-rate decay, warm-up + cosine, gradient checkpointing,
and an interrupted fine-tuning fit that continues exactly (the existing resume machinery)."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from helpers.callbacks import CrashAtBatch
from helpers.encoders import save_encoder
from helpers.runners import find_run_dirs, read_metrics, run_entry_point

from audioml.config import compose_config as compose
from audioml.models.schedules import WarmupCosine, warmup_cosine_factor
from audioml.run.fit import compose as run_compose
from audioml.run.fit import resume
from audioml.run.fit.checkpointing import AtomicCheckpointIO, find_resume_checkpoint
from audioml.run.rundir import RunDir


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # SpecAugment-style time masking on (as wav2vec2 fine-tunes): resume must reproduce its draws
    return save_encoder(tmp_path_factory.mktemp("w2v") / "w2v", "wav2vec2")


def finetune_config(folder, output, *overrides):
    return compose(["data=synthetic", "data.clips_per_class=8", "data.seconds=0.5", "data.batch_size=4",
                    "model=hf_encoder", f"model.backbone.name={folder}", "model.freeze=top:1",
                    "model.backbone.layer_lr_decay=0.5", "scheduler=warmup_cosine", "model.optimizer.lr=1e-3",
                    "+model.backbone.config={mask_time_prob:0.2,mask_time_length:2}",
                    f"paths.output_dir={output}", *overrides])


def test_warmup_cosine_factor() -> None:
    assert [warmup_cosine_factor(s, 10, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine_factor(4, 10, 4) == 1.0
    assert math.isclose(warmup_cosine_factor(7, 10, 4), 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert warmup_cosine_factor(10, 10, 4, min_factor=0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(50, 10, 4, min_factor=0.1) == pytest.approx(0.1)
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": parameters[:1], "lr": 1.0}, {"params": parameters[1:], "lr": 0.25}])
    schedule = WarmupCosine(optimizer, warmup=0.2)
    schedule.set_total_steps(10)  # what the task module does when the fit starts
    rates = []
    for _ in range(10):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    assert rates[0] == [0.5, 0.125] and rates[1] == [1.0, 0.25]  # each group keeps its own base rate
    with pytest.raises(ValueError, match="optimiser steps"):
        WarmupCosine(optimizer, total_steps=0)


def test_top_blocks_feature_encoder_and_layer_wise_decay(folder, tmp_path) -> None:
    cfg = finetune_config(folder, tmp_path)
    model = run_compose.build_model(cfg, ["a", "b", "c"])
    backbone = model.backbone
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.encoder.layers.1.", "model.encoder.layer_norm.", "head."))
                             for n in trainable)
    assert any(n.startswith("model.encoder.layers.1.") for n in trainable)
    groups = backbone.optimizer_groups()
    assert [scale for scale, _ in groups] == [0.5, 1.0]  # block 2 of 2: 0.5 ** (2 + 1 - 2); after it and head: 1
    backbone.freeze("none")  # every block, the feature encoder still frozen
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if n.startswith("model.feature_extractor."))
    scales = [scale for scale, _ in backbone.optimizer_groups()]
    assert scales == [0.125, 0.25, 0.5, 1.0]  # before the blocks, block 1, block 2, after + head
    optimizer = model._optimizer()
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3 * s for s in scales]
    backbone.freeze("top:0")
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == {n for n, _ in
                                                                             backbone.head.named_parameters(prefix="head")}
    with pytest.raises(ValueError, match="top:<n> with n in 0..2"):
        backbone.freeze("top:3")


def test_gradient_checkpointing_gives_the_same_gradients(folder, tmp_path) -> None:
    grads = []
    for checkpointing in (False, True):
        cfg = finetune_config(folder, tmp_path, "model.freeze=none",
                              f"model.backbone.gradient_checkpointing={str(checkpointing).lower()}")
        torch.manual_seed(0)
        model = run_compose.build_model(cfg, ["a", "b", "c"]).train()
        waveform = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)
        np.random.seed(5)  # transformers draws its time masks with NumPy
        model(waveform).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)




def _fit(cfg, run_dir, interrupt=None):
    L.seed_everything(cfg.seed, workers=True)
    datamodule = run_compose.build_datamodule(cfg)
    model = run_compose.build_model(cfg, datamodule.class_names, datamodule.train_class_counts())
    run = RunDir(run_dir)
    callbacks = [resume.ResumeCheckpoint(run.checkpoints, every_n_train_steps=2, every_n_epochs=1)]
    if interrupt is not None:
        callbacks.append(CrashAtBatch(*interrupt))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=callbacks, deterministic=True,
                        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                        plugins=[AtomicCheckpointIO()])
    start = find_resume_checkpoint(run)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(start) if start else None)
    except RuntimeError as error:
        assert "simulated preemption" in str(error)
    return model, trainer


def test_an_interrupted_fine_tuning_fit_continues_exactly(folder, tmp_path) -> None:
    cfg = finetune_config(folder, tmp_path)
    reference, trainer = _fit(cfg, tmp_path / "reference")
    assert trainer.global_step > 4
    _fit(cfg, tmp_path / "interrupted", interrupt=(1, 1))
    assert find_resume_checkpoint(RunDir(tmp_path / "interrupted")) is not None
    continued, trainer = _fit(cfg, tmp_path / "interrupted")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, continued.state_dict()[name]), name
    rates = [group["lr"] for group in trainer.optimizers[0].param_groups]
    assert rates[0] == pytest.approx(0.5 * rates[1])  # the decayed group kept its scale through the resume


@pytest.mark.slow  # two DDP processes, then a bf16 run (about a minute of CPU)
@pytest.mark.parametrize("trainer", [["trainer=ddp_cpu"], ["trainer.precision=bf16-mixed", "trainer.accelerator=cpu"]],
                         ids=["ddp_cpu", "bf16-mixed"])
def test_the_recipe_runs_under_ddp_and_mixed_precision(trainer, folder, tmp_path) -> None:
    run_entry_point("audioml.train", "data=synthetic", "data.clips_per_class=8", "data.seconds=0.5",
                    "data.batch_size=4", "model=hf_encoder", f"model.backbone.name={folder}", "model.freeze=top:1",
                    "model.backbone.layer_lr_decay=0.8", "scheduler=warmup_cosine", "trainer.max_epochs=2",
                    "evaluation.bootstrap_samples=0", f"paths.output_dir={tmp_path}", *trainer)
    (run_dir,) = find_run_dirs(tmp_path)
    metrics = read_metrics(run_dir)
    assert math.isfinite(metrics["test/macro_f1"]) and (run_dir / "layer_weights.csv").is_file()
