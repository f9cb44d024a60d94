"""The reliability cases of ../shared/RELIABILITY_CASES.md that are fixed, one test each (ids as
there): bad input is named or skipped and listed, a fault leaves a resumable state and no
RUNNING MLflow run, no MLflow run is opened for a config that cannot train, and a run never
mixes two data sets. (T2/T3: test_checkpoint_record.py; M1: test_tracking_server.py; C1/C2:
test_run_lock.py; D16: test_evaluation.py.)"""

from __future__ import annotations

import os
import shutil
import signal

import lightning as L
import mlflow
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers.datasets import make_cleaned_corpus
from helpers.runners import run_entry_point

from audioml.config import compose_config
from audioml.data.donateacry import DonateacryDataModule
from audioml.run.fit.checkpointing import find_resume_checkpoint
from audioml.run.fit.compose import build_datamodule
from audioml.run.record import tracking
from audioml.run.record.store import Store
from audioml.run.rundir import RunDir

TINY = ["data=synthetic", "model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.num_workers=0"]


@pytest.mark.parametrize("override, message", [
    ("data.clip_seconds=-1", "data.clip_seconds"),                       # K3
    ("data.clip_seconds=0", "data.clip_seconds"),                        # K4
    ("model.sample_rate=0", "model.sample_rate"),                        # K14
    ("model.sample_rate=-16000", "model.sample_rate"),                   # K15
])
def test_impossible_decode_settings_name_the_key_before_any_decoding(tmp_path, override, message):
    cfg = compose_config(["data=donateacry", "model=cnn", f"paths.output_dir={tmp_path}", override])
    with pytest.raises(Exception, match=message) as error:  # Hydra wraps the DataModule's ValueError
        build_datamodule(cfg)
    assert "ValueError" in repr(error.value) and "negative dimensions" not in str(error.value)
    assert not (tmp_path / "cache").exists()  # refused where the value enters, nothing decoded


def _runs(output):
    store = output / "mlflow" / "mlflow.db"
    if not store.is_file():
        return []
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_trainer_setting_that_cannot_train_is_refused_before_the_mlflow_run_opens(tmp_path):  # K8
    process = run_entry_point("audioml.train", *TINY, "trainer.max_epochs=-5", f"paths.output_dir={tmp_path}",
                              check=False)
    assert process.returncode != 0 and "max_epochs" in process.stderr
    assert not [r for r in _runs(tmp_path) if r.info.status == "RUNNING"]
    assert _runs(tmp_path) == []  # validated before the run opened: nothing to end


def test_a_binary_mlflow_run_id_file_is_set_aside_and_a_new_run_started(tmp_path, caplog):  # P6
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = RunDir(tmp_path / "run").create()
    run_id_file = run.run_id_file
    run_id_file.write_bytes(b"\xff\xfe\x00garbage\x80")
    logger = tracking.open_run("e", "r", Store(uri), run)
    assert logger.run_id and run_id_file.read_text() == logger.run_id
    assert (tmp_path / "run" / "mlflow_run_id.unreadable").read_bytes() == b"\xff\xfe\x00garbage\x80"
    assert "mlflow_run_id" in caplog.text and "not a run id" in caplog.text


def test_a_checkpoint_that_passes_the_zip_check_but_cannot_load_falls_back(tmp_path, caplog):  # P16
    run = RunDir(tmp_path)
    bad, good = run.resume_checkpoints()
    run.checkpoints.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    torch.save({"state_dict": {"w": torch.ones(2)}, "object": pd.Timestamp("2020-01-01")}, bad)  # a pickled object
    assert find_resume_checkpoint(run) == good
    assert (run.checkpoints / "last.ckpt.damaged").is_file() and "cannot be loaded" in caplog.text


def test_every_audio_extension_in_any_case_is_read_and_others_are_listed(tmp_path, caplog):  # B16
    root = make_cleaned_corpus(tmp_path / "donateacry-corpus")
    tired = root / "donateacry_corpus_cleaned_and_updated_data" / "tired"
    first = sorted(tired.iterdir())[0]
    audio, rate = sf.read(first)
    shutil.copy(first, tired / first.name.replace(".wav", ".WAV").replace("-1430", "-2430"))
    sf.write(tired / first.name.replace(".wav", ".flac").replace("-1430", "-3430"), audio, rate)
    (tired / "notes.txt").write_text("not audio")
    module = DonateacryDataModule(root=root, sample_rate=8000, clip_seconds=1.0)
    module.setup()
    assert (module.manifest["reason"] == "tired").sum() == 6 + 2
    assert "notes.txt" in caplog.text and "not audio" in caplog.text


