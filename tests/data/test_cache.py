"""Waveform cache: reuse without decoding, invalidation, cached failures, concurrent builders,
no torn entries, cheap pickling for DataLoader workers, DataLoader defaults."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audioml.data.base as base
import audioml.data.decoder as decoder_module
from audioml.data import audio
from audioml.data.base import default_num_workers
from audioml.data.cache import ArrayCache, WaveformCache, reopen, reopenable
from audioml.data.synthetic import SyntheticDataModule, generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
GENERATOR = dict(num_classes=2, clips_per_class=6, num_groups=4, seconds=0.25, learnable=True)


@pytest.fixture()
def audio_root(tmp_path: Path) -> Path:
    return generate_synthetic_dataset(tmp_path / "audio", sample_rate=16000, **GENERATOR)


@pytest.fixture()
def decode_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the DataModule decodes, in call order (wraps the real decoder)."""
    calls: list[str] = []
    real = decoder_module.load_audio

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decoder_module, "load_audio", counting)
    return calls


def make_datamodule(root: Path, cache_dir: Path, **overrides) -> SyntheticDataModule:
    kwargs = dict(root=root, cache_dir=cache_dir, sample_rate=8000, batch_size=4, seed=0, **GENERATOR)
    kwargs.update(overrides)
    datamodule = SyntheticDataModule(**kwargs)
    datamodule.setup("fit")
    return datamodule


def test_second_run_reuses_cache_without_decoding(audio_root, tmp_path, decode_counter):
    first = make_datamodule(audio_root, tmp_path / "cache")
    n_clips = len(first.manifest)
    assert first.waveform_cache.status == "built"
    assert len(decode_counter) == n_clips == first.waveform_cache.decode_calls
    decode_counter.clear()
    second = make_datamodule(audio_root, tmp_path / "cache")
    assert second.waveform_cache.status == "hit"
    assert decode_counter == [] and second.waveform_cache.decode_calls == 0
    np.testing.assert_array_equal(np.asarray(first.dataset("all")[3][0]), np.asarray(second.dataset("all")[3][0]))
    # The clip really is the decoded file: resampled to 8 kHz, padded to 0.25 s.
    expected = audio.fix_length(audio.load_audio(first.manifest.loc[3, "path"], 8000), 2000)
    np.testing.assert_allclose(second.dataset("all")[3][0].numpy(), expected, atol=1e-6)
    assert len(list((tmp_path / "cache").glob("waveforms-*.npy"))) == 1


def test_changed_file_invalidates_cache(audio_root, tmp_path, decode_counter):
    first = make_datamodule(audio_root, tmp_path / "cache")
    changed = Path(first.manifest.loc[0, "path"])
    louder = np.clip(sf.read(changed, dtype="float32")[0] * 3.0, -1, 1)
    sf.write(changed, louder, 16000, subtype="PCM_16")
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime surely differs
    decode_counter.clear()
    second = make_datamodule(audio_root, tmp_path / "cache")
    assert second.waveform_cache.key != first.waveform_cache.key
    assert second.waveform_cache.status == "built"
    assert len(decode_counter) == len(second.manifest)
    old, new = first.dataset("all")[0][0].numpy(), second.dataset("all")[0][0].numpy()
    assert np.abs(new).max() > 2.0 * np.abs(old).max()


@pytest.mark.parametrize("setting", [{"sample_rate": 16000}, {"clip_seconds": 0.5}, {"pad_mode": "center"}])
def test_changed_setting_invalidates_cache(audio_root, tmp_path, decode_counter, setting):
    first = make_datamodule(audio_root, tmp_path / "cache")
    decode_counter.clear()
    second = make_datamodule(audio_root, tmp_path / "cache", **setting)
    assert second.waveform_cache.key != first.waveform_cache.key
    assert second.waveform_cache.status == "built" and len(decode_counter) == len(second.manifest)
    assert second.dataset("all")[0][0].shape[0] == second.num_samples


def test_failures_are_cached_too(audio_root, tmp_path, decode_counter):
    broken = audio_root / "class_1" / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    manifest = audio_root / "manifest.csv"
    manifest.write_text(manifest.read_text() + "class_1/broken.wav,1,g000,1\n")
    first = make_datamodule(audio_root, tmp_path / "cache")
    assert list(first.skipped["path"]) == [str(broken)]
    decode_counter.clear()
    second = make_datamodule(audio_root, tmp_path / "cache")
    assert decode_counter == []
    assert list(second.skipped["path"]) == [str(broken)]
    assert second.skipped["reason"].iloc[0] == first.skipped["reason"].iloc[0]
    assert len(second.manifest) == len(first.manifest) == 12


def test_interrupted_build_leaves_no_entry(tmp_path):
    cache = WaveformCache(tmp_path, "k1")

    def decode(index: int) -> np.ndarray:
        if index == 3:
            raise KeyboardInterrupt  # a killed builder: not an item failure
        return np.full(5, index, dtype=np.float32)

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(6, 5, decode, progress=False)
    assert not cache.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["waveforms-k1.lock"]
    array, failures = WaveformCache(tmp_path, "k1").get_or_build(
        6, 5, lambda i: np.full(5, i, dtype=np.float32), progress=False)
    assert failures == {} and array[5, 0] == 5


