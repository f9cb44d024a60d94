"""Under bf16 mixed precision the head's logits are bfloat16: what a classifier keeps of its test
(for the honest scores, calibration and reports), its probabilities and its predictions are
float32 all the same (NumPy takes no bfloat16; a bf16-mixed run failed after its fit)."""

from __future__ import annotations

import torch

from audioml.features import LogMel
from audioml.models.backbones.cnn import ScratchCNN
from audioml.models.classifier import AudioClassifier


def test_test_probabilities_and_predictions_are_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = AudioClassifier(ScratchCNN(channels=(4,), dense=8), LogMel(sample_rate=16000, n_mels=32), num_classes=3)
    waveform, target = 0.1 * torch.randn(4, 8000), torch.tensor([0, 1, 2, 0])
    model.on_test_epoch_start()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(waveform).dtype == torch.bfloat16
        model.test_step((waveform, target), 0)
        predicted = model.predict_step((waveform,), 0)
    logits, _ = model._test_buffers[0]
    assert logits.dtype == predicted.dtype == torch.float32 and logits.numpy().shape == (4, 3)
    assert torch.allclose(predicted.sum(1), torch.ones(4), atol=1e-5)
