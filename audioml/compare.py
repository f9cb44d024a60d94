"""``audioml-compare``: the runs of an MLflow experiment or sweep side by side, sorted by a
metric; or two runs compared on the same test items, paired.

The command line of code that lives in the run layer: the runs table
(:mod:`audioml.run.record.listing`, read by :mod:`audioml.run.record.store_reader`), ``--status``
(:mod:`audioml.run.record.status`), ``--aggregate`` (:mod:`audioml.run.record.aggregate`) and the
paired comparison (:mod:`audioml.run.use.comparison`). Every option: ``audioml-compare --help``;
guides: docs/guide/sweeps.md, docs/guide/comparing-runs.md."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from audioml.run.record.listing import (
    _RUN_ID,
    collect_runs,
    comparison_table,
    differing_params,
    fit_to_width,
)

__all__ = ["main", "collect_runs", "comparison_table", "differing_params", "fit_to_width"]

def _output_root(output_dir: str | None) -> Path:
    """``--output-dir``, else ``AUDIOML_OUTPUT_DIR``, else ``./outputs`` (paths.output_dir's default)."""
    return Path(output_dir or os.environ.get("AUDIOML_OUTPUT_DIR", "outputs")).expanduser().resolve()


def _tracking_uri(tracking_uri: str | None, output_dir: str | None) -> str:
    """``--tracking-uri``, else the store under an explicit ``--output-dir``, else
    ``MLFLOW_TRACKING_URI``, else the store under ``AUDIOML_OUTPUT_DIR`` or ``./outputs``."""
    if tracking_uri:
        return tracking_uri
    if not output_dir and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    database = _output_root(output_dir) / "mlflow" / "mlflow.db"
    if not database.is_file():
        raise FileNotFoundError(f"no MLflow store at {database}: pass --output-dir (the paths.output_dir of the runs) "
                         "or --tracking-uri")
    return f"sqlite:///{database}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audioml-compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN",
                        help="two runs to compare on the same test items, paired: MLflow run ids (or their first 8+ "
                             "digits) or names, run directories, k-fold parents")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--experiment", nargs="+", metavar="NAME", help="experiment name(s) (the dataset by default)")
    which.add_argument("--sweep", metavar="ID", help="parent run id of a sweep, or its sweep key")
    which.add_argument("--status", nargs="?", const="", metavar="SWEEP",
                       help="where each job of a sweep stands (its key or parent run id; default: the sweep "
                            "started last under --output-dir)")
    parser.add_argument("--watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
                        help="with --status: reprint the table every SECONDS (default 10) until no job runs or waits")
    parser.add_argument("--aggregate", metavar="KEY",
                        help="mean, std and 95%% interval of each test metric over the runs' values of KEY "
                             "(e.g. seed), per configuration, and whether configurations' intervals overlap")
    parser.add_argument("--sort", metavar="METRIC", help="metric to sort by, e.g. test/macro_f1 (descending)")
    parser.add_argument("--ascending", action="store_true", help="sort ascending (losses)")
    parser.add_argument("--metrics", nargs="+", metavar="PATTERN",
                        help="metric name patterns to show, e.g. 'test/*' (default: test/* and val/best_* "
                             "without per-class values and confidence bounds)")
    parser.add_argument("--params", nargs="+", metavar="PATTERN",
                        help="param name patterns to show (default: the params that differ between the runs)")
    parser.add_argument("--csv", metavar="PATH", help="also write the table (full run ids) to this CSV file")
    paired = parser.add_argument_group("paired comparison (A B, or --sweep ... --paired)")
    paired.add_argument("--paired", action="store_true",
                        help="with --sweep: every job against the best one (by --sort, default its val/best_* score) "
                             "or --reference, paired on the test items, Holm-adjusted")
    paired.add_argument("--reference", metavar="RUN",
                        help="with --sweep --paired: the run the others are compared with")
    paired.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="paired group-bootstrap resamples")
    paired.add_argument("--permutations", type=int, default=10000, metavar="N",
                        help="paired permutations (all 2**groups swaps when fewer)")
    paired.add_argument("--confidence", type=float, default=0.95, help="coverage of the intervals")
    paired.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts")
    paired.add_argument("--seed", type=int, default=0, help="seed of the resamples and permutations")
    paired.add_argument("--no-log", action="store_true", help="do not record the comparison as an MLflow run")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or the embedded store)")
    parser.add_argument("--output-dir", help="paths.output_dir of the runs, holding mlflow/mlflow.db "
                                             "(default: AUDIOML_OUTPUT_DIR or ./outputs)")
    return parser


def _width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


