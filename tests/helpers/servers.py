"""A real HTTP file server on 127.0.0.1 (Range requests honoured, a first response optionally cut
short) and the archives and files it serves in the download tests."""

from __future__ import annotations

import io
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
