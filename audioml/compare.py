"""``audioml-compare``: the runs of an MLflow experiment or sweep side by side, sorted by a
metric; or two runs compared on the same test items, paired.

    audioml-compare <run A> <run B>
    audioml-compare --sweep <parent run id or sweep key> --paired [--reference <run>]
    audioml-compare --experiment donateacry --sort test/macro_f1 --csv outputs/compare.csv
    audioml-compare --sweep <parent run id or sweep key>
    audioml-compare --experiment synthetic --metrics "test/*" "val/best_*" --params "model.*"
    audioml-compare --status [<sweep key or parent run id>] [--watch [SECONDS]]
    audioml-compare --sweep <parent run id or sweep key> --aggregate seed

Columns: run name, status, the config groups chosen for each run (``data``, ``model``, ``loss``...)
and the params that differ between the listed runs (one column for a value interpolated under
several names, e.g. ``seed``; :func:`differing_params`), then the selected metrics; a column empty
for every run is left out. The printed table shortens run ids and fits the terminal
(``fit_to_width``: long cells cut in the middle, further columns in blocks that repeat the run
name; 120 columns when not a terminal); the CSV keeps everything. The runs are read by
:mod:`audioml.run.store_reader` (the embedded SQLite store directly: a few hundred runs in well
under a second). The store is ``--tracking-uri``, else the embedded store
``<--output-dir>/mlflow/mlflow.db``, else ``MLFLOW_TRACKING_URI``, else the embedded store under
``AUDIOML_OUTPUT_DIR`` or ``./outputs``.

``--status``: one row per job of a sweep (the last one started when no sweep is named): its
overrides, state (finished / pruned / running / interrupted / failed / not started), epochs done of
total, best validation score, test score and wall time, from the sweep's record under
``<output dir>/runs/.sweeps/`` and the jobs' run directories and MLflow runs
(:mod:`audioml.run.status`); ``--watch`` reprints it every few seconds until no job is running or
waiting. ``--aggregate KEY``: per configuration (the runs' params other than ``KEY``) the mean,
std and 95 % t-interval over ``KEY`` (a seed) of each test metric, and which configurations'
intervals overlap (:mod:`audioml.run.aggregate`).

``A B`` (MLflow run ids or their first 8+ digits or run names, run directories, sweep jobs,
k-fold parents): the paired difference ``B - A`` of each metric on the test items both were
scored on (refused when the items differ), with a paired group-bootstrap interval and a paired test
(:mod:`audioml.run.comparison`); logged as an MLflow comparison run linking both.
``--sweep ... --paired``: every job against the best one by ``--sort`` (default: the jobs'
validation score, ``val/best_*``), or against ``--reference``, Holm-adjusted.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["main", "collect_runs", "comparison_table", "differing_params", "fit_to_width"]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_CHOICE_TAG = "audioml.choice."
#: Shown by default: the headline test metrics and the best validation score, not the
#: per-class ones or the confidence bounds (ask for them with --metrics).
DEFAULT_METRICS = ("test/*", "val/best_*")
#: ``audioml.kind`` of runs that trained nothing, left out of the listing (``collect_runs``).
_NOT_TRAINED = ("evaluation", "comparison")
_HIDDEN_BY_DEFAULT = ("test/precision_*", "test/recall_*", "test/f1_*", "*_ci_low", "*_ci_high", "*_fold_mean",
                      "*_fold_std")


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


def collect_runs(store, experiments: Sequence[str] = (), sweep: str | None = None) -> pd.DataFrame:
    """One row per run: ``run_id``, ``run_name``, ``status``, ``experiment``, ``tags.*``,
    ``params.*``, ``metrics.*`` (final values). With ``sweep`` (a parent run id or a sweep key)
    the children of that sweep, else the runs of ``experiments`` except sweep parents,
    evaluations (``audioml-eval``) and comparisons (``audioml-compare A B``): runs without a
    config, whose missing params would make every param look different. ``store``: a reader of
    :mod:`audioml.run.store_reader`, or an ``MlflowClient``.

    Raises ``LookupError`` naming what was not found.
    """
    from audioml.run.store_reader import ClientReader, SqliteReader

    source = store if isinstance(store, (SqliteReader, ClientReader)) else ClientReader(store)
    all_experiments = source.experiments()
    if sweep:
        if _RUN_ID.match(sweep):
            parent_id = source.run(sweep).info.run_id  # raises LookupError when unknown
        else:
            # The jobs carry the sweep's key too: the parent is the run whose role is "sweep".
            parents = source.runs(list(all_experiments), {"audioml.sweep_key": sweep, "audioml.role": "sweep"})
            if not parents:
                raise LookupError(f"no sweep with key or parent run id {sweep!r} in this store")
            parent_id = parents[0].info.run_id
        runs = source.runs(list(all_experiments), {"mlflow.parentRunId": parent_id})
        if not runs:
            raise LookupError(f"sweep {sweep} has no child runs yet")
    else:
        ids = []
        for name in experiments:
            experiment_id = source.experiment_id(name)
            if experiment_id is None:
                raise LookupError(f"no MLflow experiment {name!r}; experiments here: {sorted(all_experiments.values())}")
            ids.append(experiment_id)
        runs = [r for r in source.runs(ids or list(all_experiments))
                if r.data.tags.get("audioml.role") != "sweep" and r.data.tags.get("audioml.kind") not in _NOT_TRAINED]
    rows = []
    for run in runs:
        row = {"run_name": run.info.run_name, "status": run.info.status, "run_id": run.info.run_id,
               "experiment": all_experiments.get(run.info.experiment_id, run.info.experiment_id)}
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _matching(columns: Sequence[str], prefix: str, patterns: Sequence[str],
              hidden: Sequence[str] = ()) -> list[str]:
    names = [c[len(prefix):] for c in columns if c.startswith(prefix)]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)
            and not any(fnmatch.fnmatchcase(n, h) for h in hidden)]


def _is_location(param: str) -> bool:
    """Params that say where files went (they differ between any two runs)."""
    return param.startswith(("paths.", "hydra.")) or param.endswith("dirpath")


def comparison_table(runs: pd.DataFrame, metrics: Sequence[str] | None = None,
                     params: Sequence[str] | None = None, sort: str | None = None,
                     ascending: bool = False) -> pd.DataFrame:
    """The side-by-side table of :func:`collect_runs` rows: identity columns, config choices that
    differ among the runs that have them, params (those matching ``params`` patterns; default: :func:`differing_params`),
    metrics matching ``metrics`` patterns (default: ``DEFAULT_METRICS`` without per-class values
    and confidence bounds); columns empty for every run left out; sorted by metric ``sort``
    (missing last).

    Raises ``ValueError`` when ``sort`` is not a metric of these runs.
    """
    columns = list(runs.columns)
    choice_names = [c for c in columns if c.startswith(f"tags.{_CHOICE_TAG}")]
    choices = {c[len(f"tags.{_CHOICE_TAG}"):]: runs[c] for c in choice_names if runs[c].nunique() > 1}
    param_names = differing_params(runs, set(choices)) if params is None else _matching(columns, "params.", params)
    metric_names = (_matching(columns, "metrics.", DEFAULT_METRICS, _HIDDEN_BY_DEFAULT) if metrics is None
                    else _matching(columns, "metrics.", metrics))
    if sort:
        if f"metrics.{sort}" not in runs:
            available = sorted(c[len("metrics."):] for c in columns if c.startswith("metrics."))
            raise ValueError(f"--sort {sort}: no such metric; the runs have {available}")
        if sort not in metric_names:
            metric_names.insert(0, sort)
    table = pd.DataFrame({"run_name": runs["run_name"], "status": runs["status"], **choices,
                          **{p: runs[f"params.{p}"] for p in param_names},
                          **{m: runs[f"metrics.{m}"] for m in metric_names},
                          "run_id": runs["run_id"], "experiment": runs["experiment"]})
    empty = [c for c in table.columns[2:-2] if c != sort and _blank(table[c]).all()]
    table = table.drop(columns=empty)
    if sort:
        table = table.sort_values(sort, ascending=ascending, na_position="last", kind="stable")
    return table.reset_index(drop=True)


def _blank(values: pd.Series) -> pd.Series:
    """Where ``values`` hold nothing: missing, or empty text."""
    return values.isna() | (values.astype(str).str.strip() == "")


def differing_params(runs: pd.DataFrame, shown_choices: set[str] = frozenset()) -> list[str]:
    """The params of :func:`collect_runs` rows worth a column: those whose values differ among
    the runs that have them, except file locations, a ``_target_`` beside the choice or param
    that names it (``loss._target_`` beside ``loss``, ``estimator._target_`` beside
    ``estimator``), and a param with the same last name and the same values in every run as a
    shorter one (``data.seed``, ``evaluation.seed`` follow ``seed``: one column)."""
    names = [c[len("params."):] for c in runs.columns if c.startswith("params.")]
    names = [n for n in names if not _is_location(n) and runs[f"params.{n}"].dropna().astype(str).nunique() > 1]
    names = [n for n in names if not (n.endswith("._target_") and n[:-len("._target_")] in {*shown_choices, *names})]
    kept: list[str] = []
    for name in sorted(names, key=lambda n: (n.count("."), len(n))):  # the shortest of alike columns stays
        values = runs[f"params.{name}"].astype(str)
        if not any(other.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]
                   and values.equals(runs[f"params.{other}"].astype(str)) for other in kept):
            kept.append(name)
    return [n for n in names if n in kept]


def _elide(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle (``"cnn lr=...seed=7"``): the ends of
    run titles and dotted param names are what tells them apart."""
    if len(text) <= width:
        return text
    head = (width - 3 + 1) // 2
    return f"{text[:head]}...{text[len(text) - (width - 3 - head):]}"


