"""Waveform and spectrogram augmentation: contracts (shape, dtype, device, identity at p=0),
seeded reproducibility, and numerics against references on synthetic signals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audioml import augment as A
from audioml.config import CONFIG_DIR

SAMPLE_RATE = 8000
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def sound_folders(tmp_path_factory):
    """A folder with one noise file and one with an impulse response (direct sound + echo)."""
    root = tmp_path_factory.mktemp("augment_files")
    (root / "noise").mkdir()
    (root / "ir").mkdir()
    rng = np.random.default_rng(0)
    sf.write(root / "noise" / "hiss.wav", (0.1 * rng.standard_normal(3000)).astype(np.float32), SAMPLE_RATE)
    response = np.zeros(400, np.float32)
    response[25], response[300] = 1.0, 0.4
    sf.write(root / "ir" / "room.wav", response, SAMPLE_RATE)
    return root


def make_waveform_transforms(p: float, folders) -> list[torch.nn.Module]:
    return [A.AddGaussianNoise(p=p), A.ClippingDistortion(p=p), A.TimeStretch(p=p), A.PitchShift(p=p),
            A.Gain(p=p), A.PolarityInversion(p=p), A.Shift(p=p), A.AddColoredNoise(sample_rate=SAMPLE_RATE, p=p),
            A.AddBackgroundNoise(folders / "noise", SAMPLE_RATE, p=p),
            A.ApplyImpulseResponse(folders / "ir", SAMPLE_RATE, p=p)]


def batch(device: str, dtype=torch.float32, n: int = 4, length: int = 4000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    time = torch.arange(length) / SAMPLE_RATE
    tones = torch.stack([0.3 * torch.sin(2 * math.pi * (200 + 50 * i) * time) for i in range(n)])
    return (tones + 0.01 * torch.randn(n, length, generator=generator)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_waveform_transforms_keep_shape_dtype_device_and_change_the_signal(sound_folders, device):
    x = batch(device)
    for transform in make_waveform_transforms(1.0, sound_folders):
        y = transform.to(device)(x)
        name = type(transform).__name__
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, name
        assert torch.isfinite(y).all(), name
        assert not torch.equal(y, x), f"{name} at p=1 left the batch unchanged"


def test_half_precision_input_keeps_its_dtype(sound_folders):
    x = batch("cpu", dtype=torch.float16)
    for transform in make_waveform_transforms(1.0, sound_folders):
        assert transform(x).dtype == torch.float16, type(transform).__name__


@pytest.mark.parametrize("device", DEVICES)
def test_every_transform_is_identity_at_probability_zero(sound_folders, device):
    x = batch(device)
    spec = torch.randn(3, 1, 16, 40, device=device)
    for transform in make_waveform_transforms(0.0, sound_folders):
        assert torch.equal(transform.to(device)(x), x), type(transform).__name__
    assert torch.equal(A.SpecAugment(p=0.0)(spec), spec)
    chain = A.AugmentationChain(make_waveform_transforms(0.0, sound_folders), seed=3).to(device)
    assert torch.equal(chain(x), x)
    mixed, soft = A.Mixup(alpha=0.4, p=0.0, seed=1)(spec, torch.tensor([0, 1, 2], device=device), 3)
    assert torch.equal(mixed, spec)
    assert torch.equal(soft, torch.eye(3, device=device))


def test_unselected_examples_are_returned_bit_for_bit():
    torch.manual_seed(0)
    x = batch("cpu", n=64)
    y = A.AddGaussianNoise(p=0.5)(x)
    changed = (y != x).any(dim=1)
    assert 10 < int(changed.sum()) < 54  # about half were selected
    assert torch.equal(y[~changed], x[~changed])


def test_seeded_chain_is_reproducible_and_seed_dependent(sound_folders):
    x = batch("cpu")

    def run(seed: int) -> list[torch.Tensor]:
        chain = A.AugmentationChain(make_waveform_transforms(0.5, sound_folders), seed=seed)
        torch.manual_seed(seed + 100)  # the global stream must not matter
        return [chain(x) for _ in range(3)]

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.equal(first[0], first[1])  # a new draw for every batch


def test_seeded_chain_leaves_the_global_generator_alone(sound_folders):
    chain = A.AugmentationChain(make_waveform_transforms(1.0, sound_folders), seed=0)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    chain(batch("cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_invalid_settings_raise_helpful_errors(tmp_path):
    with pytest.raises(ValueError, match="must be in"):
        A.Gain(p=1.5)
    with pytest.raises(ValueError, match="larger than max"):
        A.TimeStretch(min_rate=1.2, max_rate=0.9)
    with pytest.raises(FileNotFoundError, match="no audio files"):
        A.AddBackgroundNoise(tmp_path, SAMPLE_RATE)
    with pytest.raises(ValueError, match="alpha"):
        A.Mixup(alpha=0.0)


def test_batched_phase_vocoder_matches_torchaudio():
    """Each example's stretch equals torchaudio's single-rate phase vocoder (the reference)."""
    import torchaudio.functional as F

    from audioml.augment.waveform import _phase_vocoder, _stft

    x = batch("cpu", n=2, length=6000)
    spec = _stft(x, 512, 128)
    advance = torch.linspace(0, math.pi * 128, spec.shape[1])[..., None]
    rates = torch.tensor([0.8, 1.3])
    for row, rate in enumerate(rates.tolist()):
        reference = F.phase_vocoder(spec[row:row + 1], rate, advance)
        ours = _phase_vocoder(spec, rates, 128, reference.shape[-1])[row:row + 1]
        assert torch.allclose(ours, reference, atol=1e-3 * reference.abs().max())


def dominant_frequency(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(signal))


def test_time_stretch_keeps_pitch_and_pitch_shift_moves_it():
    time = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = torch.tensor(np.sin(2 * np.pi * 440 * time), dtype=torch.float32)[None].repeat(2, 1)
    stretched = A.time_stretch(tone, torch.tensor([0.8, 1.25]))
    for row in range(2):
        assert dominant_frequency(stretched[row, 2000:10000].numpy()) == pytest.approx(440, abs=5)
    # Sped up by 1.25: the last fifth of the clip is silence.
    assert stretched[1, -2000:].abs().max() < 0.05 * stretched[1, :2000].abs().max()
    shifted = A.pitch_shift(tone, torch.tensor([12.0, -5.0]))
    assert dominant_frequency(shifted[0, 2000:-2000].numpy()) == pytest.approx(880, abs=8)
    assert dominant_frequency(shifted[1, 2000:-2000].numpy()) == pytest.approx(440 * 2 ** (-5 / 12), abs=8)


def test_clipping_distortion_clips_the_drawn_share_of_samples():
    x = torch.randn(8, 10000)
    y = A.ClippingDistortion(min_percentile_threshold=20, max_percentile_threshold=20, p=1.0)(x)
    clipped = (y != x).float().mean(dim=1)
    assert torch.allclose(clipped, torch.full((8,), 0.2), atol=0.01)
    assert (y.amax(dim=1) < x.amax(dim=1)).all()


def test_background_noise_is_added_at_the_drawn_snr(sound_folders):
    x = batch("cpu", n=6)
    y = A.AddBackgroundNoise(sound_folders / "noise", SAMPLE_RATE, min_snr_db=10, max_snr_db=10, p=1.0)(x)
    noise = y - x
    snr = 20 * torch.log10(x.pow(2).mean(1).sqrt() / noise.pow(2).mean(1).sqrt())
    assert torch.allclose(snr, torch.full((6,), 10.0), atol=0.01)


def test_impulse_response_with_delay_compensation_keeps_the_direct_sound(tmp_path):
    response = np.zeros(200, np.float32)
    response[40] = 1.0  # a pure delay
    sf.write(tmp_path / "delay.wav", response, SAMPLE_RATE)
    x = batch("cpu")
    compensated = A.ApplyImpulseResponse(tmp_path, SAMPLE_RATE, compensate_delay=True, p=1.0)(x)
    delayed = A.ApplyImpulseResponse(tmp_path, SAMPLE_RATE, compensate_delay=False, p=1.0)(x)
    assert torch.allclose(compensated, x, atol=1e-4)
    # Without compensation the clip arrives 40 samples late (level rescaled to the input's RMS).
    assert delayed[:, :40].abs().max() < 1e-4
    assert torch.allclose(delayed[:, 40:], x[:, :-40], rtol=0.02, atol=2e-3)


def test_specaugment_masks_bands_within_the_limits():
    spec = torch.randn(16, 1, 32, 100) + 5.0
    out = A.SpecAugment(freq_mask_param=6, time_mask_param=10, num_freq_masks=1, num_time_masks=1,
                        fill="mean", p=1.0)(spec)
    masked = out != spec
    freq_rows = masked.all(dim=3).squeeze(1)  # (batch, mels): whole mel rows masked
    time_cols = masked.all(dim=2).squeeze(1)  # (batch, frames)
    assert (freq_rows.sum(dim=1) <= 6).all() and (time_cols.sum(dim=1) <= 10).all()
    assert freq_rows.any() and time_cols.any()
    for example in range(16):  # masked cells hold the example's mean
        values = out[example][masked[example]]
        if values.numel():
            assert torch.allclose(values, spec[example].mean().expand_as(values))


def test_mixup_mixes_inputs_and_targets_consistently_and_reproducibly():
    inputs = torch.eye(6)  # example i is the unit vector e_i: the mix reveals lam and the partner
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, soft = A.Mixup(alpha=1.0, p=1.0, seed=4)(inputs, targets, 3)
    again, soft_again = A.Mixup(alpha=1.0, p=1.0, seed=4)(inputs, targets, 3)
    assert torch.equal(mixed, again) and torch.equal(soft, soft_again)
    assert not torch.equal(mixed, inputs)
    one_hot = torch.nn.functional.one_hot(targets, 3).float()
    for i in range(6):
        lam = mixed[i, i]
        others = mixed[i].clone()
        others[i] = 0
        partner = int(others.argmax()) if others.max() > 0 else i
        expected = lam * one_hot[i] + (1 - lam) * one_hot[partner] if partner != i else one_hot[i]
        assert torch.allclose(soft[i], expected, atol=1e-6)
    assert torch.allclose(soft.sum(dim=1), torch.ones(6))


def test_chain_is_an_ordinary_module_that_moves_its_buffers(sound_folders):
    chain = A.AugmentationChain([A.AddBackgroundNoise(sound_folders / "noise", SAMPLE_RATE, p=1.0)], seed=0)
    assert chain.to(torch.float64) is chain
    assert chain.transforms[0].bank.dtype == torch.float64
    assert chain.state_dict() == {}  # noise banks are not saved into checkpoints


RECIPES = sorted(p.stem for p in (Path(CONFIG_DIR) / "augmentation").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_instantiates_and_keeps_batch_shapes(recipe, sound_folders):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [f"augmentation={recipe}", "data=synthetic"]
    if recipe == "noise_ir":
        overrides += [f"augmentation.noise_dir={sound_folders / 'noise'}", f"augmentation.ir_dir={sound_folders / 'ir'}"]
    with initialize_config_dir(str(Path(CONFIG_DIR)), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    recipe_cfg = cfg.augmentation
    waveform = batch("cpu", n=3, length=8000)
    spec = torch.randn(3, 1, 64, 50)
    built = 0
    if recipe_cfg.get("waveform"):
        chain = instantiate(recipe_cfg.waveform)
        assert chain(waveform).shape == waveform.shape and chain.seed == cfg.seed
        built += 1
    if recipe_cfg.get("spectrogram"):
        assert instantiate(recipe_cfg.spectrogram)(spec).shape == spec.shape
        built += 1
    if recipe_cfg.get("mixup"):
        mixed, soft = instantiate(recipe_cfg.mixup)(spec, torch.tensor([0, 1, 2]), 3)
        assert mixed.shape == spec.shape and soft.shape == (3, 3)
        built += 1
    if recipe_cfg.get("offline"):
        offline = instantiate(recipe_cfg.offline)
        copies, source, _ = offline.augment(waveform.numpy(), np.array([0, 0, 1]), ["x", "y"])
        assert copies.shape[1] == waveform.shape[1] and set(source) <= {0, 1, 2}
        built += 1
    assert built > 0 or recipe == "none"
