"""Scraper backends behind one narrow interface, and the errors they raise.

A backend does two things and nothing else:

* ``list_videos(url) -> list[VideoInfo]``: a playlist's (or a single watch URL's)
  videos with id, title, uploader and listed duration;
* ``resolve_audio(video) -> AudioSource``: where the best audio-only stream is.
  Normally a plain HTTP(S) URL (plus headers) that ``pipeline.scrape.download``
  streams to a temporary file with our timeouts, retries and Range resumption; a
  backend that cannot hand out a plain URL (a SABR or HLS-only stream) sets
  ``AudioSource.fetch`` instead, and its own downloader writes the temporary file,
  which then goes through the same verify / rename / manifest machinery.

Errors are sorted in two kinds: ``PermanentError`` (private, removed,
age-restricted, region-blocked, ...: recorded with the reason, never retried) and
``TransientError`` (connection reset, timeouts, 429, 5xx: retried with backoff).
Backends are picked from ``BACKENDS`` by name (``--backend``).
"""

from __future__ import annotations

import logging
import re
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

from pipeline.config import ScrapeConfig
from pipeline.scrape.playlists import parse_youtube_url


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class VideoInfo:
    """One listed video. ``duration`` is the listed length in seconds (None when unknown);
    ``unavailable`` is a permanent reason already known at listing time ("private", ...)."""

    id: str
    title: Optional[str] = None
    duration: Optional[float] = None
    uploader: Optional[str] = None
    url: Optional[str] = None
    unavailable: Optional[str] = None

    @property
    def watch_url(self) -> str:
        return self.url or f"https://www.youtube.com/watch?v={self.id}"


@dataclass
class AudioSource:
    """Where a video's best audio-only stream is. Either ``url`` (streamed by our HTTP
    code) or ``fetch`` (the backend's own downloader writes the given path)."""

    ext: str  # file extension of the stream's container, without the dot: m4a, webm, mp3, ...
    url: Optional[str] = None
    headers: dict[str, str] = field(default_factory=dict)
    size: Optional[int] = None  # bytes, when the backend knows it up front
    fetch: Optional[Callable[[Path], None]] = None
    format_note: Optional[str] = None  # e.g. "251 opus 160k": recorded in the manifest

    def __post_init__(self) -> None:
        if (self.url is None) == (self.fetch is None):
            raise ValueError("AudioSource needs exactly one of url and fetch")
        self.ext = self.ext.lower().lstrip(".")
        if not re.fullmatch(r"[a-z0-9]{1,5}", self.ext):
            raise ValueError(f"bad audio extension {self.ext!r}")


