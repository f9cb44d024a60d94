"""Download datasets from their publishers into the layout the DataModules read.

``fetch`` is resumable (HTTP ``Range`` into ``<name>.part``; the ``.part`` file is never treated
as data, and one the server cannot continue is discarded), verifies a checksum when one is
known, gives up on a stalled transfer, and only renames a complete, verified file to its final
name. ``install`` checks each file's content where the source says how (``RemoteFile.validate``:
a page or a file cut short is not installed), refuses an archive that would expand beyond
``MAX_EXPANSION`` times its size or beyond the free disk space, extracts into a private staging
folder beside the destination and publishes it with one rename, so an interrupted install
leaves no half-filled dataset folder. Before that rename the unpacked tree is checked against the
dataset's content manifest (``audioml.data.manifests``: the sha256 of every file the publisher's
download holds): a missing, extra or altered file is named and nothing is installed.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib
import logging
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from audioml.files import file_digest, publish_directory

log = logging.getLogger(__name__)

__all__ = ["RemoteFile", "DatasetSource", "SOURCES", "DownloadError", "ChecksumError",
           "fetch", "install", "download_dataset", "default_data_dir", "MUSE_INSTRUCTIONS"]

_USER_AGENT = "audioml-data/0.1"
#: An archive whose content is more than this many times its size (and over
#: ``_MIN_REFUSED_EXPANSION`` bytes) is refused as a zip bomb; audio archives expand 1-3 times.
MAX_EXPANSION = 50
_MIN_REFUSED_EXPANSION = 100 * 2**20
#: Fewer bytes than this within one ``timeout`` is a stalled transfer (e.g. 1 byte every 2 s).
_STALLED_BYTES = 16 * 1024


class DownloadError(RuntimeError):
    """A transfer failed or is incomplete; rerunning resumes it unless ``retryable`` is false
    (the server refused the request: a wrong or moved URL)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum (it is deleted)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file a publisher serves.

    Args:
        url: where to get it.
        filename: local name in the downloads folder.
        checksum: ``"sha256:<hex>"`` or ``"md5:<hex>"`` (publishers such as Zenodo state md5),
            ``None`` when the publisher states none (e.g. GitHub branch archives change).
        unpack: a zip archive whose content is installed (else the file itself is copied).
        anchor: for archives, an entry name that marks the content root: the folder holding the
            shallowest entry of that name is what gets installed (archives differ in whether
            they wrap everything in a top folder).
        target: folder inside the dataset folder where the content goes.
        validate: ``"module:function"`` called with the downloaded file before anything is
            installed; it raises ``ValueError`` saying why the content is not the publisher's
            file (a login page instead of a table, a table cut short). For files without a
            published checksum, whose transfer may end early without the server saying so.
    """

    url: str
    filename: str
    checksum: str | None = None
    unpack: bool = False
    anchor: str | None = None
    target: str = "."
    validate: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """A downloadable dataset: its files and how to check the installed layout.

    ``folder`` is the dataset folder name under the data directory; ``expect`` lists relative
    paths that must exist after installing; ``manifest``: the content manifest the unpacked tree
    must match (``None``: the one audioml ships for ``folder``).
    """

    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    expect: tuple[str, ...]
    homepage: str
    license: str
    manifest: Path | None = None


#: The donateacry-corpus commit whose three data folders ``donateacry-corpus.sha256`` lists.
DONATEACRY_COMMIT = "6baf5aca0460964ad072653585837f968a87c2af"

SOURCES: dict[str, DatasetSource] = {
    "donateacry": DatasetSource(
        name="donateacry", folder="donateacry-corpus",
        # pinned to the commit its manifest was computed from: a branch archive's bytes can change
        files=(RemoteFile(f"https://github.com/gveres/donateacry-corpus/archive/{DONATEACRY_COMMIT}.zip",
                          f"donateacry-corpus-{DONATEACRY_COMMIT[:12]}.zip", None, unpack=True,
                          anchor="donateacry_corpus_cleaned_and_updated_data"),),
        expect=("donateacry_corpus_cleaned_and_updated_data", "donateacry-android-upload-bucket",
                "donateacry-ios-upload-bucket"),
        homepage="https://github.com/gveres/donateacry-corpus", license="ODbL 1.0 / DbCL 1.0"),
    "ravdess": DatasetSource(
        name="ravdess", folder="ravdess",
        files=(RemoteFile("https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip",
                          "Audio_Speech_Actors_01-24.zip", "md5:bc696df654c87fed845eb13823edef8a",
                          unpack=True, anchor="Actor_01"),),
        expect=("Actor_01", "Actor_24"),
        homepage="https://zenodo.org/records/1188976", license="CC BY-NC-SA 4.0"),
    "emotify": DatasetSource(
        name="emotify", folder="emotify",
        files=(RemoteFile("http://www2.projects.science.uu.nl/memotion/emotifydata/emotifymusic.zip",
                          "emotifymusic.zip", None, unpack=True, anchor="classical", target="emotifymusic"),
               RemoteFile("http://www2.projects.science.uu.nl/memotion/emotifydata/data.csv", "data.csv",
                          validate="audioml.data.emotify:check_annotations")),
        expect=("data.csv", "emotifymusic/classical", "emotifymusic/rock", "emotifymusic/electronic",
                "emotifymusic/pop"),
        homepage="http://www2.projects.science.uu.nl/memotion/emotifydata/",
        license="no formal licence; the publishers ask to cite Aljanaki, Wiering & Veltkamp (2016)"),
}

MUSE_INSTRUCTIONS = (
    "MuSe-Stress (Ulm-TSST) cannot be downloaded automatically: the MuSe 2021/2022 challenge "
    "organisers license it under an End User License Agreement (see https://www.muse-challenge.org). "
    "After they grant access, unpack the package so that it reads "
    "<data_dir>/muse/c3_muse_stress_2022/{raw_data/audio,label_segments,metadata/partition.csv} "
    "(a 2021 package with label_segments/arousal works as well), or point data.root at the "
    "package folder.")


def default_data_dir() -> Path:
    """``$AUDIOML_DATA_DIR`` or ``./data`` (the same default as ``paths.data_dir``)."""
    return Path(os.environ.get("AUDIOML_DATA_DIR", "./data")).expanduser()


def _verify(path: Path, checksum: str | None) -> None:
    if checksum is None:
        return
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("sha256", "md5") or not expected:
        raise ValueError(f"checksum {checksum!r}: use 'sha256:<hex>' or 'md5:<hex>'")
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(f"{path.name}: {algorithm} {actual} does not match the published "
                            f"{expected}; the file was deleted. Rerun to download it again; if it fails "
                            f"again the publisher's file changed or the transfer is being altered.")


def _transfer(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its size when the server allows)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            total = _range_total(error.headers.get("Content-Range", ""))
            if total == offset:  # nothing left to send: the .part is already complete
                return
            # A .part the file cannot continue (larger: left by another archive or version) is not this file.
            log.warning("%s: the server cannot continue the %d bytes kept in %s (the file has %s bytes): that "
                        "part is not from this file; discarded, downloading from the start", url, offset, part.name,
                        total if total is not None else "an unknown number of")
            part.unlink(missing_ok=True)
            return _transfer(url, part, progress, timeout)
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}", retryable=error.code >= 500) from error
    with response:
        length = response.headers.get("Content-Length")
        if offset and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise DownloadError(f"{url}: server answered range {content_range!r} to a request from byte {offset}")
            mode, start = "ab", offset
        else:  # the server ignores Range: start over
            mode, start = "wb", 0
        total = start + int(length) if length is not None else None
        from tqdm.auto import tqdm

        read = getattr(response, "read1", response.read)  # what arrived, so a stall is seen while it lasts
        window_start, window_bytes = time.monotonic(), 0
        with open(part, mode) as file, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                            desc=part.name[:-5], disable=not progress, leave=False) as bar:
            while True:
                block = read(1 << 16)
                if not block:
                    break
                file.write(block)
                bar.update(len(block))
                window_bytes += len(block)
                if time.monotonic() - window_start >= timeout:
                    if window_bytes < _STALLED_BYTES:
                        file.flush()
                        raise DownloadError(f"{url}: the transfer stalled ({window_bytes} bytes in the last "
                                            f"{timeout:.0f} s); {part.stat().st_size} bytes kept in {part}, rerun to "
                                            "resume or pass a mirror with --url FILE=URL", retryable=False)
                    window_start, window_bytes = time.monotonic(), 0
        size = part.stat().st_size
        if total is not None and size != total:
            raise DownloadError(f"{url}: connection closed after {size} of {total} bytes")


def _range_total(content_range: str) -> int | None:
    """The full size in a ``Content-Range: bytes */<size>`` (or ``bytes a-b/<size>``) header."""
    _, _, total = content_range.rpartition("/")
    return int(total) if total.strip().isdigit() else None


def unreachable_reason(url: str, error: BaseException) -> str | None:
    """A message when ``error`` says the host cannot be reached at all (its name does not
    resolve, or nothing listens there), where retrying or "resuming" cannot help; else ``None``
    (a transfer cut short, which resuming continues)."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    host = urllib.parse.urlsplit(url).netloc or url
    if isinstance(reason, socket.gaierror):
        return (f"cannot reach {host}: its name does not resolve ({reason}). This machine may be offline; "
                "check the network, or pass a mirror with --url FILE=URL")
    if isinstance(reason, ConnectionRefusedError):
        return f"cannot reach {host}: the connection was refused (nothing listens there); check the URL or --url"
    return None


