"""Benchmark 5: the study's grid (``experiment=emotify/handcrafted``: 2 scalers x 2 reducers x 8
estimators, 5 folds by track) on a table the size of the full Emotify (400 tracks, 1,576
segments of 15 s), timed end to end, with every combination's time and whether its fits
stopped at their iteration bound.

Only 9 of Emotify's 400 MP3s are on this machine, so the table is built, not downloaded: its
rows are the real data.csv's tracks (392 tracks x 4 segments + 8 tracks x 1 = 1,576 rows, each
track's dominant emotion as its label, grouped by track), and each track's audio is a mix of
two of the real MP3s present (a pair, mixing weight and gain drawn per track; segment s cut at
15 s x s of both), through the ``mir`` descriptors at 22,050 Hz. Descriptors are computed once
and cached (``--cache``); the grid is timed each run. Labels are real but the audio is not the
tracks', so the scores are near chance: a pessimistic case for solver convergence, and the
benchmark measures time.

    python -m benchmarks.classical_grid                     # AUDIOML_DATA_DIR holding emotify/
    python -m benchmarks.classical_grid --jobs 2 --cache /tmp/audioml-bench-emotify
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def emotify_sized_rows(emotify: Path, sample_rate: int = 22050, segment_seconds: float = 15.0, seed: int = 0):
    """``Rows`` of 1,576 segments: data.csv's 400 tracks (labels, groups), audio mixed from the
    MP3s under ``emotify`` (module docstring)."""
    import pandas as pd

    from audioml.classical.table import Rows
    from audioml.data.decoder import ClipDecoder
    from audioml.data.emotify import GEMS, read_annotations, track_emotions
    from audioml.files import fingerprint

    files = sorted((emotify / "emotifymusic").glob("*/*.mp3"))
    if len(files) < 2:
        raise SystemExit(f"{emotify}: needs data.csv and at least 2 MP3s under emotifymusic/ (AUDIOML_DATA_DIR)")
    decoder = ClipDecoder(sample_rate, segment_seconds)
    audio = [decoder.read(path) for path in files]
    tracks = track_emotions(read_annotations(emotify / "data.csv"))
    classes = [e for e in GEMS if (tracks["dominant"] == e).any()]
    rng = np.random.default_rng(seed)
    short = set(rng.choice(tracks.index.to_numpy(), size=8, replace=False).tolist())  # 400 x 4 - 8 x 3 = 1,576
    mixes = {int(t): (rng.choice(len(files), size=2, replace=False), float(rng.uniform(0.2, 0.8)),
                      float(10 ** (rng.uniform(-20, 0) / 20))) for t in tracks.index}
    length = int(segment_seconds * sample_rate)
    rows = [{"path": f"track_{int(t):03d}", "offset": segment * segment_seconds, "duration": segment_seconds,
             "group": str(int(t)), "split": "", "track_id": int(t), "segment": segment}
            for t in tracks.index for segment in range(1 if int(t) in short else 4)]
    manifest = pd.DataFrame(rows)
    targets = np.array([classes.index(tracks.loc[int(t), "dominant"]) for t in manifest["track_id"]])

    def cut(clip: np.ndarray, start: int) -> np.ndarray:
        start = start % max(1, len(clip) - length) if len(clip) > length else 0
        return np.pad(clip[start:start + length], (0, max(0, length - len(clip[start:start + length]))))

    def waveform(i: int) -> np.ndarray:
        (a, b), weight, gain = mixes[int(manifest["track_id"].iloc[i])]
        start = int(manifest["offset"].iloc[i] * sample_rate)
        return (gain * (weight * cut(audio[a], start) + (1 - weight) * cut(audio[b], start))).astype(np.float32)

    key = fingerprint({"benchmark": "emotify-sized", "files": [f.name for f in files], "seed": seed,
                       "rows": len(manifest), "sample_rate": sample_rate})
    return Rows(waveform, targets, manifest, "classification", classes, sample_rate, key,
                pd.DataFrame(columns=["path", "reason"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("AUDIOML_DATA_DIR", "data"),
                        help="folder holding emotify/ (data.csv + some MP3s)")
    parser.add_argument("--cache", default=None, help="feature cache folder (default: a new temporary one)")
    parser.add_argument("--jobs", type=int, default=-1, help="processes for descriptors and grid (-1: all cores)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the classical config (grid.*, protocol.*)")
    args = parser.parse_args(argv)

    from audioml.classical.grid import combinations, run_grid
    from audioml.classical.table import handcrafted_table, settings_from_config
    from audioml.config import compose_config
    from audioml.stats import HonestScoring

    scratch = Path(tempfile.mkdtemp(prefix="audioml-bench-grid-"))
    cfg = compose_config(["experiment=emotify/handcrafted", f"paths.output_dir={scratch}", *args.overrides],
                         config_name="classical")
    rows = emotify_sized_rows(Path(args.data_dir) / "emotify", int(cfg.model.sample_rate))
    started = time.perf_counter()
    table, status = handcrafted_table(rows, settings_from_config(cfg.descriptors), args.cache or scratch / "cache",
                                      args.jobs, progress=True)
    describe_seconds = time.perf_counter() - started
    print(f"table: {table.values.shape[0]} rows x {table.values.shape[1]} columns, {table.rows['group'].nunique()} "
          f"tracks, {len(table.class_names)} classes; descriptors {describe_seconds:.1f} s ({status})")
    n = len(combinations(cfg.grid))
    started = time.perf_counter()
    result = run_grid(table, cfg.grid, cfg.protocol, scratch / "grid", HonestScoring(200), int(cfg.seed), args.jobs,
                      progress=True)
    grid_seconds = time.perf_counter() - started
    ranking = result.ranking.sort_values("seconds", ascending=False)
    print(f"grid of {n} pipelines x {int(cfg.protocol.k)} folds (+ the final fit each): {grid_seconds:.1f} s "
          f"wall clock, {ranking['seconds'].sum():.1f} s of fits, n_jobs={args.jobs}")
    for row in ranking.to_dict("records"):
        print(f"  {row['combination']:<42} {row['seconds']:7.1f} s  val/acc {row['val/acc']:.3f}"
              + ("" if row["converged"] else f"  not converged ({int(row['fits_not_converged'])} fits at the bound)"))
    print(f"best by validation: {result.best}")


if __name__ == "__main__":
    main()