def test_a_dataset_without_one_usable_file_says_so_and_lists_them(tmp_path):  # B18
    root = tmp_path / "data" / "donateacry-corpus" / "donateacry_corpus_cleaned_and_updated_data" / "hungry"
    root.mkdir(parents=True)
    for index in range(6):
        (root / f"0000000{index}-aaaa-aaaa-aaaa-aaaaaaaaaaaa-1430000000-1.7-f-26-hu.wav").write_bytes(b"")
    output = tmp_path / "out"
    process = run_entry_point("audioml.train", "data=donateacry", "model=cnn", "trainer.max_epochs=1",
                              f"paths.output_dir={output}", env={"AUDIOML_DATA_DIR": str(tmp_path / "data")},
                              check=False)
    assert process.returncode != 0 and "no usable files" in process.stderr and "IndexError" not in process.stderr
    (listed,) = list(output.rglob("skipped_files.csv"))
    assert len(pd.read_csv(listed)) == 6


def test_a_killed_builders_temporary_files_are_removed_by_the_next_build(tmp_path):  # P1/P2
    from audioml.data.cache import ArrayCache

    cache = ArrayCache(tmp_path, "waveforms", "k1")
    orphan = tmp_path / ".waveforms-k1.npy.abcd1234.npy"
    orphan.write_bytes(b"\0" * 4096)  # what a builder killed with -9 leaves
    os.utime(orphan, (1, 1))

    def build(out):
        out[:] = 1.0
        return {}

    array, _ = cache.get_or_build((3, 2), build)
    assert array.shape == (3, 2) and float(array.min()) == 1.0 and not orphan.exists()


def test_a_killed_runs_partial_checkpoint_writes_are_removed_on_the_next_start(tmp_path):  # P1 (checkpoints)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    orphan = run_dir / "checkpoints" / ".last-incoming.ckpt.x1y2z3.tmp"
    orphan.write_bytes(b"\0" * 1024)
    cfg = compose_config([*TINY, f"paths.output_dir={tmp_path / 'out'}", "logger.enabled=false"])
    from audioml.run.fit.training import run_evaluation

    metrics = run_evaluation(cfg, run_dir)
    assert "test/acc" in metrics and not orphan.exists()


def test_a_data_dir_that_is_a_file_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):  # K19
    from audioml.data.cli import main
    from audioml.data.download import SOURCES

    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file")
    monkeypatch.setenv("AUDIOML_DATA_DIR", str(not_a_folder))
    status = main(["download", "donateacry", "--no-progress",
                   "--url", f"{SOURCES['donateacry'].files[0].filename}=http://127.0.0.1:9/never-fetched.zip"])
    error = capsys.readouterr().err
    assert status == 2 and len(error.strip().splitlines()) == 1
    assert str(not_a_folder) in error and "is a file, not a folder" in error and "Traceback" not in error


def test_a_symlink_loop_and_a_dangling_link_named_like_clips_are_skipped_and_listed(tmp_path):  # B12/B13
    root = make_cleaned_corpus(tmp_path / "donateacry-corpus")
    hungry = root / "donateacry_corpus_cleaned_and_updated_data" / "hungry"
    clips = len(list(hungry.iterdir()))
    loop = hungry / "11111111-1111-1111-1111-111111111111-1430000000000-1.7-f-26-hu.wav"
    loop.symlink_to(loop.name)
    dangling = hungry / "22222222-2222-2222-2222-222222222222-1430000000000-1.7-f-26-hu.wav"
    dangling.symlink_to(tmp_path / "nonexistent" / "x.wav")
    module = DonateacryDataModule(root=root, sample_rate=8000, clip_seconds=1.0, cache_dir=tmp_path / "cache")
    module.setup()
    assert (module.manifest["reason"] == "hungry").sum() == clips
    reasons = dict(zip(module.skipped["path"], module.skipped["reason"]))
    assert "symbolic link loop" in reasons[str(loop)]
    assert "broken symbolic link" in reasons[str(dangling)] and "nonexistent" in reasons[str(dangling)]
    dangling.unlink()  # once the link is fixed the cache key changes and the clip is read
    shutil.copy(next(p for p in sorted(hungry.iterdir()) if not p.is_symlink()), dangling)
    again = DonateacryDataModule(root=root, sample_rate=8000, clip_seconds=1.0, cache_dir=tmp_path / "cache")
    again.setup()
    assert (again.manifest["reason"] == "hungry").sum() == clips + 1 and list(again.skipped["path"]) == [str(loop)]