def fetch(url: str, destination: str | Path, checksum: str | None = None, retries: int = 3,
          progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination``, resuming ``destination.part`` when present.

    The checksum (``"sha256:<hex>"``/``"md5:<hex>"``) is verified before the rename; a file
    already at ``destination`` that verifies is reused without network access.
    Raises ``DownloadError`` after ``retries`` failed resumptions (the ``.part`` stays, so a
    rerun continues), ``ChecksumError`` on a mismatch (the bad file is deleted).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.is_file():
        try:
            _verify(destination, checksum)
            return destination
        except ChecksumError as error:  # a stale or corrupted earlier download: fetch it again
            log.warning("%s", error)
    part = destination.with_name(destination.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, progress, timeout)
            break
        except (DownloadError, urllib.error.URLError, http.client.HTTPException, OSError) as error:
            if isinstance(error, DownloadError) and not error.retryable:
                raise
            if (unreachable := unreachable_reason(url, error)) is not None:
                raise DownloadError(unreachable, retryable=False) from error
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(f"{url}: {error}; {have} bytes kept in {part}, rerun to resume") from error
            log.warning("download of %s interrupted at %d bytes (%s); resuming", url, have, error)
            time.sleep(min(2 ** attempt, 10) * 0.1)
    _verify(part, checksum)
    os.replace(part, destination)
    return destination


def _content_root(extracted: Path, anchor: str | None) -> Path:
    if anchor is None:
        entries = [p for p in extracted.iterdir() if p.name != "__MACOSX"]
        return entries[0] if len(entries) == 1 and entries[0].is_dir() else extracted
    matches = sorted(extracted.rglob(anchor), key=lambda p: (len(p.parts), str(p)))
    matches = [m for m in matches if "__MACOSX" not in m.parts]
    if not matches:
        raise DownloadError(f"archive has no entry named {anchor!r}: not the expected file")
    return matches[0].parent


def _check_content(remote: RemoteFile, path: Path) -> None:
    """Run ``remote.validate`` on the downloaded file; a file it refuses is deleted (a rerun
    fetches it again, no ``--force`` needed) and the refusal is a ``DownloadError``."""
    if remote.validate is None:
        return
    module, _, function = remote.validate.partition(":")
    try:
        getattr(importlib.import_module(module), function)(path)
    except ValueError as error:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{remote.url} did not give the published {remote.filename}: {error}. The file was "
                            "deleted and nothing installed; rerun (a transfer cut short, a captive-portal page), or "
                            f"pass a mirror with --url {remote.filename}=URL", retryable=False) from error


