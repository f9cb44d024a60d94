"""openSMILE feature sets (``descriptors=egemaps | compare``): the values are openSMILE's own
(``opensmile.Smile(...).process_signal`` called directly), tables are cached like the other
feature tables, a clip openSMILE gives nothing for is listed, and a missing extra says how to
install it (in the library and as the command's one-line exit status 2)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from helpers.datasets import tone
from helpers.runners import run_entry_point
from hydra.utils import instantiate

from audioml.classical.table import handcrafted_table, rows_of, settings_from_config
from audioml.config import compose_config
from audioml.features.smile import INSTALL, MissingExtraError, SmileError, SmileSettings

opensmile = pytest.importorskip("opensmile", reason="the opensmile extra (pip install -e '.[opensmile]')")


def _two_tone_clip(sample_rate: int) -> np.ndarray:
    """A voiced-like signal: a 220 Hz tone with harmonics for 1 s, then a 330 Hz one."""
    first = tone(1.0, sample_rate, 220.0) + 0.5 * tone(1.0, sample_rate, 440.0, seed=1)
    second = tone(1.0, sample_rate, 330.0, seed=2) + 0.3 * tone(1.0, sample_rate, 990.0, seed=3)
    return np.concatenate([first, second]).astype(np.float32)


def test_egemaps_functionals_are_opensmiles_own():
    clip = _two_tone_clip(16000)
    settings = SmileSettings("eGeMAPSv02", "functionals")
    reference = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                feature_level=opensmile.FeatureLevel.Functionals).process_signal(clip, 16000)
    row = settings.describe(clip, 16000)
    assert settings.columns() == list(reference.columns) and len(settings.columns()) == 88
    assert "F0semitoneFrom27.5Hz_sma3nz_amean" in settings.columns()
    np.testing.assert_allclose(row, reference.to_numpy(np.float64)[0], rtol=1e-6, atol=1e-9)
    assert np.isfinite(row).all() and np.unique(row).size > 40  # the tone gives real values, not a constant


def test_lld_level_summarises_opensmiles_frames():
    clip = _two_tone_clip(16000)
    settings = SmileSettings("eGeMAPSv02", "lld", ("mean", "max"))
    frames = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                             feature_level=opensmile.FeatureLevel.LowLevelDescriptors).process_signal(clip, 16000)
    row = dict(zip(settings.columns(), settings.describe(clip, 16000)))
    assert len(row) == 25 * 2 and row["Loudness_sma3_mean"] == pytest.approx(frames["Loudness_sma3"].mean(), rel=1e-6)
    pitch = frames["F0semitoneFrom27.5Hz_sma3nz"]
    assert row["F0semitoneFrom27.5Hz_sma3nz_max"] == pytest.approx(pitch.max(), rel=1e-6)


def test_a_clip_opensmile_gives_nothing_for_is_refused_not_invented():
    settings = SmileSettings()
    with pytest.raises(SmileError, match="shorter than its analysis window"):
        settings.describe(np.zeros(400, np.float32), 16000)
    with pytest.raises(SmileError, match="non-finite"):
        settings.describe(np.array([0.1, np.inf] * 4000, np.float32), 16000)
    with pytest.raises(ValueError, match="feature_set='eGeMAPSv99'"):
        SmileSettings("eGeMAPSv99")
    with pytest.raises(ValueError, match="level"):
        SmileSettings(level="frames")


def test_the_table_is_cached_and_reused(tmp_path, monkeypatch):
    cfg = compose_config(["data=synthetic", "descriptors=egemaps", f"paths.output_dir={tmp_path}", "data.num_workers=0",
                          "data.clips_per_class=4"], config_name="classical")
    assert cfg.data.sample_rate == 16000  # the descriptors' own rate
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    rows = rows_of(datamodule)
    settings = settings_from_config(cfg.descriptors)
    table, status = handcrafted_table(rows, settings, tmp_path / "cache", n_jobs=1, progress=False)
    assert status == "built" and table.values.shape == (len(rows), 88) and np.isfinite(table.values).all()
    assert any((tmp_path / "cache" / "features").glob("opensmile-*"))
    np.testing.assert_allclose(table.values[3], settings.describe(rows.waveform(3), 16000).astype(np.float32))
    monkeypatch.setattr(SmileSettings, "describe", lambda *a: pytest.fail("recomputed a cached table"))
    again, status = handcrafted_table(rows, settings, tmp_path / "cache", n_jobs=1, progress=False)
    assert status == "hit" and np.array_equal(again.values, table.values) and again.columns == table.columns
    monkeypatch.undo()
    lld, status = handcrafted_table(rows, SmileSettings(level="lld"), tmp_path / "cache", n_jobs=1, progress=False)
    assert status == "built" and lld.values.shape == (len(rows), 50)  # another setting: another table


def test_without_the_extra_the_message_names_the_install_command(tmp_path, monkeypatch):
    from audioml.features import smile

    monkeypatch.setitem(sys.modules, "opensmile", None)  # what an environment without the package gives
    smile._extractor.cache_clear()
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[opensmile\]"') as error:
        SmileSettings()
    assert INSTALL in str(error.value) and "non-commercial" in str(error.value)
    smile._extractor.cache_clear()


def test_the_command_without_the_extra_ends_in_one_line_with_status_2(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "opensmile.py").write_text("raise ImportError('No module named opensmile')\n")
    process = run_entry_point("audioml.classical", "descriptors=egemaps", "data=synthetic", "data.clips_per_class=2",
                              f"paths.output_dir={tmp_path / 'out'}", "progress=false", check=False,
                              env={"HYDRA_FULL_ERROR": "0", "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))})
    assert process.returncode == 2, process.stderr[-2000:]
    assert 'pip install -e ".[opensmile]"' in process.stderr and "Traceback" not in process.stderr
