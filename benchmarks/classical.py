"""Benchmark 4: classical models. Two ratios, each against the plain way in the same process:

1. descriptor extraction: audioml's cached, parallel table (``handcrafted_table``: the
   DataModule's decoded waveforms, joblib over all cores) against a plain per-file loop
   (``librosa.load`` with resampling, then the same descriptors, one file after another);
   cold (decode cache and table built) and warm (the table read back).
2. a grid: ``run_grid`` on the cached table against recomputing the features for every
   combination (the notebook way: one loop per pipeline that extracts, then fits), on the
   same folds and pipelines.

    python -m benchmarks.classical                  # real donateacry when under AUDIOML_DATA_DIR
    python -m benchmarks.classical --clips 60 --data synthetic
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="donateacry", help="a data config (donateacry, synthetic, ...)")
    parser.add_argument("--clips", type=int, default=120, help="first N clips (0: all)")
    parser.add_argument("--descriptors", default="mir", help="descriptor set (mir, full)")
    parser.add_argument("--jobs", type=int, default=-1, help="processes (-1: all cores)")
    args = parser.parse_args(argv)

    import librosa
    from hydra.utils import instantiate

    from audioml.classical.descriptors import describe
    from audioml.classical.grid import combinations, make_folds, run_grid
    from audioml.classical.table import FeatureTable, handcrafted_table, rows_of, settings_from_config
    from audioml.config import compose_config
    from audioml.stats import HonestScoring

    scratch = Path(tempfile.mkdtemp(prefix="audioml-bench-classical-"))
    cfg = compose_config([f"data={args.data}", f"descriptors={args.descriptors}", f"paths.output_dir={scratch}",
                          "data.num_workers=0", "progress=false", "~grid.reducers.pca20",
                          "~grid.estimators.random_forest", "~grid.estimators.gradient_boosting"],
                         config_name="classical")
    settings = settings_from_config(cfg.descriptors)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    started = time.perf_counter()
    datamodule.setup("fit")
    rows = rows_of(datamodule)
    if args.clips and args.clips < len(rows):
        keep = np.arange(args.clips)
        rows.manifest, rows.targets = rows.manifest.iloc[keep].reset_index(drop=True), rows.targets[keep]
        rows.key = f"{rows.key}-{args.clips}"
    decode_seconds = time.perf_counter() - started
    sample_rate, seconds = rows.sample_rate, datamodule.clip_seconds
    print(f"{len(rows)} clips of {args.data}, {seconds:g} s at {sample_rate} Hz, descriptors={args.descriptors} "
          f"({len(settings.descriptors)} descriptors)")

    describe(rows.waveform(0), sample_rate, settings)  # librosa's JIT compiled once, outside both arms
    started = time.perf_counter()
    plain = []
    for path in rows.manifest["path"]:
        audio, _ = librosa.load(path, sr=sample_rate, mono=True, duration=seconds)
        audio = np.pad(audio, (0, max(0, int(seconds * sample_rate) - len(audio))))
        plain.append(describe(audio, sample_rate, settings))
    plain_seconds = time.perf_counter() - started

    started = time.perf_counter()
    table, status = handcrafted_table(rows, settings, scratch / "cache", args.jobs, progress=False)
    cold = time.perf_counter() - started + decode_seconds
    started = time.perf_counter()
    _, warm_status = handcrafted_table(rows, settings, scratch / "cache", args.jobs, progress=False)
    warm = time.perf_counter() - started
    print(f"1. descriptors: plain per-file loop {plain_seconds:.1f} s; audioml cold {cold:.1f} s "
          f"({plain_seconds / cold:.1f}x, {status}, decode included), warm {warm:.2f} s "
          f"({plain_seconds / warm:.0f}x, {warm_status})")
    print(f"   largest difference to the plain loop's values: "
          f"{np.abs(np.stack(plain)[:len(table.values)] - table.values).max():.3g} (decoders differ: "
          "librosa.load resamples with soxr, audioml's shared decoder as the training data)")

    grid = cfg.grid
    protocol = {"kind": "kfold", "k": 5, "val_fraction": 0.2}
    scoring = HonestScoring(200)
    started = time.perf_counter()
    result = run_grid(table, grid, protocol, scratch / "grid", scoring, n_jobs=args.jobs)
    grid_seconds = time.perf_counter() - started
    n = len(combinations(grid))
    folds, _ = make_folds(table, protocol, 0)
    started = time.perf_counter()
    for combination in combinations(grid)[:2]:  # the recompute arm, measured on two combinations
        values = np.stack([describe(rows.waveform(i), sample_rate, settings) for i in range(len(table.values))])
        recomputed = FeatureTable(values.astype(np.float32), table.columns, table.rows, table.targets, table.task,
                                  table.class_names, table.key, table.skipped)
        one = grid.copy()
        for part, name in (("scalers", combination.scaler), ("reducers", combination.reducer),
                           ("estimators", combination.estimator)):
            one[part] = {name: grid[part][name]}
        run_grid(recomputed, one, protocol, scratch / f"recompute-{combination.name}", scoring, n_jobs=1)
    recompute_seconds = (time.perf_counter() - started) / 2 * n
    print(f"2. grid of {n} pipelines x {len(folds)} folds: on the cached table {grid_seconds:.1f} s; recomputing the "
          f"features per combination {recompute_seconds:.1f} s (2 measured, x{n / 2:g}): "
          f"{recompute_seconds / grid_seconds:.1f}x; best {result.best}")


if __name__ == "__main__":
    main()
