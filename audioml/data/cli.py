"""``audioml-data``: fetch datasets, prepare the raw donateacry uploads, describe a dataset.

    audioml-data list
    audioml-data download {donateacry,ravdess,emotify} [--data-dir D] [--dest PATH] [--force]
                          [--url FILE=URL ...] [--manifest FILE]
    audioml-data verify {donateacry,ravdess,emotify} [--data-dir D | --root PATH] [--present-only]
    audioml-data prepare-donateacry [--root R] [--output O] [--min-seconds S]
    audioml-data info <data config> [Hydra overrides, e.g. data.task=gender]

``--data-dir`` defaults to ``$AUDIOML_DATA_DIR`` or ``./data``, as ``paths.data_dir`` does.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from audioml.data.download import MUSE_INSTRUCTIONS, SOURCES, DownloadError, default_data_dir, download_dataset

log = logging.getLogger("audioml.data.cli")


def default_prepared_dir() -> Path:
    """Where ``data=donateacry data.source=raw`` looks by default: ``${paths.cache_dir}/donateacry-raw``
    with ``paths.output_dir`` from ``$AUDIOML_OUTPUT_DIR`` or ``./outputs`` (the data folder may be
    read-only)."""
    return Path(os.environ.get("AUDIOML_OUTPUT_DIR", "./outputs")).expanduser() / "cache" / "donateacry-raw"


def _parse_urls(pairs: Sequence[str]) -> dict[str, str]:
    urls = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"--url {pair!r}: use FILE=URL, e.g. --url data.csv=https://mirror/data.csv")
        urls[name] = url
    return urls


#: What to do about the file-system errors a command can meet (``_os_error_message``).
_OS_ERROR_HINTS = {
    errno.ENOTDIR: "a part of that path is a file, not a folder: point --data-dir / $AUDIOML_DATA_DIR (or --dest) "
                   "at a folder",
    errno.ENOSPC: "free some space there, or choose another --data-dir / --dest",
    errno.EACCES: "you may not write there: choose another --data-dir / --dest",
    errno.EROFS: "that file system is read-only: choose another --data-dir / --dest",
}


def _os_error_message(error: OSError) -> str:
    """One line for an ``OSError``: what the system said, about which path, and what to do."""
    where = f": {error.filename}" if error.filename else ""
    hint = _OS_ERROR_HINTS.get(error.errno)
    return f"{error.strerror or error}{where}" + (f" ({hint})" if hint else "")


def _list(_: argparse.Namespace) -> int:
    for source in SOURCES.values():
        print(f"{source.name:<11} -> <data_dir>/{source.folder}   licence: {source.license}")
        for remote in source.files:
            print(f"    {remote.filename}: {remote.url}" + (f"  ({remote.checksum})" if remote.checksum else ""))
    print(f"{'muse':<11} -> <data_dir>/muse   {MUSE_INSTRUCTIONS}")
    return 0


def _download(args: argparse.Namespace) -> int:
    if args.name == "muse":
        print(MUSE_INSTRUCTIONS, file=sys.stderr)
        return 2
    path = download_dataset(args.name, data_dir=args.data_dir, destination=args.dest, force=args.force,
                            urls=_parse_urls(args.url), progress=not args.no_progress, manifest=args.manifest)
    print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Check a dataset folder (obtained by hand, or downloaded long ago) against its manifest:
    exit 0 when it matches, 1 naming what differs."""
    from audioml.data.manifests import read_manifest, shipped_manifest, verify_tree

    source = SOURCES[args.name]
    root = Path(args.root) if args.root else Path(args.data_dir or default_data_dir()) / source.folder
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give the dataset's folder with --root, or --data-dir")
    manifest = Path(args.manifest) if args.manifest else shipped_manifest(source.folder)
    report = verify_tree(root, read_manifest(manifest), present_only=args.present_only)
    print(f"{args.name} at {report.root} against {manifest.name}: {report.summary()}")
    return 0 if report.ok else 1