def _status(args: argparse.Namespace) -> int:
    """``--status`` (and ``--watch``): where each job of a sweep stands (:mod:`audioml.run.record.status`)."""
    from audioml.run.record import status

    output = _output_root(args.output_dir)
    store = None
    if args.status and _RUN_ID.match(args.status):  # a parent run id: its tag names the sweep's record
        from audioml.run.record.store import check_reachable
        from audioml.run.record.store_reader import reader

        uri = _tracking_uri(args.tracking_uri, args.output_dir)
        check_reachable(uri)  # a server that is down is said at once, not after MLflow's retries
        store = reader(uri)
    folder = status.find_record([output / "runs"], args.status or None, store)
    while True:
        notes: list[str] = []
        jobs = status.sweep_jobs(folder, notes=notes)
        counts = ", ".join(f"{n} {state}" for state in status.STATES
                           if (n := sum(job.state == state for job in jobs)))
        monitors = sorted({job.monitor for job in jobs if job.monitor})
        lines = [f"sweep {folder.name}: {len(jobs)} jobs, {counts or 'none'}"
                 + (f"; best val: best {', '.join(monitors)} so far" if monitors else "")
                 + f"  ({time.strftime('%H:%M:%S')})",
                 fit_to_width(status.status_table(jobs), _width(), max_cell=32), *notes]
        if args.watch and sys.stdout.isatty():
            print("\033[2J\033[H", end="")
        print("\n".join(lines), flush=True)
        if not args.watch or not any(job.state in ("running", "not started") for job in jobs):
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0
        print()