def test_corrupt_entry_is_rebuilt(tmp_path):
    cache = WaveformCache(tmp_path, "k2")
    cache.get_or_build(4, 3, lambda i: np.full(3, i, dtype=np.float32), progress=False)
    cache.array_path.write_bytes(cache.array_path.read_bytes()[:60])  # truncated by a crash/disk
    again = WaveformCache(tmp_path, "k2")
    array, _ = again.get_or_build(4, 3, lambda i: np.full(3, 10 + i, dtype=np.float32), progress=False)
    assert again.status == "built" and again.decode_calls == 4 and array[2, 0] == 12


def test_memory_cache_without_cache_dir():
    cache = ArrayCache(None, "waveforms", "k")
    array, meta = cache.get_or_build((3, 2), lambda out: out.fill(1.5) or {"n": 3})
    assert cache.status == "memory" and meta == {"n": 3} and array.sum() == 9.0


_BUILDER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from audioml.data.audio import fix_length, load_audio
    from audioml.data.cache import WaveformCache

    root, cache_dir, start_at, out = sys.argv[1:5]
    paths = sorted(str(p) for p in Path(root).glob("class_*/*.wav"))
    def decode(index):  # the real decoder, slowed down to widen the race window (~0.6 s)
        time.sleep(0.05)
        return fix_length(load_audio(paths[index], 8000), 2000)
    cache = WaveformCache(cache_dir, "same-key")
    while time.time() < float(start_at):
        time.sleep(0.002)
    array, failures = cache.get_or_build(len(paths), 2000, decode, progress=False)
    json.dump({"status": cache.status, "decode_calls": cache.decode_calls, "failures": len(failures),
               "checksum": float(np.abs(array).sum(dtype=np.float64))}, open(out, "w"))
""")


def test_two_concurrent_builders_produce_one_valid_cache(audio_root, tmp_path):
    cache_dir = tmp_path / "cache"
    start_at = time.time() + 3.0  # both interpreters are up by then; they start building together
    processes = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(audio_root), str(cache_dir),
                                   str(start_at), str(tmp_path / f"builder{i}.json")], cwd=REPO)
                 for i in range(2)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    results = [json.loads((tmp_path / f"builder{i}.json").read_text()) for i in range(2)]
    statuses = sorted(r["status"] for r in results)
    assert statuses.count("built") == 1 and set(statuses) <= {"built", "waited", "hit"}
    assert sum(r["decode_calls"] for r in results) == 12  # every clip decoded exactly once
    assert [r["failures"] for r in results] == [0, 0]
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"]) and results[0]["checksum"] > 0
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".lock", ".npy"]  # no temp leftovers
    array = np.load(next(cache_dir.glob("*.npy")))
    assert array.shape == (12, 2000)
    assert np.abs(array).sum(dtype=np.float64) == pytest.approx(results[0]["checksum"])


def test_dataset_pickles_as_file_reference(audio_root, tmp_path):
    datamodule = make_datamodule(audio_root, tmp_path / "cache")
    dataset = datamodule.dataset("train")
    payload = pickle.dumps(dataset)
    assert len(payload) < 10_000  # the 12 x 2000 cache itself is 96 kB
    clone = pickle.loads(payload)
    for item in range(len(dataset)):
        np.testing.assert_array_equal(clone[item][0].numpy(), dataset[item][0].numpy())
    plain = np.arange(6.0)
    np.testing.assert_array_equal(reopen(reopenable(plain)), plain)
    view = np.load(datamodule.waveform_cache.array_path, mmap_mode="r")[1:3]
    np.testing.assert_array_equal(reopen(reopenable(view)), view)  # views travel as arrays


def test_loader_defaults(audio_root, tmp_path):
    assert default_num_workers("cpu", cpu_count=16) == 0
    assert default_num_workers("cuda", cpu_count=16) == 4
    assert default_num_workers("cuda", cpu_count=2) == 1
    datamodule = make_datamodule(audio_root, tmp_path / "cache", num_workers="auto")
    loader = datamodule.train_dataloader()
    expected_workers = default_num_workers("cuda" if base.torch.cuda.is_available() else "cpu")
    assert loader.num_workers == expected_workers
    assert loader.pin_memory == base.torch.cuda.is_available()
    assert make_datamodule(audio_root, tmp_path / "cache", num_workers=2).train_dataloader().persistent_workers
    with pytest.raises(ValueError, match="num_workers"):
        make_datamodule(audio_root, tmp_path / "cache", num_workers="many")


def test_loaders_read_whole_batches_equal_to_collated_items(audio_root, tmp_path):
    datamodule = make_datamodule(audio_root, tmp_path / "cache", batch_size=3)
    loader = datamodule.val_dataloader()
    assert isinstance(loader.dataset, base.BatchedWaveformDataset)
    waveforms, targets = map(base.torch.cat, zip(*loader))
    items = datamodule.dataset("val")
    expected = base.default_collate([items[i] for i in range(len(items))])
    assert base.torch.equal(waveforms, expected[0]) and base.torch.equal(targets, expected[1])
    assert targets.dtype == expected[1].dtype
    # Offline-augmented copies live past the cached rows; a batch may mix both.
    array = np.arange(40, dtype=np.float32).reshape(8, 5)
    extra = -np.arange(10, dtype=np.float32).reshape(2, 5)
    view = base._RowView(array, np.array([1, 3, 5, 7]), extra)
    mixed = base.BatchedWaveformDataset(view, np.arange(6), np.array([5, 0, 4, 2]))
    batch = mixed.__getitems__([0, 1, 2, 3])
    reference = base.default_collate([mixed[i] for i in range(4)])
    assert base.torch.equal(batch[0], reference[0]) and base.torch.equal(batch[1], reference[1])