def _prepare_donateacry(args: argparse.Namespace) -> int:
    from audioml.data.donateacry_raw import prepare_raw_uploads

    root = Path(args.root) if args.root else Path(args.data_dir or default_data_dir()) / "donateacry-corpus"
    output = Path(args.output) if args.output else default_prepared_dir()
    report = prepare_raw_uploads(root, output, min_seconds=args.min_seconds, sample_rate=args.sample_rate,
                                 progress=not args.no_progress)
    counts = report["status"].value_counts()
    print(f"{len(report)} uploads: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"prepared folder: {output}  report: {output / 'report.csv'}")
    same = output.resolve() == default_prepared_dir().resolve()
    print(f"train on it: audioml-train data=donateacry data.source=raw data.root={root}"
          + ("" if same else f" data.prepared_dir={output}"))
    return 0


def _info(args: argparse.Namespace) -> int:
    from hydra.utils import instantiate

    from audioml.config import compose_config

    overrides = [f"data={args.name}", *args.overrides]
    if args.data_dir:
        overrides.append(f"paths.data_dir={args.data_dir}")
    cfg = compose_config(overrides)
    module = instantiate(cfg.data)
    module.check_root()
    manifest = module.build_manifest()
    print(f"{type(module).__name__}: root {module.root}")
    print(f"task: {module.task}; {'targets' if module.task == 'regression' else 'classes'} "
          f"({module.num_classes}): {', '.join(module.class_names)}")
    print(f"rows: {len(manifest)} from {manifest['path'].nunique()} files")
    if "group" in manifest.columns:
        print(f"{module.group_name}s: {manifest['group'].nunique()}")
    integer_label = "label" in manifest.columns and manifest["label"].dtype.kind in "iu"  # emotify's hard label
    labels = manifest["label"] if integer_label else manifest.get("target")
    if module.task == "classification" and labels is not None and np.ndim(labels.iloc[0]) == 0:
        for index, count in labels.value_counts().sort_index().items():
            print(f"    {module.class_names[index]:<20} {count}")
    if "partition" in manifest.columns:
        for partition, count in manifest["partition"].value_counts().items():
            print(f"    {partition:<20} {count} windows, {manifest.loc[manifest['partition'] == partition, 'recording'].nunique()} recordings")
    missing = getattr(module, "missing", None)
    if missing is not None and len(missing):
        print(f"missing audio files: {len(missing)} (first: {', '.join(Path(p).name for p in missing['path'][:5])})")
    unstorable = list(getattr(module, "unstorable_names", {}))
    if unstorable:
        print(f"left out, names not valid UTF-8: {len(unstorable)} (first: "
              f"{', '.join(Path(p).name for p in unstorable[:5])}); rename them to use them")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audioml-data", description="Fetch, prepare and describe datasets.")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="datasets that can be downloaded, with URLs and licences")
    listing.set_defaults(run=_list)

    download = commands.add_parser("download", help="download a dataset into <data_dir>/<name folder>")
    download.add_argument("name", choices=[*SOURCES, "muse"])
    download.add_argument("--data-dir", help="data folder (default: $AUDIOML_DATA_DIR or ./data)")
    download.add_argument("--dest", help="exact destination folder (overrides --data-dir)")
    download.add_argument("--force", action="store_true", help="replace an existing dataset folder")
    download.add_argument("--url", action="append", default=[], metavar="FILE=URL",
                          help="get one file of the source from another URL (mirror, moved page)")
    download.add_argument("--manifest", help="check the content against this sha256 manifest instead of the one "
                          "audioml ships (a newer release of the dataset)")
    download.add_argument("--no-progress", action="store_true")
    download.set_defaults(run=_download)

    verify = commands.add_parser("verify", help="check a dataset folder file by file against its sha256 manifest")
    verify.add_argument("name", choices=list(SOURCES))
    verify.add_argument("--data-dir", help="data folder (default: $AUDIOML_DATA_DIR or ./data)")
    verify.add_argument("--root", help="the dataset's own folder (overrides --data-dir)")
    verify.add_argument("--present-only", action="store_true",
                        help="a partial copy: check the files present, count the missing ones without refusing")
    verify.add_argument("--manifest", help="another sha256 manifest than the one audioml ships")
    verify.set_defaults(run=_verify)

    prepare = commands.add_parser("prepare-donateacry",
                                  help="convert and clean the raw 3gp/caf uploads into WAV folders + report.csv")
    prepare.add_argument("--root", help="donateacry-corpus folder (default: <data_dir>/donateacry-corpus)")
    prepare.add_argument("--data-dir", help="data folder (default: $AUDIOML_DATA_DIR or ./data)")
    prepare.add_argument("--output", help="prepared folder (default: $AUDIOML_OUTPUT_DIR or ./outputs, "
                         "then cache/donateacry-raw: where data.source=raw looks)")
    prepare.add_argument("--min-seconds", type=float, default=1.0, help="reject shorter clips (default 1.0)")
    prepare.add_argument("--sample-rate", type=int, default=8000, help="output rate in Hz (default 8000)")
    prepare.add_argument("--no-progress", action="store_true")
    prepare.set_defaults(run=_prepare_donateacry)

    info = commands.add_parser("info", help="what a data config finds on disk (no decoding)")
    info.add_argument("name", help="data config name: donateacry, ravdess, emotify, muse, synthetic")
    info.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.task=gender data.allow_missing=true")
    info.add_argument("--data-dir", help="sets paths.data_dir")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``audioml-data``; returns the exit status (2 for a user error)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # Hydra overrides may come after --data-dir
        if args.command != "info" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, DownloadError) as error:
        print(f"audioml-data {args.command}: {error}", file=sys.stderr)
        return 1 if isinstance(error, DownloadError) else 2
    except OSError as error:  # the file system refused (a data dir that is a file, a full disk): no traceback
        print(f"audioml-data {args.command}: {_os_error_message(error)}", file=sys.stderr)
        return 2 if error.errno == errno.ENOTDIR else 1


if __name__ == "__main__":
    sys.exit(main())