def _aggregate(runs: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """``--aggregate``: print the per-configuration table and the overlap notes; returns the full table."""
    from audioml.run.record.aggregate import aggregate_report, aggregate_runs

    table = aggregate_runs(runs, args.aggregate, args.metrics)
    shown, notes = aggregate_report(table, args.aggregate, args.sort)
    print(fit_to_width(shown, _width(), max_cell=40))
    if notes:
        print("\n" + "\n".join(notes))
    return table


def _store_of_runs(args: argparse.Namespace) -> str | None:
    """The store for a paired comparison: as for the table, else the one a run directory
    recorded (``RunDir.store``); ``None`` when runs given as directories have none."""
    from audioml.run.rundir import RunDir

    try:
        return _tracking_uri(args.tracking_uri, args.output_dir)
    except FileNotFoundError:
        for run in args.runs:
            recorded = RunDir(Path(run).expanduser()).store()
            if recorded and (not recorded.startswith("sqlite:///") or Path(recorded[len("sqlite:///"):]).is_file()):
                return recorded  # (an SQLite store that is not there would be created empty by looking)
        if all(Path(run).expanduser().is_dir() for run in args.runs):
            return None
        raise


def _paired(args: argparse.Namespace, client, runs: pd.DataFrame | None) -> int:
    """``A B`` or ``--sweep ... --paired``: print (and log) the paired comparison."""
    from audioml.run.use import comparison

    settings = {"bootstrap_samples": args.bootstrap, "permutations": args.permutations,
                "confidence": args.confidence, "seed": args.seed}
    with tempfile.TemporaryDirectory() as scratch:
        if runs is None:
            a, b = (comparison.load_run(run, client, scratch) for run in args.runs)
            comparisons = [comparison.compare_runs(a, b, **settings)]
            title = f"compare {a.label} vs {b.label}"
        else:
            reference = comparison.load_run(args.reference or _best_job(runs, args.sort, args.ascending), client,
                                            scratch)
            others = [comparison.load_run(run_id, client, scratch) for run_id in runs["run_id"]
                      if run_id != reference.run_id]
            if not others:
                raise ValueError("the sweep has no other job to compare with its reference")
            comparisons = comparison.with_holm([comparison.compare_runs(reference, other, **settings)
                                                for other in others])
            title = f"compare {len(others)} jobs vs {reference.label}"
        table = comparison.comparison_table(comparisons)
        first, single = comparisons[0], len(comparisons) == 1
        print(f"A = {first.a.label}" + (f" ({first.a.run_id[:8]})" if first.a.run_id else "")
              + (f", B = {first.b.label}" + (f" ({first.b.run_id[:8]})" if first.b.run_id else "") if single
                 else f", B = each of {len(comparisons)} other jobs")
              + f": {first.differences[0].items} test items in {first.differences[0].groups} groups, paired on "
              + " + ".join(first.paired_on))
        shown = table.drop(columns=["a_run", "a_run_id", "b_run_id", "items", "groups"] + (["b_run"] if single else []))
        print(fit_to_width(shown, _width(), max_cell=32))
        for item in comparisons:
            lines = comparison.describe(item, args.alpha)
            print("\n" + "\n".join(lines) if single
                  else f"\n{item.b.label} vs {item.a.label}:\n  " + "\n  ".join(lines))
        notes = sorted({note for item in comparisons for note in item.notes})
        if notes:
            print("\n" + "\n".join(f"note: {note}" for note in notes))
        path = Path(args.csv).expanduser() if args.csv else Path(scratch) / comparison.COMPARISON_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
        if args.csv:
            print(f"\n{len(table)} rows written to {path}")
        if client is not None and not args.no_log and all(c.a.run_id and c.b.run_id for c in comparisons):
            if path.name != comparison.COMPARISON_FILE:  # the artifact keeps its name
                path = Path(shutil.copy(path, Path(scratch) / comparison.COMPARISON_FILE))
            run_id = comparison.log_comparison(client, comparisons, path, first.a.experiment_id, title)
            print(f"\nlogged as MLflow run {run_id} (tags audioml.compares.*)")
        elif not args.no_log:
            print("\nnot logged to MLflow: " + ("no MLflow store" if client is None else
                                                "a run is not in this MLflow store"))
    return 0


def _client(uri: str):
    """MLflow's client of ``uri`` (the paired comparisons download artifacts and log a run)."""
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _best_job(runs: pd.DataFrame, sort: str | None, ascending: bool) -> str:
    """The run id of the best job: by ``sort``, else by the jobs' one ``val/best_*`` metric (the
    validation score their checkpoints were chosen by: choosing by a test metric would favour
    the reference by the test set's own noise)."""
    if sort is None:
        names = sorted({c for c in runs.columns if c.startswith("metrics.val/best_")})
        if len(names) != 1:
            raise ValueError(f"which job is the best? the jobs have {len(names)} val/best_* metrics "
                             f"({[n[len('metrics.'):] for n in names]}): give --sort <metric> or --reference <run>")
        sort = names[0][len("metrics."):]
        ascending = sort.endswith(("loss", "mse", "mae"))
    if f"metrics.{sort}" not in runs:
        raise ValueError(f"--sort {sort}: no such metric of the jobs")
    ordered = runs.sort_values(f"metrics.{sort}", ascending=ascending, na_position="last", kind="stable")
    return str(ordered["run_id"].iloc[0])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # downloads of a few CSV files
    from audioml.run.record.store import check_reachable
    from audioml.run.record.store_reader import reader
    from audioml.run.use.comparison import ItemMismatchError

    modes = [flag for flag, given in (("RUN RUN", bool(args.runs)), ("--experiment", args.experiment),
                                      ("--sweep", args.sweep), ("--status", args.status is not None)) if given]
    if len(modes) != 1:
        print("audioml-compare: " + (f"{' and '.join(modes)} exclude each other" if modes else
                                     "give two runs (A B), --experiment, --sweep or --status"), file=sys.stderr)
        return 2
    try:
        if args.runs:
            if len(args.runs) != 2:
                raise ValueError(f"give two runs to compare (A B); got {len(args.runs)}: {args.runs}")
            uri = _store_of_runs(args)
            if uri is not None:
                check_reachable(uri)
            return _paired(args, _client(uri) if uri else None, None)
        if (args.paired or args.reference) and not args.sweep:
            raise ValueError("--paired and --reference compare the jobs of a sweep: add --sweep <sweep key or parent "
                             "run id>; two runs: audioml-compare <run A> <run B>")
        if args.watch is not None and args.status is None:
            raise ValueError("--watch refreshes --status: add --status [SWEEP]")
        if args.status is not None:
            table_options = [flag for flag, value in (("--aggregate", args.aggregate), ("--sort", args.sort),
                                                      ("--ascending", args.ascending), ("--metrics", args.metrics),
                                                      ("--params", args.params), ("--csv", args.csv)) if value]
            if table_options:
                raise ValueError(f"--status shows where each job of a sweep stands and takes no "
                                 f"{', '.join(table_options)}: those shape the comparison table, e.g. "
                                 f"audioml-compare --sweep <sweep key or parent run id> {table_options[0]} ...")
            return _status(args)
        uri = _tracking_uri(args.tracking_uri, args.output_dir)
        check_reachable(uri)  # a closed port fails in seconds, not after MLflow's silent retries
        runs = collect_runs(reader(uri), args.experiment or (), args.sweep)
        if runs.empty:
            print("no runs", file=sys.stderr)
            return 1
        if args.paired or args.reference:
            return _paired(args, _client(uri), runs)
        if args.aggregate:
            table = _aggregate(runs, args)
            if args.csv:
                Path(args.csv).expanduser().parent.mkdir(parents=True, exist_ok=True)
                table.to_csv(args.csv, index=False)
                print(f"\n{len(table)} configurations written to {args.csv}")
            return 0
        table = comparison_table(runs, args.metrics, args.params, args.sort, args.ascending)
    except (FileNotFoundError, LookupError, ValueError, ConnectionError, ItemMismatchError) as error:
        print(f"audioml-compare: {error}", file=sys.stderr)
        return 2
    if args.csv:
        Path(args.csv).expanduser().parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
    shown = table.drop(columns=["experiment"]).assign(run_id=table["run_id"].str[:8])
    print(fit_to_width(shown, _width()))
    if args.csv:
        print(f"\n{len(table)} runs written to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
