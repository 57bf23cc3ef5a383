"""Test doubles for the scraper: a loopback HTTP server with scripted faults and a fake
backend that lists fake playlists and points at the server's real audio files.

Run as a module it is ``technogan scrape`` with the fake backend, for tests that need
a separate process to kill::

    python -m tests.pipeline.scrape_fakes CATALOG.json --playlists P.yaml --out DIR ...
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

from pipeline.scrape.backends import AudioSource, PermanentError, TransientError, VideoInfo

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")

# Faults a test can queue per file; each request to the file consumes the next one.
#   drop      close the connection without any response
#   drop_mid  send the headers and half of the body, then close
#   stall     send the headers and half of the body, then hang until released
#   429/503   answer that status (429 with Retry-After: 0)
#   corrupt   send random bytes of the right length
#   short     serve only the first half of the file as if it were all of it
#   norange   ignore the Range header and send the whole file with 200
#   trickle   send the body 16 bytes at a time, 20 ms apart: never silent long enough
#             for a read timeout, yet hours for a whole file
FAULTS = {"drop", "drop_mid", "stall", "429", "503", "corrupt", "short", "norange", "trickle"}


@dataclass
class Request:
    name: str
    range: Optional[str]
    fault: Optional[str]
    status: int


class AudioServer:
    """A ThreadingHTTPServer on 127.0.0.1 (ephemeral port) serving ``files`` under /audio/<name>."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends every stall
        self.stalled = threading.Event()  # set when a stall begins
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/audio/{name}"

    def start(self) -> "AudioServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_faults(self, name: str, *faults: str) -> None:
        for f in faults:
            assert f in FAULTS, f
        with self.lock:
            self.faults[name].extend(faults)

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requests.clear()
        self.release.clear()
        self.stalled.clear()

    def hits(self) -> Counter:
        """Requests per file that got a 2xx answer."""
        with self.lock:
            return Counter(r.name for r in self.requests if 200 <= r.status < 300)

    def full_fetches(self) -> Counter:
        """Requests per file that started at byte 0 (a fresh download) and got a 2xx answer."""
        with self.lock:
            return Counter(r.name for r in self.requests if 200 <= r.status < 300
                           and (r.range is None or r.range.startswith("bytes=0-")))

    # -- the handler ---------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        name = h.path.rsplit("/", 1)[-1]
        rng = h.headers.get("Range")
        with self.lock:
            fault = self.faults[name].pop(0) if self.faults.get(name) else None
        data = self.files.get(name)
        if data is None or not h.path.startswith("/audio/"):
            self._log(name, rng, fault, 404)
            return self._status(h, 404)
        if fault == "drop":
            self._log(name, rng, fault, 0)
            h.close_connection = True
            return
        if fault in ("429", "503"):
            self._log(name, rng, fault, int(fault))
            return self._status(h, int(fault), {"Retry-After": "0"} if fault == "429" else {})
        if fault == "corrupt":
            data = bytes((i * 7919 + 13) % 251 for i in range(len(data)))
        elif fault == "short":
            data = data[: len(data) // 2]
        total = len(data)
        start, end, status = 0, total - 1, 200
        m = _RANGE.match(rng or "")
        if m and fault != "norange":
            start = int(m.group(1))
            end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
            if start >= total:
                self._log(name, rng, fault, 416)
                return self._status(h, 416, {"Content-Range": f"bytes */{total}"})
            status = 206
        body = data[start: end + 1]
        self._log(name, rng, fault, status)
        h.send_response(status)
        h.send_header("Content-Type", "audio/mpeg")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        h.end_headers()
        if fault in ("drop_mid", "stall"):
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            if fault == "stall":
                self.stalled.set()
                self.release.wait(60)
            h.close_connection = True
            return
        if fault == "trickle":
            self.stalled.set()
            try:
                for i in range(0, len(body), 16):
                    if self.release.is_set():
                        break
                    h.wfile.write(body[i: i + 16])
                    h.wfile.flush()
                    time.sleep(0.02)
            except OSError:  # the client gave up: what the test wants
                pass
            h.close_connection = True
            return
        h.wfile.write(body)

    def _log(self, name: str, rng: Optional[str], fault: Optional[str], status: int) -> None:
        with self.lock:
            self.requests.append(Request(name, rng, fault, status))

    @staticmethod
    def _status(h: BaseHTTPRequestHandler, code: int, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"status": code}).encode()
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@dataclass
class FakeVideo:
    id: str
    file: Optional[str] = None  # served name on the AudioServer
    duration: Optional[float] = None  # listed duration
    title: Optional[str] = None
    uploader: str = "fake uploader"
    error: Optional[str] = None  # a permanent reason raised by resolve_audio
    unavailable: Optional[str] = None  # a permanent reason known at listing time

    def info(self) -> VideoInfo:
        return VideoInfo(id=self.id, title=self.title or f"track {self.id}", duration=self.duration,
                         uploader=self.uploader, url=f"https://www.youtube.com/watch?v={self.id}",
                         unavailable=self.unavailable)


@dataclass
class FakeBackend:
    """Lists ``playlists`` (url -> videos) and resolves videos to the AudioServer's files."""

    base_url: str
    playlists: dict[str, list[FakeVideo]]
    list_errors: dict[str, list[str]] = field(default_factory=dict)  # url -> queued "transient"/"permanent"
    name: str = "fake"
    resolves: Counter = field(default_factory=Counter)
    listed: list[str] = field(default_factory=list)  # every URL it was asked to list, in order

    def list_videos(self, url: str) -> list[VideoInfo]:
        self.listed.append(url)
        queued = self.list_errors.get(url)
        if queued:
            kind = queued.pop(0)
            if kind == "permanent":
                queued.insert(0, kind)  # stays broken
                raise PermanentError("removed", f"{url}: this playlist does not exist")
            raise TransientError("http_503", f"{url}: HTTP Error 503")
        if url not in self.playlists:
            raise PermanentError("removed", f"{url}: this playlist does not exist")
        return [v.info() for v in self.playlists[url]]

    def resolve_audio(self, video: VideoInfo) -> AudioSource:
        self.resolves[video.id] += 1
        fv = next(v for vs in self.playlists.values() for v in vs if v.id == video.id)
        if fv.error:
            raise PermanentError(fv.error, f"{video.id}: {fv.error.replace('_', ' ')} video")
        assert fv.file is not None
        return AudioSource(ext=Path(fv.file).suffix, url=f"{self.base_url}/audio/{fv.file}", format_note="fake")

    def to_json(self) -> str:
        return json.dumps({"base_url": self.base_url,
                           "playlists": {u: [v.__dict__ for v in vs] for u, vs in self.playlists.items()}})

    @classmethod
    def from_json(cls, text: str) -> "FakeBackend":
        d = json.loads(text)
        return cls(d["base_url"], {u: [FakeVideo(**v) for v in vs] for u, vs in d["playlists"].items()})


def playlist_url(n: int) -> str:
    return f"https://www.youtube.com/playlist?list=PLfake{n:06d}"


def video_id(n: int) -> str:
    return f"vid{n:08d}"  # 11 characters like a real id


def main(argv: list[str]) -> int:
    """``technogan scrape`` with the fake backend read from a catalog JSON file."""
    from pipeline.scrape import cli

    backend = FakeBackend.from_json(Path(argv[0]).read_text())
    parser = argparse.ArgumentParser(prog="scrape_fakes")
    cli.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    import logging

    logging.basicConfig(level=logging.INFO)
    try:
        return cli.main(args, backend=backend)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