def _copy_under_a_non_utf8_name(folder, stem: bytes = b"0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a-14\xff\xfe00-1.7-f-26-hu"):
    source = next(p for p in sorted(folder.iterdir()) if p.is_file())
    target = os.fsencode(folder) + b"/" + stem + source.suffix.encode()
    shutil.copy(os.fsencode(source), target)
    return os.fsencode(target).decode("utf-8", "backslashreplace")


def test_a_non_utf8_file_name_is_skipped_and_listed_in_every_folder_dataset(tmp_path, capsys):  # B11
    from helpers.datasets import make_ravdess, make_raw_corpus

    from audioml.data.cli import main
    from audioml.data.custom import FolderDataModule
    from audioml.data.donateacry_raw import prepare_raw_uploads
    from audioml.data.ravdess import RavdessDataModule

    root = make_cleaned_corpus(tmp_path / "data" / "donateacry-corpus")
    hungry = root / "donateacry_corpus_cleaned_and_updated_data" / "hungry"
    clips = len(list(hungry.iterdir()))
    shown = _copy_under_a_non_utf8_name(hungry)
    assert "\\xff\\xfe00" in shown
    module = DonateacryDataModule(root=root, sample_rate=8000, clip_seconds=1.0)
    module.setup()
    assert (module.manifest["reason"] == "hungry").sum() == clips
    (row,) = module.skipped.itertuples(index=False)
    assert row.path == shown and "not valid UTF-8" in row.reason and "rename" in row.reason
    module.skipped.to_csv(tmp_path / "skipped_files.csv", index=False)  # what a run writes
    assert pd.read_csv(tmp_path / "skipped_files.csv")["path"].tolist() == [shown]
    assert main(["info", "donateacry", "--data-dir", str(tmp_path / "data")]) == 0
    assert "names not valid UTF-8: 1" in capsys.readouterr().out

    ravdess = make_ravdess(tmp_path / "ravdess", actors=(1, 2, 3, 4), emotions=(1, 2), statements=(1,))
    _copy_under_a_non_utf8_name(ravdess / "Actor_01", b"03-01-01-01-01-\xff-01")
    speech = RavdessDataModule(root=ravdess, sample_rate=8000, clip_seconds=0.5)
    assert len(speech.build_manifest()) == 8 and len(speech.unstorable_names) == 1

    folder = tmp_path / "mine"
    shutil.copytree(hungry.parent / "tired", folder / "tired")
    os.mkdir(os.fsencode(folder) + b"/bad-class-\xff")  # a class folder whose own name is not UTF-8
    shutil.copy(os.fsencode(next((folder / "tired").iterdir())), os.fsencode(folder) + b"/bad-class-\xff/x.wav")
    _copy_under_a_non_utf8_name(folder / "tired", b"clip-\xfe")
    own = FolderDataModule(root=folder, sample_rate=8000, clip_seconds=1.0)
    own.setup()
    assert own.class_names == ["tired"] and len(own.manifest) == len(list((hungry.parent / "tired").iterdir()))
    assert sorted(own.skipped["path"].map(lambda p: p.rsplit("/", 1)[-1])) == ["bad-class-\\xff", "clip-\\xfe.wav"]

    raw = make_raw_corpus(tmp_path / "raw")
    _copy_under_a_non_utf8_name(raw / "donateacry-android-upload-bucket",
                                b"00000017-1111-4222-8333-\xff-1430-1.7-f-26-hu")
    report = prepare_raw_uploads(raw, tmp_path / "prepared", progress=False)
    assert report.loc[report["file"].str.contains("\\\\xff"), "status"].tolist() == ["unreadable"]


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:  # bound, then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_tracking_server_fails_in_seconds_naming_it(tmp_path, capsys):  # M2
    import time

    from audioml.compare import main as compare

    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    process = run_entry_point("audioml.train", *TINY, f"paths.output_dir={tmp_path}", f"logger.tracking_uri={uri}",
                              check=False, timeout=120)
    assert process.returncode != 0 and f"{uri}" in process.stderr and "cannot be reached" in process.stderr
    assert time.monotonic() - started < 60  # MLflow's own retries take about four minutes
    assert not (tmp_path / "cache").exists()  # refused before any decoding
    started = time.monotonic()
    assert compare(["--experiment", "synthetic", "--tracking-uri", uri]) == 2
    assert time.monotonic() - started < 10 and "cannot be reached" in capsys.readouterr().err


