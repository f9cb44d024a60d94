"""Offline augmentation: copy plans, train-split-only augmentation, and the once-written cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioml.augment import OfflineAugmentation, RandomTransform, copies_per_clip
from audioml.data.synthetic import SyntheticDataModule


class RecordingHalfGain(RandomTransform):
    """Halves the signal and keeps every waveform it was given (to check what it saw)."""

    def __init__(self) -> None:
        super().__init__(p=1.0)
        self.seen: list[np.ndarray] = []

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.extend(x.numpy().copy())
        return 0.5 * x + 0.001 * torch.randn_like(x)


def datamodule(tmp_path, offline=None, **kwargs) -> SyntheticDataModule:
    settings = dict(num_classes=3, clips_per_class=10, num_groups=10, seconds=0.25, sample_rate=8000,
                    val_fraction=0.2, test_fraction=0.2, seed=0, batch_size=8, num_workers=0,
                    cache_dir=tmp_path / "cache")
    settings.update(kwargs)
    module = SyntheticDataModule(root=tmp_path / "synthetic", offline_augmentation=offline, **settings)
    module.setup("fit")
    return module


def test_copy_plans():
    labels = np.array([0] * 10 + [1] * 3 + [2])
    assert copies_per_clip(labels, 3, copies=2).tolist() == [2] * 14
    plan = copies_per_clip(labels, 3, copies=1, class_copies={2: 4})
    assert plan[labels == 2].tolist() == [4] and (plan[labels != 2] == 1).all()
    balanced = copies_per_clip(labels, 3, copies=0, class_copies="balance", max_copies=5, seed=1)
    totals = np.bincount(labels, weights=1 + balanced, minlength=3)
    assert totals.tolist() == [10, 10, 6]  # class 2 capped at 5 copies of its single clip
    assert set(balanced[labels == 1].tolist()) <= {2, 3}  # 7 extra spread over 3 clips
    doubled = copies_per_clip(labels, 3, copies=1, class_copies="balance", max_copies=20)
    assert np.bincount(labels, weights=1 + doubled).tolist() == [20, 20, 20]
    with pytest.raises(ValueError, match="balance"):
        copies_per_clip(labels, 3, class_copies="equalise")


def test_offline_copies_come_from_training_clips_only_and_leave_val_test_untouched(tmp_path):
    plain = datamodule(tmp_path)
    recorder = RecordingHalfGain()
    augmented = datamodule(tmp_path, OfflineAugmentation([recorder], copies=2, seed=3, batch_size=7))
    for split in ("val", "test"):
        assert np.array_equal(plain.split_indices[split], augmented.split_indices[split])
        ours, theirs = augmented.dataset(split), plain.dataset(split)
        for item in range(len(ours)):
            assert torch.equal(ours[item][0], theirs[item][0]) and ours[item][1] == theirs[item][1]
    n_train = len(plain.split_indices["train"])
    train = augmented.split_manifest("train")
    assert len(train) == 3 * n_train
    assert sorted(train["augmented_copy"].value_counts().to_dict().items()) == [(0, n_train), (1, n_train), (2, n_train)]
    train_paths = set(plain.split_manifest("train")["path"])
    held_out_paths = set(plain.split_manifest("val")["path"]) | set(plain.split_manifest("test")["path"])
    assert set(train["path"]) == train_paths and not set(train["path"]) & held_out_paths
    # The transform saw training waveforms only, each exactly twice (two copies).
    train_waveforms = {plain.dataset("train")[i][0].numpy().tobytes() for i in range(n_train)}
    held_out = {plain.dataset(s)[i][0].numpy().tobytes() for s in ("val", "test") for i in range(len(plain.dataset(s)))}
    seen = [w.tobytes() for w in recorder.seen]
    assert len(seen) == 2 * n_train and set(seen) == train_waveforms and not set(seen) & held_out
    # Copies carry their original's target and differ from it.
    dataset = augmented.dataset("train")
    original_position = {path: i for i, (path, copy) in enumerate(zip(train["path"], train["augmented_copy"]))
                         if copy == 0}
    for position in range(n_train, 3 * n_train):
        waveform, target = dataset[position]
        source_waveform, source_target = dataset[original_position[train["path"][position]]]
        assert target == source_target and not torch.equal(waveform, source_waveform)
    assert augmented.train_class_counts() == [3 * c for c in plain.train_class_counts()]


def test_offline_copies_are_written_once_and_reused(tmp_path):
    first = OfflineAugmentation([RecordingHalfGain()], copies=1, seed=5)
    module = datamodule(tmp_path, first)
    files = sorted((tmp_path / "cache").glob("*offline*.npy"))
    assert first.batches_computed > 0 and len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = OfflineAugmentation([RecordingHalfGain()], copies=1, seed=5)
    again = datamodule(tmp_path, second)
    assert second.batches_computed == 0 and second.transforms[0].seen == []
    assert sorted((tmp_path / "cache").glob("*offline*.npy")) == files
    assert files[0].stat().st_mtime_ns == stamp
    rows = module.split_indices["train"]
    assert all(torch.equal(module.dataset("train")[i][0], again.dataset("train")[i][0]) for i in range(len(rows)))
    # A different seed is a different set of copies: a new file.
    datamodule(tmp_path, OfflineAugmentation([RecordingHalfGain()], copies=1, seed=6))
    assert len(sorted((tmp_path / "cache").glob("*offline*.npy"))) == 2


def test_balanced_offline_augmentation_equalises_training_counts(tmp_path):
    from audioml.augment import Gain

    module = datamodule(tmp_path, OfflineAugmentation([Gain(p=1.0)], copies=0, class_copies="balance",
                                                      max_copies=10, seed=0))
    counts = module.train_class_counts()
    assert len(set(counts)) == 1, counts


def test_unknown_class_name_in_class_copies_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown classes"):
        datamodule(tmp_path, OfflineAugmentation([RecordingHalfGain()], class_copies={"cats": 2}))


def test_offline_copies_are_seed_reproducible_without_a_cache():
    from audioml.augment import AddGaussianNoise, PitchShift

    waveforms = np.random.default_rng(0).normal(scale=0.1, size=(6, 2000)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2])

    def copies(seed: int) -> np.ndarray:
        offline = OfflineAugmentation([PitchShift(p=0.5), AddGaussianNoise(p=1.0)], copies=2, seed=seed, batch_size=4)
        return offline.augment(waveforms, labels, ["x", "y", "z"], cache_dir=None)[0]

    first = copies(1)
    assert first.shape == (12, 2000) and np.array_equal(first, copies(1))
    assert not np.array_equal(first, copies(2))
