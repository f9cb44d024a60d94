"""Content manifests (issue 35, item 1): the shipped sha256 lists match the real samples in
../shared, and a folder with an altered, extra, linked or missing file is refused naming it, by
``audioml-data verify`` and by a download's install step."""

from __future__ import annotations

import shutil

import pytest
from helpers.servers import FileServer, zip_bytes

from audioml.data import download
from audioml.data.cli import main
from audioml.data.manifests import read_manifest, shipped_manifest, verify_tree

FOLDERS = {"donateacry": "donateacry-corpus", "ravdess": "ravdess", "emotify": "emotify"}


@pytest.mark.parametrize("name", FOLDERS)
def test_the_real_samples_match_the_shipped_manifests(shared_data, name, capsys):
    manifest = read_manifest(shipped_manifest(FOLDERS[name]))
    report = verify_tree(shared_data / FOLDERS[name], manifest, present_only=True)
    assert report.ok and report.checked >= 10 and report.checked + report.absent == len(manifest)
    assert main(["verify", name, "--data-dir", str(shared_data), "--present-only"]) == 0
    assert "files match" in capsys.readouterr().out
    assert main(["verify", name, "--data-dir", str(shared_data)]) == 1  # a sample: files are missing
    assert f"{report.absent} missing" in capsys.readouterr().out


def test_an_altered_extra_linked_or_missing_file_is_named(tmp_path, shared_data, capsys):
    source = shared_data / "ravdess" / "audio_speech_actors_01-24" / "Actor_01"
    manifest = {k: v for k, v in read_manifest(shipped_manifest("ravdess")).items() if k.startswith("Actor_01/")}
    copy = tmp_path / "ravdess"
    shutil.copytree(source, copy / "Actor_01")
    assert verify_tree(copy, manifest).ok
    altered = sorted((copy / "Actor_01").glob("*.wav"))[3]
    data = bytearray(altered.read_bytes())
    data[-1] ^= 1
    altered.write_bytes(bytes(data))
    (copy / "Actor_01" / "extra.wav").write_bytes(b"RIFF")
    (copy / "Actor_01" / "link.wav").symlink_to(altered)
    removed = sorted((copy / "Actor_01").glob("03-*.wav"))[0]
    removed.unlink()
    (copy / "Actor_01" / ".DS_Store").write_bytes(b"x")  # operating-system litter: ignored
    report = verify_tree(copy, manifest)
    assert report.altered == (f"Actor_01/{altered.name}",)
    assert report.extra == ("Actor_01/extra.wav", "Actor_01/link.wav")
    assert report.missing == (f"Actor_01/{removed.name}",)
    manifest_path = tmp_path / "actor01.sha256"
    manifest_path.write_text("".join(f"{v}  {k}\n" for k, v in manifest.items()))
    assert main(["verify", "ravdess", "--root", str(copy), "--manifest", str(manifest_path)]) == 1
    out = capsys.readouterr().out
    assert "1 altered" in out and altered.name in out and "2 not in the manifest" in out and "1 missing" in out
    assert main(["verify", "ravdess", "--root", str(tmp_path / "nowhere")]) == 2


def test_a_real_data_csv_cut_at_a_line_boundary_is_refused_by_the_download(tmp_path, shared_data):
    """The published table cut after a whole line still parses (the red team's case g: track
    400 kept 6 of its 12 annotations); its sha256 is not the published one, so nothing installs."""
    table = (shared_data / "emotify" / "data.csv").read_bytes()
    lines = table.splitlines(keepends=True)
    cut = b"".join(lines[:-6])
    music = zip_bytes({f"{genre}/1.mp3": (shared_data / "emotify" / "emotifymusic" / genre / "1.mp3").read_bytes()
                       for genre in ("classical", "rock", "electronic", "pop")})
    with FileServer({"music.zip": music, "cut.csv": cut}) as server:
        urls = {"emotifymusic.zip": f"{server.url}/music.zip", "data.csv": f"{server.url}/cut.csv"}
        with pytest.raises(download.DownloadError, match=r"not the published dataset \(1 altered: data.csv;"):
            download.download_dataset("emotify", data_dir=tmp_path, urls=urls, progress=False)
    assert not (tmp_path / "emotify").exists()


def test_a_manifest_line_that_climbs_out_is_refused(tmp_path):
    bad = tmp_path / "bad.sha256"
    bad.write_text(f"{'0' * 64}  ../../etc/passwd\n")
    with pytest.raises(ValueError, match="not a manifest line"):
        read_manifest(bad)
