"""``audioml-data``: list, download (local HTTP server), prepare-donateacry, info."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
from helpers.datasets import make_raw_corpus
from helpers.servers import FileServer, manifest_file, wav_bytes, zip_bytes

from audioml.data.cli import main
from audioml.data.download import SOURCES


def test_list_and_muse_message(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip" in out
    assert "md5:bc696df654c87fed845eb13823edef8a" in out  # the publisher's checksum of the RAVDESS zip
    assert "github.com/gveres/donateacry-corpus/archive/6baf5aca0460964ad072653585837f968a87c2af.zip" in out
    assert main(["download", "muse"]) == 2
    assert "End User License Agreement" in capsys.readouterr().err


def test_download_with_url_override(tmp_path, capsys):
    entries = {"donateacry-corpus-master/donateacry_corpus_cleaned_and_updated_data/hungry/x.wav": wav_bytes(),
               "donateacry-corpus-master/donateacry-android-upload-bucket/a.3gp": b"a",
               "donateacry-corpus-master/donateacry-ios-upload-bucket/b.caf": b"b"}
    archive = zip_bytes(entries)
    name = SOURCES["donateacry"].files[0].filename
    with FileServer({"master.zip": archive}) as server:
        # against the shipped manifest these three files are not the corpus: refused, nothing installed
        assert main(["download", "donateacry", "--data-dir", str(tmp_path), "--no-progress",
                     "--url", f"{name}={server.url}/master.zip"]) == 1
        assert "not the published dataset" in capsys.readouterr().err
        assert not (tmp_path / "donateacry-corpus").exists()
        status = main(["download", "donateacry", "--data-dir", str(tmp_path), "--no-progress",
                       "--url", f"{name}={server.url}/master.zip",
                       "--manifest", manifest_file(tmp_path / "mine.sha256", entries, "donateacry-corpus-master/")])
    assert status == 0
    assert (tmp_path / "donateacry-corpus/donateacry_corpus_cleaned_and_updated_data/hungry/x.wav").is_file()
    assert capsys.readouterr().out.strip().endswith("donateacry-corpus")
    assert main(["download", "donateacry", "--data-dir", str(tmp_path), "--url", "nope=http://x"]) == 2
    with FileServer({}) as server:  # a moved file: a clear failure, exit status 1
        assert main(["download", "ravdess", "--data-dir", str(tmp_path / "other"), "--no-progress",
                     "--url", f"Audio_Speech_Actors_01-24.zip={server.url}/gone.zip"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_prepare_donateacry(tmp_path, capsys):
    root = make_raw_corpus(tmp_path / "donateacry-corpus")
    assert main(["prepare-donateacry", "--root", str(root), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "13 uploads: kept 8" in out and "data.source=raw" in out
    assert pd.read_csv(tmp_path / "out" / "report.csv")["status"].value_counts()["kept"] == 8
    assert main(["prepare-donateacry", "--root", str(tmp_path / "missing")]) == 2
    assert "donateacry-android-upload-bucket" in capsys.readouterr().err


def test_info_on_real_samples(shared_data, capsys):
    assert main(["info", "ravdess", "--data-dir", str(shared_data), "data.task=gender"]) == 0
    out = capsys.readouterr().out
    assert "classes (2): male, female" in out and "rows: 120 from 120 files" in out and "actors: 2" in out
    assert main(["info", "emotify", "--data-dir", str(shared_data)]) == 2
    assert "388 of 397 tracks" in capsys.readouterr().err
    assert main(["info", "emotify", "--data-dir", str(shared_data), "data.allow_missing=true"]) == 0
    assert "missing audio files: 388" in capsys.readouterr().out


def test_console_script_is_installed():
    process = subprocess.run([sys.executable, "-c", "from importlib.metadata import entry_points; "
                              "print([e.value for e in entry_points(group='console_scripts', name='audioml-data')])"],
                             capture_output=True, text=True, check=True)
    assert "audioml.data.cli:main" in process.stdout
