"""Servers on 127.0.0.1 for the tests: a real HTTP file server (Range requests honoured, a first
response optionally cut short) and the archives it serves; a real ``mlflow server``; a server that
accepts connections and never answers."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import soundfile as sf


class FileServer:
    """Serves ``files`` (name -> bytes). ``cut_first`` names files whose first response sends
    only half the body (with the full Content-Length) and closes the connection."""

    def __init__(self, files: dict[str, bytes], cut_first: set[str] = frozenset(), honour_range: bool = True):
        self.files = files
        self.cut_pending = set(cut_first)
        self.honour_range = honour_range
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and server.honour_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if name in server.cut_pending:
                    server.cut_pending.discard(name)
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def wav_bytes(seconds: float = 0.5, sample_rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.sin(np.arange(int(seconds * sample_rate)) * 0.05).astype(np.float32) * 0.3,
             sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def emotify_csv(tracks=range(1, 401)) -> bytes:
    """A data.csv in the published format: two listeners for each of ``tracks``."""
    genres = ("classical", "rock", "electronic", "pop")
    header = ("track id, genre, amazement, solemnity, tenderness, nostalgia, calmness, power, joyful_activation, "
              "tension, sadness, mood, liked, disliked, age, gender, mother tongue\n")
    ticks = [",".join("1" if e == shift % 9 else "0" for e in range(9)) for shift in range(9)]
    rows = [f"{track},{genres[(track - 1) // 100]},{ticks[(track + listener) % 9]},3,1,0,30,1,English\n"
            for track in tracks for listener in range(2)]
    return (header + "".join(rows)).encode()


def manifest_file(path, entries: dict[str, bytes], prefix: str = "") -> str:
    """Write the sha256 manifest of archive ``entries`` (names with ``prefix``, the archive's
    wrapping folder, removed) to ``path``; returns ``str(path)``."""
    import hashlib

    lines = sorted(f"{hashlib.sha256(data).hexdigest()}  {name[len(prefix):]}" for name, data in entries.items()
                   if name.startswith(prefix))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(folder: Path, *options: str, port: int | None = None, env: dict | None = None):
    """``(process, url)`` of an ``mlflow server`` on 127.0.0.1 (SQLite store ``folder/server.db``,
    artifacts under ``folder``) once it answers ``/health``; its log is ``folder/server.log``."""
    port = port or free_port()
    log = open(folder / "server.log", "a")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
         str(folder / "artifact-root"), *options], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})}, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    wait_until_answering(f"{url}/health", process, lambda: (folder / "server.log").read_text()[-3000:], 240)
    return process, url


def wait_until_answering(url: str, process: subprocess.Popen, log: Callable[[], str], seconds: float) -> None:
    """Return once ``url`` answers 200; ``AssertionError`` with ``log()`` when ``process`` ends first
    or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, f"{url} did not answer:\n{log()}"
        time.sleep(0.5)


def stop_mlflow_server(process) -> None:
    """Stop the server and its workers (its own process group, started by the test)."""
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


class HangingServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a server stuck in a request)."""

    def __enter__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        return self

    def __exit__(self, *exc):
        self.socket.close()