def _check_expansion(archive: zipfile.ZipFile, path: Path, staging: Path) -> None:
    """Refuse to extract an archive that expands far beyond its size (a zip bomb) or beyond the
    free space of the destination's disk, before anything is written."""
    content = sum(entry.file_size for entry in archive.infolist())
    size = path.stat().st_size
    if content > max(MAX_EXPANSION * size, _MIN_REFUSED_EXPANSION):
        raise DownloadError(f"{path.name}: {size / 2**20:.1f} MiB that would expand to {content / 2**20:.0f} MiB "
                            f"(over {MAX_EXPANSION} times its size): not a dataset archive; nothing installed",
                            retryable=False)
    free = shutil.disk_usage(staging).free
    if content > free:
        raise DownloadError(f"{path.name} needs {content / 2**20:.0f} MiB to unpack, {staging.parent} has "
                            f"{free / 2**20:.0f} MiB free: free some space or choose another --data-dir / --dest",
                            retryable=False)


def _check_manifest(source: DatasetSource, staging: Path) -> None:
    """Refuse an unpacked tree that is not, file for file, the one the manifest lists."""
    from audioml.data.manifests import read_manifest, shipped_manifest, verify_tree

    manifest = source.manifest or shipped_manifest(source.folder)
    report = verify_tree(staging, read_manifest(manifest))
    if not report.ok:
        raise DownloadError(f"{source.name}: the download is not the published dataset ({report.summary()}), "
                            f"checked against {manifest}; nothing installed. A mirror or a cut transfer gave other "
                            "files: rerun, or use the publisher's URL", retryable=False)
    log.info("%s: all %d files match the manifest %s", source.name, report.checked, Path(manifest).name)