class SigtermWhenBuilt(L.Callback):
    """A callback that sends this process SIGTERM when the Trainer is built: after the MLflow run
    is open, before ``fit`` (where the embedding-cache build of case P13 sits)."""

    def __init__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("protocol", [[], ["evaluation=kfold", "evaluation.k=2"]], ids=["holdout", "kfold"])
def test_a_sigterm_before_fit_ends_every_mlflow_run_killed_and_exits_143(tmp_path, protocol):  # P13
    from audioml.run.fit.training import run_evaluation

    cfg = compose_config([*TINY, *protocol, f"paths.output_dir={tmp_path}",
                          f"+callbacks.sigterm._target_={__name__}.SigtermWhenBuilt"])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        run_evaluation(cfg, tmp_path / "run")
    assert stopped.value.code == 143 and signal.getsignal(signal.SIGTERM) is before
    runs = _runs(tmp_path)
    assert len(runs) == (2 if protocol else 1)  # k-fold: the parent and fold 0
    assert {r.info.status for r in runs} == {"KILLED"}
    assert all(r.data.tags.get("audioml.error") == "stopped by SIGTERM" for r in runs)


def test_the_same_command_on_other_data_never_continues_or_reuses_the_first_run(tmp_path, caplog):  # O1/O2
    from audioml.run.fit.training import run_evaluation_in

    def config(data: str):  # the data location is a path, outside the run key: one run directory for both
        return compose_config([*TINY, f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / data}"])

    metrics_a, run_dir = run_evaluation_in(config("A"), tmp_path / "run")
    # logging the MLflow model must not leave this store as the process default for the next run
    assert "MLFLOW_TRACKING_URI" not in os.environ and not mlflow.is_tracking_uri_set()
    assert run_dir == tmp_path / "run" and RunDir(run_dir).bound_data()["clips"] == "72"
    (folder,) = (tmp_path / "A").glob("synthetic-*")
    shutil.copytree(folder, tmp_path / "B" / folder.name)
    table = pd.read_csv(tmp_path / "B" / folder.name / "manifest.csv")
    table.iloc[6:].to_csv(tmp_path / "B" / folder.name / "manifest.csv", index=False)  # six clips fewer
    first_done = (run_dir / "DONE").read_bytes()

    _, other = run_evaluation_in(config("B"), tmp_path / "run")  # O1: finished on A, not skipped for B
    fingerprint_a, fingerprint_b = (RunDir(d).bound_data()["fingerprint"] for d in (run_dir, other))
    assert other == RunDir(run_dir).for_other_data(fingerprint_b).path and fingerprint_a != fingerprint_b
    assert (other / "DONE").is_file() and (run_dir / "DONE").read_bytes() == first_done
    assert "72 clips" in caplog.text and "66 clips" in caplog.text and str(other) in caplog.text

    (run_dir / "DONE").unlink()  # O2: the first run is unfinished now; B must not continue it
    _, again = run_evaluation_in(config("B"), tmp_path / "run")
    assert again == other and not (run_dir / "DONE").exists()
    runs = {r.info.run_id: r for r in _runs(tmp_path / "out")}
    assert len(runs) == 2 and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs[(run_dir / "mlflow_run_id").read_text()].data.tags["data.fingerprint"] == fingerprint_a
    assert runs[(other / "mlflow_run_id").read_text()].data.tags["data.fingerprint"] == fingerprint_b

    metrics, same = run_evaluation_in(config("A"), tmp_path / "run")  # A again: its own run, continued
    assert same == run_dir and (run_dir / "DONE").is_file() and metrics["test/acc"] == metrics_a["test/acc"]
    assert len(_runs(tmp_path / "out")) == 2


def test_a_full_disk_during_a_cache_build_is_a_clear_error_not_sigbus(tmp_path):  # P10
    import subprocess
    import sys

    disk = tmp_path / "small"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs a 1 MB tmpfs (mount, as root)")
    try:
        build = ("import sys\nfrom audioml.data.cache import ArrayCache\n"  # 4 MB on a 1 MB disk
                 "ArrayCache(sys.argv[1], 'waveforms', 'k1').get_or_build((1000, 1000), "
                 "lambda out: out.fill(1.0) or {})")
        process = subprocess.run([sys.executable, "-c", build, str(disk / "cache")], capture_output=True, text=True,
                                 timeout=120)
        assert process.returncode == 1, (process.returncode, process.stderr[-2000:])  # -7 would be SIGBUS
        assert "no space left in" in process.stderr and "paths.cache_dir" in process.stderr
        assert [p.name for p in (disk / "cache").iterdir()] == ["waveforms-k1.lock"]  # no 4 MB orphan fills the disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_data_csv_cut_short_or_a_login_page_is_not_installed(tmp_path):  # D10/D11
    from helpers.servers import FileServer, emotify_csv, manifest_file, zip_bytes

    from audioml.data import download

    music_entries = {f"{genre}/1.mp3": b"mp3" for genre in ("classical", "rock", "electronic", "pop")}
    music = zip_bytes(music_entries)
    manifest = manifest_file(tmp_path / "emotify.sha256", {"data.csv": emotify_csv(), **{
        f"emotifymusic/{name}": data for name, data in music_entries.items()}})
    cut = emotify_csv().splitlines(keepends=True)
    served = {"music.zip": music, "full.csv": emotify_csv(), "login.html": b"<html><body>Please log in</body></html>",
              "cut.csv": b"".join(cut[: len(cut) // 2])}  # cut at a line boundary: still a valid table
    with FileServer(served) as server:
        for name, reason in (("cut.csv", "holds 200 of the 400 tracks"), ("login.html", "missing columns")):
            urls = {"emotifymusic.zip": f"{server.url}/music.zip", "data.csv": f"{server.url}/{name}"}
            with pytest.raises(download.DownloadError, match=reason):
                download.download_dataset("emotify", data_dir=tmp_path, urls=urls, progress=False, manifest=manifest)
            assert not (tmp_path / "emotify").exists() and not (tmp_path / ".downloads" / "data.csv").exists()
        urls["data.csv"] = f"{server.url}/full.csv"  # the rerun needs no --force: nothing was installed
        target = download.download_dataset("emotify", data_dir=tmp_path, urls=urls, progress=False, manifest=manifest)
    assert (target / "data.csv").read_bytes() == emotify_csv()


def test_a_stale_larger_part_from_another_archive_is_discarded_not_installed(tmp_path, caplog):  # D12
    from helpers.servers import FileServer, manifest_file, wav_bytes, zip_bytes

    from audioml.data import download

    entries = {"root/donateacry_corpus_cleaned_and_updated_data/hungry/a.wav": wav_bytes(),
               "root/donateacry-android-upload-bucket/b.3gp": b"3gp", "root/donateacry-ios-upload-bucket/c.caf": b"caf"}
    good = zip_bytes(entries)
    name = download.SOURCES["donateacry"].files[0].filename
    other = zip_bytes({"root/donateacry_corpus_cleaned_and_updated_data/hungry/evil.txt": b"x" * len(good),
                        "root/donateacry-android-upload-bucket/x": b"", "root/donateacry-ios-upload-bucket/y": b""})
    assert len(other) > len(good)
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / f"{name}.part").write_bytes(other)
    with FileServer({"good.zip": good}) as server:  # answers 416 to a range past its end
        target = download.download_dataset("donateacry", data_dir=tmp_path, progress=False,
                                           urls={name: f"{server.url}/good.zip"},
                                           manifest=manifest_file(tmp_path / "m.sha256", entries, "root/"))
    installed = sorted(p.name for p in (target / "donateacry_corpus_cleaned_and_updated_data" / "hungry").iterdir())
    assert installed == ["a.wav"] and "not from this file; discarded" in caplog.text


def test_a_zip_bomb_and_a_trickling_server_are_refused(tmp_path):  # D8/D13
    import io
    import threading
    import time
    import zipfile
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from helpers.servers import FileServer

    from audioml.data import download

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Actor_01/zeros.wav", bytes(120 * 2**20))  # about 120 KB expanding to 120 MB
    with FileServer({"bomb.zip": buffer.getvalue()}) as server:
        source = download.DatasetSource("ravdess", "ravdess", (download.RemoteFile(
            f"{server.url}/bomb.zip", "bomb.zip", unpack=True, anchor="Actor_01"),), ("Actor_01",), "-", "-")
        with pytest.raises(download.DownloadError, match="over 50 times its size"):
            download.install(source, tmp_path / "ravdess", progress=False)
    assert not (tmp_path / "ravdess").exists() and not list(tmp_path.glob(".ravdess-staging-*"))

    class Trickle(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(2**20))
            self.end_headers()
            for _ in range(40):  # one byte every 0.1 s: never a socket timeout, never a file
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(download.DownloadError, match="stalled"):
            download.fetch(f"http://127.0.0.1:{httpd.server_address[1]}/x", tmp_path / "x", progress=False, timeout=1)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert time.monotonic() - started < 5
