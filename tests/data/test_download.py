"""Download: a real HTTP server on 127.0.0.1 serving small archives (Range honoured, first
response optionally cut short): success, resume, checksum mismatch, atomic install."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers.servers import FileServer, emotify_csv, manifest_file, wav_bytes, zip_bytes

from audioml.data import download
from audioml.data.download import (
    ChecksumError,
    DatasetSource,
    DownloadError,
    RemoteFile,
    download_dataset,
    fetch,
    install,
)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_fetch_success_verifies_checksum(tmp_path):
    payload = np.random.default_rng(0).bytes(300_000)
    with FileServer({"blob.bin": payload}) as server:
        path = fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _sha256(payload), progress=False)
    assert path.read_bytes() == payload
    assert not (tmp_path / "blob.bin.part").exists()
    # md5 (as Zenodo publishes) is accepted too, and a verified file is reused without the network
    md5 = "md5:" + hashlib.md5(payload).hexdigest()
    assert fetch("http://127.0.0.1:9/unreachable", tmp_path / "blob.bin", md5, progress=False) == path


def test_fetch_resumes_after_interrupted_transfer(tmp_path):
    payload = np.random.default_rng(1).bytes(400_000)
    with FileServer({"blob.bin": payload}, cut_first={"blob.bin"}) as server:
        # without retries the cut transfer fails and keeps its bytes in the .part file
        with pytest.raises(DownloadError, match="rerun to resume"):
            fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _sha256(payload), retries=0, progress=False)
        part = tmp_path / "blob.bin.part"
        assert not (tmp_path / "blob.bin").exists()
        kept = part.stat().st_size
        assert 0 < kept < len(payload)
        # the rerun asks only for the rest and produces the exact file
        path = fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _sha256(payload), retries=0, progress=False)
        assert server.requests[-1] == ("blob.bin", f"bytes={kept}-")
    assert path.read_bytes() == payload
    assert not part.exists()


def test_fetch_retries_by_itself_and_resumes_a_preexisting_part(tmp_path):
    payload = np.random.default_rng(2).bytes(200_000)
    (tmp_path / "blob.bin.part").write_bytes(payload[:50_000])
    with FileServer({"blob.bin": payload}, cut_first={"blob.bin"}) as server:
        path = fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _sha256(payload), retries=2, progress=False)
        ranges = [r for _, r in server.requests]
    assert ranges[0] == "bytes=50000-"
    assert ranges[1] == f"bytes={50_000 + 75_000}-"  # half of the 150 000 remaining bytes arrived
    assert path.read_bytes() == payload


def test_fetch_restarts_when_server_ignores_range(tmp_path):
    payload = np.random.default_rng(3).bytes(100_000)
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 10_000)
    with FileServer({"blob.bin": payload}, honour_range=False) as server:
        path = fetch(f"{server.url}/blob.bin", tmp_path / "blob.bin", _sha256(payload), progress=False)
    assert path.read_bytes() == payload


def test_checksum_mismatch_rejected_and_nothing_installed(tmp_path):
    archive = zip_bytes({"Actor_01/03-01-01-01-01-01-01.wav": wav_bytes()})
    with FileServer({"speech.zip": archive}) as server:
        source = DatasetSource("ravdess", "ravdess", (RemoteFile(f"{server.url}/speech.zip", "speech.zip",
                                                                 "sha256:" + "0" * 64, unpack=True,
                                                                 anchor="Actor_01"),),
                               expect=("Actor_01",), homepage="-", license="-")
        with pytest.raises(ChecksumError, match="does not match"):
            install(source, tmp_path / "data" / "ravdess", progress=False)
    assert not (tmp_path / "data" / "ravdess").exists()
    leftovers = [p.name for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert leftovers == []  # neither the bad archive nor a .part is kept
    assert not list((tmp_path / "data").glob(".ravdess-staging-*"))


def test_missing_url_is_not_retried(tmp_path):
    with FileServer({}) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(f"{server.url}/nothing.zip", tmp_path / "nothing.zip", progress=False)
        assert len(server.requests) == 1


def test_install_layouts_from_archives(tmp_path):
    """A GitHub-style archive (one wrapping folder) and a flat archive plus a plain file."""
    wav = wav_bytes()
    corpus_entries = {"donateacry-corpus-master/README.md": b"corpus",
                      "donateacry-corpus-master/donateacry_corpus_cleaned_and_updated_data/hungry/a.wav": wav,
                      "donateacry-corpus-master/donateacry-android-upload-bucket/b.3gp": b"3gp",
                      "donateacry-corpus-master/donateacry-ios-upload-bucket/c.caf": b"caf"}
    github = zip_bytes(corpus_entries)
    music_entries = {f"{genre}/1.mp3": b"mp3" for genre in ("classical", "rock", "electronic", "pop")}
    music = zip_bytes(music_entries)
    csv = emotify_csv()  # all 400 tracks: a shorter table is refused as incomplete
    corpus_manifest = manifest_file(tmp_path / "corpus.sha256",
                                    {k: v for k, v in corpus_entries.items() if not k.endswith("README.md")},
                                    "donateacry-corpus-master/")
    emotify_manifest = manifest_file(tmp_path / "emotify.sha256", {"data.csv": csv, **{
        f"emotifymusic/{name}": data for name, data in music_entries.items()}})
    with FileServer({"master.zip": github, "emotifymusic.zip": music, "data.csv": csv}) as server:
        corpus = DatasetSource("donateacry", "donateacry-corpus",
                               (RemoteFile(f"{server.url}/master.zip", "master.zip", _sha256(github), True,
                                           "donateacry_corpus_cleaned_and_updated_data"),),
                               download.SOURCES["donateacry"].expect, "-", "-", Path(corpus_manifest))
        installed = install(corpus, tmp_path / "donateacry-corpus", progress=False)
        assert (installed / "donateacry_corpus_cleaned_and_updated_data/hungry/a.wav").read_bytes() == wav
        assert (installed / "README.md").is_file()  # outside the manifest's folders: kept, not checked
        emotify = download.SOURCES["emotify"]
        urls = {"emotifymusic.zip": f"{server.url}/emotifymusic.zip", "data.csv": f"{server.url}/data.csv"}
        target = download_dataset("emotify", data_dir=tmp_path, urls=urls, progress=False,
                                  manifest=emotify_manifest)
    assert target == (tmp_path / emotify.folder).resolve()
    assert (target / "data.csv").read_bytes() == csv
    assert sorted(p.name for p in (target / "emotifymusic").iterdir()) == ["classical", "electronic", "pop", "rock"]
    assert not (tmp_path / ".downloads" / "emotifymusic.zip").exists()  # archives removed after install


def test_unexpected_archive_layout_is_rejected_atomically(tmp_path):
    archive = zip_bytes({"something_else/x.txt": b"x"})
    with FileServer({"a.zip": archive}) as server:
        source = DatasetSource("ravdess", "ravdess", (RemoteFile(f"{server.url}/a.zip", "a.zip", unpack=True,
                                                                 anchor="Actor_01"),), ("Actor_01",), "-", "-")
        with pytest.raises(DownloadError, match="Actor_01"):
            install(source, tmp_path / "ravdess", progress=False)
    assert not (tmp_path / "ravdess").exists()


def test_muse_and_unknown_names_explain_themselves(tmp_path):
    with pytest.raises(ValueError, match="End User License Agreement.*c3_muse_stress_2022"):
        download_dataset("muse", data_dir=tmp_path)
    with pytest.raises(ValueError, match="downloadable are"):
        download_dataset("nope", data_dir=tmp_path)


def test_datamodule_downloads_in_prepare_data(tmp_path, monkeypatch):
    """data.download=true: RAVDESS installs from the (local) publisher and loads."""
    from audioml.data.ravdess import RavdessDataModule

    entries = {f"Actor_{a:02d}/03-01-0{e}-01-01-01-{a:02d}.wav": wav_bytes(0.4, 16000)
               for a in (1, 2, 3, 24) for e in (1, 5)}
    archive = zip_bytes(entries)
    with FileServer({"Audio_Speech_Actors_01-24.zip": archive}) as server:
        real = download.SOURCES["ravdess"]
        monkeypatch.setitem(download.SOURCES, "ravdess", DatasetSource(
            real.name, real.folder, (RemoteFile(f"{server.url}/Audio_Speech_Actors_01-24.zip",
                                                real.files[0].filename, _sha256(archive), True, "Actor_01"),),
            real.expect, real.homepage, real.license, Path(manifest_file(tmp_path / "ravdess.sha256", entries))))
        module = RavdessDataModule(tmp_path / "ravdess", download=True, sample_rate=16000, clip_seconds=0.5,
                                   val_fraction=0.25, test_fraction=0.25)
        module.prepare_data()
        module.setup()
    assert len(module.manifest) == 8
    assert sorted(module.manifest["actor"].unique()) == [1, 2, 3, 24]


def test_unreachable_host_is_named_not_resumed(tmp_path, caplog):
    import socket
    import urllib.error

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on this port now
    with pytest.raises(DownloadError, match=rf"cannot reach 127.0.0.1:{port}: the connection was refused"):
        download.fetch(f"http://127.0.0.1:{port}/data.csv", tmp_path / "data.csv", retries=3, progress=False)
    assert "resuming" not in caplog.text  # said at once, not after three "resuming" retries
    # a name that does not resolve (what an offline machine reports) is said as such
    offline = urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))
    assert download.unreachable_reason("https://zenodo.org/x.zip", offline).startswith(
        "cannot reach zenodo.org: its name does not resolve")
    assert download.unreachable_reason("https://zenodo.org/x.zip", ConnectionResetError()) is None


@pytest.mark.parametrize("host, reason", [("nonexistent.invalid", "its name does not resolve"),
                                          ("127.0.0.1:{port}", "the connection was refused")])
def test_offline_download_stops_saying_the_host_cannot_be_reached(tmp_path, caplog, capsys, monkeypatch, host,
                                                                   reason):
    """Through ``audioml-data download``, with the real resolver (``.invalid`` never resolves,
    RFC 6761) and a real closed port: one line naming the host, at once, nothing left behind."""
    import socket
    import time

    from audioml.data import cli

    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # a proxy would answer for the host
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    host = host.format(port=closed.getsockname()[1])
    closed.close()
    started = time.monotonic()
    status = cli.main(["download", "emotify", "--data-dir", str(tmp_path), "--no-progress",
                       "--url", f"emotifymusic.zip=http://{host}/emotifymusic.zip",
                       "--url", f"data.csv=http://{host}/data.csv"])
    assert status == 1 and time.monotonic() - started < 10
    error = capsys.readouterr().err
    assert f"cannot reach {host}: {reason}" in error and error.count("\n") == 1, error
    assert "resuming" not in caplog.text and "interrupted" not in error
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no .part, no half-installed dataset