def fit_to_width(table: pd.DataFrame, width: int, max_cell: int = 24, max_key: int = 40) -> str:
    """``table`` as text no line of which is wider than ``width`` (at least 40).

    Cells and headers longer than ``max_cell`` characters (``max_key`` for the first column, the
    run name) are cut in the middle ("..."); numbers are right-aligned, floats to 4 decimals,
    missing values blank. Columns that do not fit beside each other go into further blocks, each
    starting again with the first column (and ``run_id`` when the cut names are not distinct),
    separated by a blank line. The CSV keeps the full values."""
    width = max(width, 40)
    if not len(table.columns):
        return ""
    columns = []  # (header, cells, right-aligned)
    for position, name in enumerate(table.columns):
        limit = min(max_key, max(16, width * 9 // 20)) if position == 0 else max_cell
        values = table[name]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        cells = ["" if pd.isna(v) else _elide(f"{v:.4f}" if isinstance(v, float) else str(v), limit) for v in values]
        columns.append((_elide(str(name), limit), cells, numeric))
    widths = [max(len(header), *(len(c) for c in cells), 1) for header, cells, _ in columns]
    keys = [0]
    if len(set(columns[0][1])) < len(table) and "run_id" in table.columns[1:]:  # names cut alike: the id tells
        keys.append(list(table.columns).index("run_id"))
    key_width = sum(widths[k] + 1 for k in keys) - 1
    blocks, current, used = [], [], key_width
    for index in (i for i in range(len(columns)) if i not in keys):
        if current and used + 1 + widths[index] > width:
            blocks.append(current)
            current, used = [], key_width
        current.append(index)
        used += 1 + widths[index]
    blocks.append(current)

    def line(index_list: list[int], row: int | None) -> str:
        parts = []
        for index in index_list:
            header, cells, numeric = columns[index]
            text = header if row is None else cells[row]
            parts.append(text.rjust(widths[index]) if numeric else text.ljust(widths[index]))
        return " ".join(parts).rstrip()

    return "\n\n".join("\n".join(line([*keys, *block], row) for row in [None, *range(len(table))]) for block in blocks)


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
    """``--status`` (and ``--watch``): see the module docs."""
    from audioml.run import status

    output = _output_root(args.output_dir)
    store = None
    if args.status and _RUN_ID.match(args.status):  # a parent run id: its tag names the sweep's record
        from audioml.run.store import check_reachable
        from audioml.run.store_reader import reader

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
    from audioml.run.aggregate import aggregate_report, aggregate_runs

    table = aggregate_runs(runs, args.aggregate, args.metrics)
    shown, notes = aggregate_report(table, args.aggregate, args.sort)
    print(fit_to_width(shown, _width(), max_cell=40))
    if notes:
        print("\n" + "\n".join(notes))
    return table


def _store_of_runs(args: argparse.Namespace) -> str | None:
    """The store for a paired comparison: as for the table, else the one a run directory
    recorded (``<run dir>/mlflow_store``); ``None`` when runs given as directories have none."""
    try:
        return _tracking_uri(args.tracking_uri, args.output_dir)
    except FileNotFoundError:
        for run in args.runs:
            recorded = Path(run).expanduser() / "mlflow_store"
            if recorded.is_file():
                return recorded.read_text().strip()
        if all(Path(run).expanduser().is_dir() for run in args.runs):
            return None
        raise


def _paired(args: argparse.Namespace, client, runs: pd.DataFrame | None) -> int:
    """``A B`` or ``--sweep ... --paired``: print (and log) the paired comparison."""
    from audioml.run import comparison

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
    from audioml.run.comparison import ItemMismatchError
    from audioml.run.store import check_reachable
    from audioml.run.store_reader import reader

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
