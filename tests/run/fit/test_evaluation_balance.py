"""Class balance from the training split: class weights, WeightedRandomSampler, oversampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from audioml.data.synthetic import SyntheticDataModule
from audioml.losses import CrossEntropyLoss, class_weights_from_counts


class ImbalancedSynthetic(SyntheticDataModule):
    """Synthetic tones with classes kept at 100 %, 40 % and 15 % of their clips."""

    def build_manifest(self) -> pd.DataFrame:
        manifest = super().build_manifest()
        keep = {0: 1.0, 1: 0.4, 2: 0.15}
        parts = [rows.iloc[: max(2, int(len(rows) * keep[label]))] for label, rows in manifest.groupby("target")]
        return pd.concat(parts).reset_index(drop=True)


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    root = tmp_path_factory.mktemp("balance")

    def build(balance):
        data = ImbalancedSynthetic(root=root / "synthetic", num_classes=3, clips_per_class=40, num_groups=30,
                                   seconds=0.25, sample_rate=8000, val_fraction=0.2, test_fraction=0.2,
                                   seed=0, batch_size=16, num_workers=0, cache_dir=root / "cache", balance=balance)
        data.setup("fit")
        return data

    return build


def train_labels(data) -> np.ndarray:
    return data.manifest["target"].to_numpy()[data.split_indices["train"]]


def test_class_counts_and_weights_come_from_the_training_split(module):
    data = module(None)
    counts = data.train_class_counts()
    assert counts == np.bincount(train_labels(data), minlength=3).tolist()
    assert counts[0] > counts[1] > counts[2] > 0
    weights = class_weights_from_counts(counts).numpy()
    assert np.allclose(weights, sum(counts) / (3 * np.asarray(counts)))
    assert np.allclose((weights * counts).sum(), sum(counts))  # mean weight per clip is 1
    # The weighted loss uses exactly these weights.
    loss = CrossEntropyLoss(weighting="balanced", class_counts=counts)
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    expected = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor(weights, dtype=torch.float32))
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_sampler_probabilities_match_inverse_class_counts(module):
    data = module("sampler")
    counts = np.asarray(data.train_class_counts())
    weights = data.train_sample_weights()
    labels = train_labels(data)
    assert np.allclose(weights, 1.0 / counts[labels])
    probability = weights / weights.sum()
    per_class = np.bincount(labels, weights=probability, minlength=3)
    assert np.allclose(per_class, 1 / 3)  # every class is drawn equally often in expectation
    sampler = data.train_dataloader().sampler
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler)
    assert np.allclose(sampler.weights.numpy() / sampler.weights.sum().item(), probability)
    epochs = []
    for epoch in range(60):  # the trainer sets the epoch; each epoch is a new draw
        sampler.set_epoch(epoch)
        epochs.append(labels[list(iter(sampler))])
    assert not np.array_equal(epochs[0], epochs[1])
    draws = np.concatenate(epochs)
    frequencies = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(frequencies, 1 / 3, atol=0.04)


def test_oversampling_repeats_minority_clips_up_to_the_majority_count(module):
    data = module("oversample")
    counts = data.train_class_counts()
    dataset = data.train_dataloader().dataset
    targets = data.manifest["target"].to_numpy()[dataset.indices]
    assert np.bincount(targets, minlength=3).tolist() == [max(counts)] * 3
    assert set(dataset.indices) == set(data.split_indices["train"])  # only training clips, all of them