def install(source: DatasetSource, destination: str | Path, downloads: str | Path | None = None,
            force: bool = False, keep_archives: bool = False, progress: bool = True) -> Path:
    """Download every file of ``source`` and publish the dataset folder at ``destination``.

    Files go to ``downloads`` (default ``<destination parent>/.downloads``); the dataset is
    assembled in a staging folder and renamed into place once its ``expect`` paths exist.
    An existing ``destination`` is kept unless ``force``. Returns ``destination``.
    """
    destination = Path(destination).expanduser().resolve()
    if destination.exists() and any(destination.iterdir()) and not force:
        log.info("%s already exists; not downloading %s again (use force to replace it)", destination, source.name)
        return destination
    downloads = Path(downloads) if downloads is not None else destination.parent / ".downloads"
    local = [fetch(f.url, downloads / f.filename, f.checksum, progress=progress) for f in source.files]
    for remote, path in zip(source.files, local):
        _check_content(remote, path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-staging-", dir=destination.parent))
    try:
        for remote, path in zip(source.files, local):
            target = staging / remote.target
            target.mkdir(parents=True, exist_ok=True)
            if not remote.unpack:
                shutil.copy2(path, target / remote.filename)
                continue
            extracted = staging / f".extract-{remote.filename}"
            try:
                with zipfile.ZipFile(path) as archive:
                    _check_expansion(archive, path, staging)
                    archive.extractall(extracted)
            except zipfile.BadZipFile as error:
                path.unlink(missing_ok=True)
                raise DownloadError(f"{path}: not a valid zip archive ({error}); deleted, rerun to fetch it again") from error
            root = _content_root(extracted, remote.anchor)
            for entry in root.iterdir():
                if entry.name != "__MACOSX":
                    os.replace(entry, target / entry.name)
            shutil.rmtree(extracted)
        missing = [p for p in source.expect if not (staging / p).exists()]
        if missing:
            raise DownloadError(f"{source.name}: the downloaded files lack {missing}; the publisher's "
                                f"layout changed, see {source.homepage}")
        _check_manifest(source, staging)
        publish_directory(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if not keep_archives:
        for path in local:
            path.unlink(missing_ok=True)
    log.info("installed %s into %s (licence: %s)", source.name, destination, source.license)
    return destination


def download_dataset(name: str, data_dir: str | Path | None = None, destination: str | Path | None = None,
                     force: bool = False, urls: dict[str, str] | None = None, progress: bool = True,
                     manifest: str | Path | None = None) -> Path:
    """Install dataset ``name`` (a key of ``SOURCES``) into ``destination`` (default
    ``<data_dir>/<folder>``; ``data_dir`` defaults to ``default_data_dir()``).

    ``urls`` maps a file name of the source to another URL (a mirror, or a moved publisher page);
    ``manifest`` checks the content against another manifest than the shipped one (a newer release).
    Raises ``ValueError`` for ``muse`` (licensed; see ``MUSE_INSTRUCTIONS``) or unknown names.
    """
    if name == "muse":
        raise ValueError(MUSE_INSTRUCTIONS)
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}: downloadable are {sorted(SOURCES)} (muse needs a licence)")
    source = SOURCES[name]
    if urls:
        unknown = sorted(set(urls) - {f.filename for f in source.files})
        if unknown:
            raise ValueError(f"{name}: no file named {unknown}; files are {[f.filename for f in source.files]}")
        files = tuple(dataclasses.replace(f, url=urls.get(f.filename, f.url)) for f in source.files)
        source = dataclasses.replace(source, files=files)
    if manifest is not None:
        source = dataclasses.replace(source, manifest=Path(manifest))
    if destination is None:
        destination = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        destination = destination / source.folder
    return install(source, destination, force=force, progress=progress)
