"""``technogan scrape``: techno from YouTube playlists as a resumable, sharded batch job.

Modules: ``playlists`` (the YAML file and its validation), ``backends`` (the narrow
backend interface, pytube via pytubefix, yt-dlp), ``download`` (HTTP streaming with
timeouts / retries / Range resumption, and verification), ``manifest`` (append-only
JSON lines), ``loop`` (the resumable download loop), ``cli`` (the command).
"""

from pipeline.scrape.backends import (BACKENDS, AudioSource, Backend, PermanentError, PytubeBackend, TransientError,
                                      VideoInfo, YtDlpBackend, make_backend)
from pipeline.scrape.loop import Summary, scrape
from pipeline.scrape.manifest import read_manifest
from pipeline.scrape.playlists import PlaylistEntry, load_playlists, parse_playlists

__all__ = ["BACKENDS", "AudioSource", "Backend", "PermanentError", "PlaylistEntry", "PytubeBackend", "Summary",
           "TransientError", "VideoInfo", "YtDlpBackend", "load_playlists", "make_backend", "parse_playlists",
           "read_manifest", "scrape"]
