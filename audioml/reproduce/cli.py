"""``audioml-reproduce``: run the study systems of the registry on the data present, under the
study's protocol and under audioml's grouped one, and write the side-by-side table.

    audioml-reproduce all --quick
    audioml-reproduce ravdess/gender_cnn -- trainer.max_epochs=5   (overrides for every job)

Each job is its own process with its own run directory and log under ``<out>``; finished jobs are
reused, missing data or weights skip a job with the reason. Guide: docs/studies/reproductions.md."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from audioml.reproduce.jobs import JobResult, job_name, job_overrides, run_job
from audioml.reproduce.registry import (
    REGISTRY_FILE,
    Entry,
    Locations,
    Protocol,
    load_registry,
    missing_data,
    missing_weights,
    too_few_groups,
)
from audioml.reproduce.report import Row, format_seconds, markdown_table, write_csv, write_markdown
from audioml.run.rundir import RunDir

__all__ = ["main", "reproduce", "skip_reason"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioml-reproduce", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the studies' systems under their own protocol and audioml's grouped one; write "
                    "reproduction.md / reproduction.csv.",
        epilog="Hydra overrides after `--` go to every job, e.g. `-- trainer.max_epochs=5`.")
    parser.add_argument("names", nargs="+", metavar="STUDY|EXPERIMENT",
                        help="'all', a dataset (donateacry, ravdess, emotify, muse) or an experiment (ravdess/gender_cnn)")
    parser.add_argument("--quick", action="store_true",
                        help="the registry's quick overrides: few epochs, small bootstrap (a check, not the studies' runs)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: $AUDIOML_OUTPUT_DIR/reproduction or ./outputs/reproduction)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="paths.data_dir (default: $AUDIOML_DATA_DIR or ./data)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="paths.weights_dir (default: $AUDIOML_WEIGHTS_DIR or the torch hub cache)")
    parser.add_argument("--root", action="append", default=[], metavar="DATASET=DIR",
                        help="one dataset's own folder (data.root), e.g. --root muse=/tmp/generated_muse")
    parser.add_argument("--protocol", choices=("both", "study", "grouped"), default="both",
                        help="run only the study's or only the grouped protocol")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="per job")
    parser.add_argument("--registry", type=Path, default=REGISTRY_FILE,
                        help="a registry file of your own (format: the header of audioml/conf/reproduce.yaml)")
    parser.add_argument("--rerun", action="store_true",
                        help="run every job again (default: a job finished before with the same command is reused)")
    parser.add_argument("--list", action="store_true", help="print what would run or be skipped; run nothing")
    return parser


def _locations(args: argparse.Namespace) -> Locations:
    data_dir = args.data_dir or Path(os.environ.get("AUDIOML_DATA_DIR", "./data"))
    weights_dir = args.weights_dir or (Path(os.environ["AUDIOML_WEIGHTS_DIR"])
                                       if os.environ.get("AUDIOML_WEIGHTS_DIR") else None)
    roots = {}
    for pair in args.root:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--root {pair!r}: use DATASET=DIR, e.g. --root muse=/data/c3_muse_stress_2022")
        roots[name] = Path(folder).expanduser().resolve()
    return Locations(data_dir.expanduser().resolve(), weights_dir.expanduser().resolve() if weights_dir else None,
                     roots)


def skip_reason(entry: Entry, protocol: Protocol, locations: Locations) -> str | None:
    """Why ``entry`` cannot run under ``protocol`` here (not applicable, data or weights missing,
    too few groups), or ``None``."""
    return (protocol.not_run or missing_data(entry, locations) or missing_weights(entry, locations.weights_dir)
            or too_few_groups(entry, protocol, locations))


def _wanted(entry: Entry, protocol: Protocol, protocols: str) -> bool:
    """Whether ``--protocol`` selects ``protocol`` (directly, or as the one a selected protocol is the same as)."""
    if protocols == "both":
        return True
    selected = next(p for p in entry.protocols if p.key.startswith(protocols))
    return protocol is selected or selected.same_as == protocol.key


def _progress(text: str) -> None:
    print(text, flush=True)


def reproduce(entries: Sequence[Entry], locations: Locations, out: Path, quick: bool = False,
              extra: Sequence[str] = (), protocols: str = "both", timeout: float | None = None,
              all_entries: Sequence[Entry] = (), rerun: bool = False) -> list[Row]:
    """Run every job of ``entries`` (each in its own process) and return the rows; a failed or
    skipped job is a row with its reason. ``all_entries`` are searched for the ``features_from``
    entry of a selected one (its grouped run under ``out`` may be from an earlier command)."""
    rows: list[Row] = []
    finished: dict[str, JobResult] = {}
    total = sum(1 for entry in entries for protocol in entry.protocols
                if protocol.same_as is None and _wanted(entry, protocol, protocols))
    number = 0
    for entry in entries:
        results: dict[str, JobResult] = {}
        for protocol in sorted(entry.protocols, key=lambda p: p.same_as is not None):  # a same_as one last
            if protocol.same_as is not None:
                results[protocol.key] = results[protocol.same_as]
                continue
            if not _wanted(entry, protocol, protocols):
                results[protocol.key] = JobResult("not run", "")
                continue
            number += 1
            label = f"[{number}/{total}] {entry.experiment} ({protocol.text})"
            reason = skip_reason(entry, protocol, locations)
            features_dir = None
            if reason is None and entry.features_from is not None:
                features_dir, reason = _features_run(entry, finished, out, quick, all_entries or entries)
            if reason is not None:
                results[protocol.key] = JobResult("not run" if protocol.not_run else "skipped", reason)
                _progress(f"{label}: {results[protocol.key].status}: {reason}")
                continue
            name = job_name(entry, protocol, quick)
            _progress(f"{label}: running, log {out / 'logs' / (name + '.log')}")
            result = run_job(entry.runner.module,
                             job_overrides(entry, protocol, locations, quick, extra, features_dir),
                             out / "runs" / name, out / "logs", entry.reported.metric, timeout, reuse=not rerun)
            results[protocol.key] = result
            shown = f"{entry.reported.metric} {result.value(entry.reported.metric):.3f}" if result.status == "ok" \
                else result.reason
            _progress(f"{label}: {result.status}{' (reused)' if result.reused else ''} in "
                      f"{format_seconds(result.seconds)}: {shown}")
        finished[entry.experiment] = results["grouped_protocol"]
        rows.append(Row(entry, results["study_protocol"], results["grouped_protocol"]))
    return rows


def _features_run(entry: Entry, finished: dict[str, JobResult], out: Path, quick: bool,
                  entries: Sequence[Entry]) -> tuple[Path | None, str | None]:
    """The run directory whose checkpoint gives ``entry`` its features: the grouped run of its
    ``features_from`` entry in this command, else one finished under ``out`` before."""
    source = entry.features_from
    result = finished.get(source)
    if result is not None and result.status == "ok":
        return result.run_dir, None
    provider = next((e for e in entries if e.experiment == source), None)
    if provider is not None and result is None:
        run_dir = out / "runs" / job_name(provider, provider.grouped_protocol, quick)
        if RunDir(run_dir).metrics_file.is_file():
            return run_dir, None
    why = f"it {result.status}" if result is not None else "it is not in this command and has no run under " + str(out)
    return None, f"needs the features of a finished {source} run ({why}); run it first: audioml-reproduce {source}"


def _header(args: argparse.Namespace, locations: Locations, seconds: float, command: str,
            rows: Sequence[Row]) -> list[str]:
    jobs = sum(row.seconds for row in rows)
    reused = any(r.reused for row in rows for r in (row.same, row.grouped))
    lines = ["# audioml reproduction report", "",
             f"`{command}` on {datetime.now():%Y-%m-%d %H:%M}: the jobs' wall time {format_seconds(jobs)} in all"
             + (f" (this command {format_seconds(seconds)}; reused jobs keep the time of their run)" if reused else "")
             + ".  ",
             f"Data: `{locations.data_dir}`"
             + "".join(f", {name}: `{root}`" for name, root in locations.roots.items())
             + f"; weights: `{locations.weights_dir or 'torch hub cache'}`.  "]
    if args.quick:
        lines.append("**--quick**: few epochs and small bootstraps (the registry's quick overrides), on the data "
                     "present: a check of the pipeline, not the studies' numbers.  ")
    lines.append("Values are the study's metric on the test split (k-fold: pooled out-of-fold); intervals are "
                 "group-bootstrap 95 % intervals; the baseline always predicts the training split's majority "
                 "class (regression: its mean).")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Console script (module docstring); returns 0, or 1 when a job failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        registry = load_registry(args.registry)
        entries = registry.select(args.names)
        locations = _locations(args)
    except ValueError as error:
        parser.error(str(error))
    out = (args.out or Path(os.environ.get("AUDIOML_OUTPUT_DIR", "./outputs")) / "reproduction").expanduser().resolve()
    if args.list:
        for entry in entries:
            for protocol in entry.protocols:
                if protocol.same_as is None:
                    reason = skip_reason(entry, protocol, locations)
                    print(f"{entry.experiment} ({protocol.text}): {'runs' if reason is None else 'skipped: ' + reason}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    command = "audioml-reproduce " + shlex.join([*(argv or []), *(["--", *extra] if extra else [])])
    started = time.monotonic()
    rows = reproduce(entries, locations, out, args.quick, extra, args.protocol, args.timeout, registry.entries,
                     args.rerun)
    header = _header(args, locations, time.monotonic() - started, command, rows)
    write_csv(rows, out / "reproduction.csv")
    write_markdown(rows, out / "reproduction.md", header)
    table, notes = markdown_table(rows)
    print("\n" + table)
    for note_number, note in enumerate(notes, 1):
        print(f"[{note_number}] {note}")
    print(f"\nwritten: {out / 'reproduction.md'}, {out / 'reproduction.csv'}")
    return 1 if any(r.status == "failed" for row in rows for r in (row.same, row.grouped)) else 0


if __name__ == "__main__":
    sys.exit(main())