class ScrapeError(Exception):
    """Base of the errors the download loop sorts; ``reason`` is a short manifest token."""

    def __init__(self, reason: str, message: str = "", retry_after: Optional[float] = None):
        super().__init__(message or reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(ScrapeError):
    """Retrying will not help: private, removed, age-restricted, region-blocked, HTTP 403/404."""


class TransientError(ScrapeError):
    """Worth retrying after a backoff: connection reset, timeout, HTTP 429 or 5xx, truncated body."""


class Backend(Protocol):
    name: str

    def list_videos(self, url: str) -> list[VideoInfo]: ...

    def resolve_audio(self, video: VideoInfo) -> AudioSource: ...


# ----------------------------------------------------------------------------- error sorting

# (pattern, reason, permanent). First match wins; checked against the lower-cased message.
_MESSAGE_RULES: list[tuple[str, str, bool]] = [
    (r"private video|video is private", "private", True),
    (r"confirm your age|age[- ]restricted|inappropriate for some users|age check", "age_restricted", True),
    (r"available in your country|geo[- ]?restrict|region[- ]?block|blocked it in your country", "region_blocked", True),
    (r"members[- ]only|join this channel", "members_only", True),
    (r"copyright", "removed", True),
    (r"terminated|removed|no longer available|does not exist|video unavailable|this video is unavailable", "removed", True),
    (r"premieres in|live event will begin|is not currently live|is live", "live", True),
    (r"unsupported url", "unsupported_url", True),
    (r"http error 429|too many requests", "http_429", False),
    (r"http error 5\d\d", "http_5xx", False),
    (r"http error 40[34]|http error 410", "http_4xx", True),
    (r"not a bot|bot detection|po[_ ]?token", "bot_check", False),
    (r"timed? ?out", "timeout", False),
    (r"connection (reset|refused|aborted)|remote end closed|incomplete ?read|network is unreachable", "connection", False),
    (r"failed to resolve|name or service not known|name resolution|transporterror|unable to download", "connection", False),
]


def classify_message(message: str) -> ScrapeError:
    """Map an error message from a downloader library to a Permanent or TransientError."""
    low = message.lower()
    for pattern, reason, permanent in _MESSAGE_RULES:
        if re.search(pattern, low):
            return (PermanentError if permanent else TransientError)(reason, message)
    # unknown errors are retried a few times: cheap, and extractor hiccups do happen
    return TransientError("error", message)


def http_error(code: int, message: str, retry_after: Optional[float] = None) -> ScrapeError:
    """An HTTP status as an error: 408, 429 and 5xx are transient, other 4xx permanent."""
    if code == 429 or code == 408 or code >= 500:
        return TransientError(f"http_{code}", message, retry_after)
    return PermanentError(f"http_{code}", message)


def short_text(text: Any, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, for logs and manifest fields."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ----------------------------------------------------------------------------- yt-dlp


class _YdlLogger:
    """Routes yt-dlp's messages to logging (it prints errors to stderr even when quiet);
    the errors themselves reach us as exceptions and are reported once, sorted."""

    _log = logging.getLogger("pipeline.scrape.yt_dlp")

    def debug(self, msg: str) -> None:
        self._log.debug("%s", msg)

    def info(self, msg: str) -> None:
        self._log.debug("%s", msg)

    def warning(self, msg: str) -> None:
        self._log.debug("%s", msg)

    def error(self, msg: str) -> None:
        self._log.debug("%s", msg)


class YtDlpBackend:
    """yt-dlp: flat playlist listing (one request per page, not per video) and format
    selection from ``extract_info``. ``ydl_cls`` replaces ``yt_dlp.YoutubeDL`` in tests."""

    name = "yt-dlp"

    def __init__(self, config: ScrapeConfig | None = None, ydl_cls: Any = None):
        self.config = config or ScrapeConfig()
        self._ydl_cls = ydl_cls

    def _ydl(self, **extra: Any):
        cls = self._ydl_cls
        if cls is None:
            import yt_dlp

            cls = yt_dlp.YoutubeDL
        opts = {
            "quiet": True,
            "no_warnings": True,
            "logger": _YdlLogger(),
            "noprogress": True,
            "skip_download": True,
            "socket_timeout": self.config.read_timeout,
            # our loop owns retries and backoff; yt-dlp's own would multiply them
            "retries": 0,
            "extractor_retries": 0,
        }
        opts.update(extra)
        return cls(opts)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ScrapeError:
            raise
        except Exception as e:  # yt_dlp.utils.DownloadError / ExtractorError / network errors
            cause = (getattr(e, "exc_info", None) or (None, None))[1]  # DownloadError wraps the extractor's
            if "GeoRestrictedError" in (type(e).__name__, type(cause).__name__):
                raise PermanentError("region_blocked", short_text(e)) from e
            raise classify_message(short_text(e)) from e

    @staticmethod
    def _video_from_entry(entry: dict) -> Optional[VideoInfo]:
        vid = entry.get("id")
        if not vid:
            return None
        title = entry.get("title")
        unavailable = None
        # flat listings keep placeholders for dead entries; no need to ask for them later
        if title in ("[Private video]", "[Deleted video]", "[Unavailable video]"):
            unavailable = "private" if "Private" in title else "removed"
        elif entry.get("live_status") in ("is_live", "is_upcoming", "post_live"):
            unavailable = "live"
        url = entry.get("webpage_url") or entry.get("url")
        if not (isinstance(url, str) and url.startswith("http")):
            url = None
        duration = entry.get("duration")
        return VideoInfo(
            id=str(vid),
            title=title,
            duration=float(duration) if duration else None,
            uploader=entry.get("uploader") or entry.get("channel"),
            url=url,
            unavailable=unavailable,
        )

    def list_videos(self, url: str) -> list[VideoInfo]:
        """Videos of a playlist (``extract_flat``, unprocessed) or the single video of a watch URL."""
        with self._ydl(extract_flat="in_playlist") as ydl:
            info = self._call(lambda: ydl.extract_info(url, download=False, process=False))
            kind = info.get("_type", "video")
            if kind in ("playlist", "multi_video"):
                # entries is a lazy generator (pages are fetched while iterating): keep it inside _call
                entries = self._call(lambda: list(info.get("entries") or []))
            else:
                entries = [info]
        videos = [v for v in (self._video_from_entry(e) for e in entries if isinstance(e, dict)) if v]
        return videos

    @staticmethod
    def _audio_formats(formats: Iterable[dict]) -> list[dict]:
        audio = [f for f in formats if f.get("vcodec") == "none" and f.get("acodec") not in (None, "none")]

        def key(f: dict) -> tuple:
            direct = f.get("protocol") in ("https", "http")
            return (direct, f.get("abr") or f.get("tbr") or 0.0, f.get("filesize") or f.get("filesize_approx") or 0)

        return sorted(audio, key=key, reverse=True)

    def resolve_audio(self, video: VideoInfo) -> AudioSource:
        """Best audio-only format: a direct HTTP(S) URL when there is one, else yt-dlp downloads it."""
        with self._ydl() as ydl:
            info = self._call(lambda: ydl.extract_info(video.watch_url, download=False))
        formats = self._audio_formats(info.get("formats") or [])
        if not formats:
            raise PermanentError("no_audio_stream", f"{video.id}: no audio-only format among {len(info.get('formats') or [])}")
        best = formats[0]
        note = " ".join(str(x) for x in (best.get("format_id"), best.get("acodec"), best.get("abr") and f"{best['abr']:.0f}k") if x)
        if best.get("protocol") in ("https", "http"):
            size = best.get("filesize")
            return AudioSource(ext=best.get("ext") or "webm", url=best["url"], headers=dict(best.get("http_headers") or {}),
                               size=int(size) if size else None, format_note=note)
        format_id = best.get("format_id")

        def fetch(path: Path) -> None:
            opts = {"format": format_id, "outtmpl": str(path), "skip_download": False, "overwrites": True,
                    "nopart": True, "fragment_retries": 0}
            with self._ydl(**opts) as dl:
                self._call(lambda: dl.download([video.watch_url]))

        return AudioSource(ext=best.get("ext") or "webm", fetch=fetch, format_note=note)


# ----------------------------------------------------------------------------- pytube (pytubefix)

# pytubefix exception class name -> (reason, permanent); walked along the MRO so that
# subclasses added by later pytubefix releases fall back to their parent's meaning.
_PYTUBE_ERRORS: dict[str, tuple[str, bool]] = {
    "VideoPrivate": ("private", True),
    "AgeRestrictedError": ("age_restricted", True),
    "AgeCheckRequiredError": ("age_restricted", True),
    "AgeCheckRequiredAccountError": ("age_restricted", True),
    "VideoRegionBlocked": ("region_blocked", True),
    "MembersOnly": ("members_only", True),
    "VideoRemovedByYouTubeForViolatingTOS": ("removed", True),
    "VideoRemovedByUploader": ("removed", True),
    "AccountTerminated": ("removed", True),
    "VideoBlockedByCopyright": ("removed", True),
    "LiveStreamError": ("live", True),
    "LiveStreamOffline": ("live", True),
    "LiveStreamEnded": ("live", True),
    "RecordingUnavailable": ("live", True),
    "LoginRequired": ("login_required", True),
    "BotDetection": ("bot_check", False),
    "PoTokenRequired": ("bot_check", False),
    "MaxRetriesExceeded": ("connection", False),
    "VideoUnavailable": ("unavailable", True),
}


def classify_pytube_error(e: BaseException) -> ScrapeError:
    """Sort an exception raised by pytubefix (or the urllib under it)."""
    for klass in type(e).__mro__:
        if klass.__name__ in _PYTUBE_ERRORS:
            reason, permanent = _PYTUBE_ERRORS[klass.__name__]
            return (PermanentError if permanent else TransientError)(reason, short_text(e))
    if isinstance(e, urllib.error.HTTPError):
        retry = e.headers.get("Retry-After") if e.headers else None
        return http_error(e.code, short_text(e), float(retry) if retry and retry.isdigit() else None)
    if isinstance(e, (urllib.error.URLError, TimeoutError, ConnectionError, OSError)):
        return TransientError("connection", short_text(e))
    return classify_message(short_text(e))


# pytubefix's own request headers; googlevideo serves these clients
_PYTUBE_HEADERS = {"User-Agent": "Mozilla/5.0", "accept-language": "en-US,en"}


class PytubeBackend:
    """The pytube API through pytubefix (pytube 15 itself no longer works against YouTube).
    ``playlist_cls`` / ``youtube_cls`` replace ``pytubefix.Playlist`` / ``pytubefix.YouTube`` in tests."""

    name = "pytube"

    def __init__(self, config: ScrapeConfig | None = None, playlist_cls: Any = None, youtube_cls: Any = None):
        self.config = config or ScrapeConfig()
        self._playlist_cls = playlist_cls
        self._youtube_cls = youtube_cls

    def _classes(self) -> tuple[Any, Any]:
        if self._playlist_cls is None or self._youtube_cls is None:
            import pytubefix

            return self._playlist_cls or pytubefix.Playlist, self._youtube_cls or pytubefix.YouTube
        return self._playlist_cls, self._youtube_cls

    def _info(self, yt: Any) -> VideoInfo:
        vid = yt.video_id  # parsed from the URL, no request
        try:
            return VideoInfo(id=vid, title=yt.title, duration=float(yt.length), uploader=yt.author,
                             url=getattr(yt, "watch_url", None))
        except Exception as e:
            err = classify_pytube_error(e)
            if isinstance(err, PermanentError):
                # one dead video must not sink the playlist: it is recorded, not fetched
                return VideoInfo(id=vid, url=getattr(yt, "watch_url", None), unavailable=err.reason)
            raise err from e

    def list_videos(self, url: str) -> list[VideoInfo]:
        """Videos of a playlist (``Playlist.videos``) or the one video of a watch URL (``YouTube``).
        pytube asks YouTube once per video for its length: slower than yt-dlp's flat listing."""
        playlist_cls, youtube_cls = self._classes()
        try:
            if parse_youtube_url(url).kind == "video":
                yts: Iterable[Any] = [youtube_cls(url)]
            else:
                yts = list(playlist_cls(url).videos)
        except ScrapeError:
            raise
        except Exception as e:
            raise classify_pytube_error(e) from e
        return [self._info(yt) for yt in yts]

    def resolve_audio(self, video: VideoInfo) -> AudioSource:
        """Highest-bitrate audio-only stream (``streams.filter(only_audio=True).order_by("abr")``)."""
        _, youtube_cls = self._classes()
        try:
            yt = youtube_cls(video.watch_url)
            stream = yt.streams.filter(only_audio=True).order_by("abr").desc().first()
        except Exception as e:
            raise classify_pytube_error(e) from e
        if stream is None:
            raise PermanentError("no_audio_stream", f"{video.id}: no audio-only stream")
        # pytube calls an audio-only mp4 "mp4"; it is an m4a (AAC) file
        ext = "m4a" if stream.subtype == "mp4" else stream.subtype
        note = " ".join(str(x) for x in (getattr(stream, "itag", None), getattr(stream, "audio_codec", None),
                                          getattr(stream, "abr", None)) if x)
        if getattr(stream, "is_sabr", False) or not getattr(stream, "url", None):
            # server-driven (SABR) streams have no plain URL: pytubefix downloads them itself
            def fetch(path: Path) -> None:
                try:
                    stream.download(output_path=str(path.parent), filename=path.name, max_retries=0)
                except Exception as e:
                    raise classify_pytube_error(e) from e

            return AudioSource(ext=ext, fetch=fetch, format_note=note)
        size = getattr(stream, "_filesize", None)  # from contentLength; the property would ask the network
        return AudioSource(ext=ext, url=stream.url, headers=dict(_PYTUBE_HEADERS), size=int(size) if size else None,
                           format_note=note)


BACKENDS: dict[str, Callable[[ScrapeConfig], Backend]] = {
    "yt-dlp": YtDlpBackend,
    "pytube": PytubeBackend,
}


def make_backend(name: str, config: ScrapeConfig) -> Backend:
    """Construct a backend by its ``--backend`` name."""
    try:
        return BACKENDS[name](config)
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None
