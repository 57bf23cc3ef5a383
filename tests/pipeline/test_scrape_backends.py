"""The pytube (pytubefix) and yt-dlp adapters against recorded metadata structures: no network.

yt-dlp is driven through a stand-in for ``yt_dlp.YoutubeDL`` that returns dicts shaped
like its ``extract_info`` output (flat playlist entries with ``process=False``, a
processed video with ``formats``) and raises yt-dlp's own exception classes. pytubefix
is driven through stand-ins for ``Playlist`` / ``YouTube`` whose ``streams`` is a real
``pytubefix.query.StreamQuery`` over stream-shaped objects, and raises pytubefix's own
exception classes.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yt_dlp
from pytubefix import exceptions as ptx
from pytubefix import extract
from pytubefix.query import StreamQuery

from pipeline.config import ScrapeConfig
from pipeline.scrape.backends import (BACKENDS, PermanentError, PytubeBackend, TransientError, VideoInfo,
                                      YtDlpBackend, classify_message, make_backend)

PL = "https://www.youtube.com/playlist?list=PLw-VjHDlEOgvtnnnqWlTqByAtC7tXBg6D"


# ----------------------------------------------------------------------------- yt-dlp

def flat_entry(vid: str, title: str, duration: float | None, **kw: Any) -> dict:
    """A flat playlist entry as yt-dlp's YoutubeTab extractor yields it (``_type: url``)."""
    return {"_type": "url", "ie_key": "Youtube", "id": vid, "url": f"https://www.youtube.com/watch?v={vid}",
            "title": title, "description": None, "duration": duration, "channel_id": "UCabcdefghijklmnopqrstuv",
            "channel": "Techno Channel", "channel_url": "https://www.youtube.com/channel/UCabcdefghijklmnopqrstuv",
            "uploader": kw.pop("uploader", "Techno Channel"), "uploader_id": "@technochannel",
            "thumbnails": [{"url": f"https://i.ytimg.com/vi/{vid}/hqdefault.jpg", "height": 94, "width": 168}],
            "timestamp": None, "release_timestamp": None, "availability": None, "view_count": 12345,
            "live_status": kw.pop("live_status", None), "channel_is_verified": None, "__x_forwarded_for_ip": None, **kw}


FORMATS = [
    {"format_id": "139", "ext": "m4a", "acodec": "mp4a.40.5", "vcodec": "none", "abr": 48.8, "tbr": 48.8,
     "protocol": "https", "url": "https://rr1.googlevideo.com/videoplayback?itag=139", "filesize": 2_000_000,
     "http_headers": {"User-Agent": "Mozilla/5.0", "Accept-Language": "en-us,en;q=0.5"}},
    {"format_id": "251", "ext": "webm", "acodec": "opus", "vcodec": "none", "abr": 135.5, "tbr": 135.5,
     "protocol": "https", "url": "https://rr1.googlevideo.com/videoplayback?itag=251", "filesize": 5_533_410,
     "http_headers": {"User-Agent": "Mozilla/5.0", "Accept-Language": "en-us,en;q=0.5", "Sec-Fetch-Mode": "navigate"}},
    {"format_id": "234", "ext": "mp4", "acodec": "mp4a.40.2", "vcodec": "none", "abr": 192.0, "tbr": 192.0,
     "protocol": "m3u8_native", "url": "https://manifest.googlevideo.com/api/manifest/hls_playlist/234"},
    {"format_id": "18", "ext": "mp4", "acodec": "mp4a.40.2", "vcodec": "avc1.42001E", "abr": 96.0, "tbr": 400.0,
     "protocol": "https", "url": "https://rr1.googlevideo.com/videoplayback?itag=18"},
    {"format_id": "sb0", "ext": "mhtml", "acodec": "none", "vcodec": "none", "protocol": "mhtml",
     "url": "https://i.ytimg.com/sb/x/storyboard3_L0/default.jpg"},
]


class FakeYDL:
    """Stands in for ``yt_dlp.YoutubeDL``: answers from ``responses`` keyed by (url, process)."""

    responses: dict[tuple[str, bool], Any] = {}
    instances: list["FakeYDL"] = []

    def __init__(self, opts: dict):
        self.opts = opts
        self.calls: list[tuple] = []
        FakeYDL.instances.append(self)

    def __enter__(self) -> "FakeYDL":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def extract_info(self, url: str, download: bool = True, process: bool = True) -> dict:
        self.calls.append(("extract_info", url, download, process))
        answer = self.responses[(url, process)]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer()
        return answer

    def download(self, urls: list[str]) -> int:
        self.calls.append(("download", urls))
        Path(self.opts["outtmpl"]).write_bytes(b"audio from yt-dlp")
        return 0


@pytest.fixture
def ydl():
    FakeYDL.responses = {}
    FakeYDL.instances = []
    return YtDlpBackend(ScrapeConfig(read_timeout=7.0), ydl_cls=FakeYDL)


def test_ytdlp_lists_a_flat_playlist(ydl):
    def playlist():
        # process=False leaves entries as a lazy generator that fetches pages while iterated
        def entries():
            yield flat_entry("aaaaaaaaaaa", "Track A", 361.0)
            yield flat_entry("bbbbbbbbbbb", "[Private video]", None, uploader=None)
            yield flat_entry("ccccccccccc", "Live set", None, live_status="is_live")
            yield flat_entry("ddddddddddd", "Track D", 4210.0, uploader=None)
        return {"_type": "playlist", "id": PL.split("=")[1], "title": "Techno", "entries": entries(),
                "webpage_url": PL, "extractor_key": "YoutubeTab"}

    FakeYDL.responses[(PL, False)] = playlist
    videos = ydl.list_videos(PL)
    assert videos == [
        VideoInfo("aaaaaaaaaaa", "Track A", 361.0, "Techno Channel", "https://www.youtube.com/watch?v=aaaaaaaaaaa"),
        VideoInfo("bbbbbbbbbbb", "[Private video]", None, "Techno Channel",
                  "https://www.youtube.com/watch?v=bbbbbbbbbbb", unavailable="private"),
        VideoInfo("ccccccccccc", "Live set", None, "Techno Channel",
                  "https://www.youtube.com/watch?v=ccccccccccc", unavailable="live"),
        # no uploader in the entry: the channel name stands in
        VideoInfo("ddddddddddd", "Track D", 4210.0, "Techno Channel", "https://www.youtube.com/watch?v=ddddddddddd"),
    ]
    (inst,) = FakeYDL.instances
    assert inst.calls == [("extract_info", PL, False, False)]
    assert inst.opts["extract_flat"] == "in_playlist" and inst.opts["socket_timeout"] == 7.0
    assert inst.opts["retries"] == 0  # our loop owns retries


def test_ytdlp_lists_a_single_video(ydl):
    url = "https://www.youtube.com/watch?v=aaaaaaaaaaa"
    FakeYDL.responses[(url, False)] = {"id": "aaaaaaaaaaa", "title": "Track A", "duration": 300,
                                       "uploader": "Someone", "webpage_url": url, "formats": FORMATS}
    assert ydl.list_videos(url) == [VideoInfo("aaaaaaaaaaa", "Track A", 300.0, "Someone", url)]


def test_ytdlp_resolves_the_best_direct_audio_only_format(ydl):
    v = VideoInfo("aaaaaaaaaaa", "Track A", 300.0)
    FakeYDL.responses[(v.watch_url, True)] = {"id": v.id, "formats": FORMATS}
    src = ydl.resolve_audio(v)
    # opus 135k over m4a 48k; the 192k HLS-only format and the muxed video lose to a direct download
    assert src.url == "https://rr1.googlevideo.com/videoplayback?itag=251" and src.ext == "webm"
    assert src.size == 5_533_410 and src.headers["Sec-Fetch-Mode"] == "navigate" and src.fetch is None
    assert src.format_note == "251 opus 136k"


def test_ytdlp_falls_back_to_its_own_downloader_without_a_direct_url(ydl, tmp_path):
    v = VideoInfo("aaaaaaaaaaa", "Track A", 300.0)
    FakeYDL.responses[(v.watch_url, True)] = {"id": v.id, "formats": [FORMATS[2], FORMATS[3]]}
    src = ydl.resolve_audio(v)
    assert src.url is None and src.ext == "mp4"
    target = tmp_path / ".tmp-aaaaaaaaaaa.part"
    src.fetch(target)
    assert target.read_bytes() == b"audio from yt-dlp"
    dl = FakeYDL.instances[-1]
    assert dl.calls == [("download", [v.watch_url])]
    assert dl.opts["format"] == "234" and dl.opts["outtmpl"] == str(target) and dl.opts["skip_download"] is False


def test_ytdlp_without_audio_is_permanent(ydl):
    v = VideoInfo("aaaaaaaaaaa")
    FakeYDL.responses[(v.watch_url, True)] = {"id": v.id, "formats": [FORMATS[3], FORMATS[4]]}
    with pytest.raises(PermanentError) as e:
        ydl.resolve_audio(v)
    assert e.value.reason == "no_audio_stream"


@pytest.mark.parametrize("error, kind, reason", [
    (yt_dlp.utils.DownloadError("ERROR: [youtube] aaaaaaaaaaa: Private video. Sign in if you've been granted access"),
     PermanentError, "private"),
    (yt_dlp.utils.DownloadError("ERROR: [youtube] aaaaaaaaaaa: Sign in to confirm your age. This video may be "
                                "inappropriate for some users."), PermanentError, "age_restricted"),
    (yt_dlp.utils.DownloadError("ERROR: [youtube] aaaaaaaaaaa: Video unavailable. This video has been removed by "
                                "the uploader"), PermanentError, "removed"),
    (yt_dlp.utils.GeoRestrictedError("This video is available in DE only", countries=["DE"]),
     PermanentError, "region_blocked"),
    (yt_dlp.utils.DownloadError("ERROR: [youtube] aaaaaaaaaaa: The uploader has not made this video available in "
                                "your country"), PermanentError, "region_blocked"),
    (yt_dlp.utils.DownloadError("ERROR: Unable to download API page: HTTP Error 429: Too Many Requests"),
     TransientError, "http_429"),
    (yt_dlp.utils.DownloadError("ERROR: Unable to download webpage: HTTP Error 503: Service Unavailable"),
     TransientError, "http_5xx"),
    (yt_dlp.utils.DownloadError("ERROR: Unable to download webpage: <urlopen error [Errno 104] Connection reset "
                                "by peer>"), TransientError, "connection"),
    (yt_dlp.utils.DownloadError("ERROR: [youtube] aaaaaaaaaaa: Sign in to confirm you're not a bot"),
     TransientError, "bot_check"),
    (yt_dlp.utils.DownloadError("ERROR: [youtube:tab] PLw: Unable to download API page: HTTPSConnection(host="
                                "'www.youtube.com', port=443): Failed to resolve 'www.youtube.com'"),
     TransientError, "connection"),
])
def test_ytdlp_errors_are_sorted(ydl, error, kind, reason):
    v = VideoInfo("aaaaaaaaaaa")
    FakeYDL.responses[(v.watch_url, True)] = error
    with pytest.raises(kind) as e:
        ydl.resolve_audio(v)
    assert type(e.value) is kind and e.value.reason == reason


def test_ytdlp_playlist_that_does_not_exist_is_permanent(ydl):
    FakeYDL.responses[(PL, False)] = yt_dlp.utils.DownloadError(
        "ERROR: [youtube:tab] PLw-VjHDlEOgvtnnnqWlTqByAtC7tXBg6D: The playlist does not exist.")
    with pytest.raises(PermanentError):
        ydl.list_videos(PL)


def test_real_youtubedl_accepts_the_options():
    backend = YtDlpBackend(ScrapeConfig())
    with backend._ydl(extract_flat="in_playlist") as real:
        assert isinstance(real, yt_dlp.YoutubeDL)
        assert real.params["extract_flat"] == "in_playlist" and real.params["quiet"] is True
        assert real.params["logger"] is not None  # yt-dlp's own stderr output goes to logging


# ----------------------------------------------------------------------------- pytube (pytubefix)


def stream(itag: int, mime: str, abr: str | None, audio: bool, video: bool, **kw: Any) -> SimpleNamespace:
    """An object with the attributes of ``pytubefix.Stream`` that StreamQuery and the backend read."""
    type_, subtype = mime.split("/")
    return SimpleNamespace(itag=itag, mime_type=mime, type=type_, subtype=subtype, abr=abr,
                           includes_audio_track=audio, includes_video_track=video, is_progressive=audio and video,
                           is_adaptive=not (audio and video), audio_codec=kw.get("codec"), is_sabr=kw.get("sabr", False),
                           url=f"https://rr2.googlevideo.com/videoplayback?itag={itag}&expire=1999999999",
                           _filesize=kw.get("size", 0), download=kw.get("download"))


STREAMS = [
    stream(18, "video/mp4", "96kbps", True, True, codec="mp4a.40.2"),
    stream(137, "video/mp4", None, False, True),
    stream(139, "audio/mp4", "48kbps", True, False, codec="mp4a.40.5", size=1_000_000),
    stream(140, "audio/mp4", "128kbps", True, False, codec="mp4a.40.2", size=4_800_000),
    stream(249, "audio/webm", "50kbps", True, False, codec="opus"),
    stream(251, "audio/webm", "160kbps", True, False, codec="opus", size=5_100_000),
]

# video id -> (title, length or an exception to raise, author, streams or an exception)
VIDEOS: dict[str, tuple] = {}


class FakeYouTube:
    """Shaped like ``pytubefix.YouTube``: ``video_id`` comes from the URL; metadata and
    ``streams`` may raise pytubefix's exceptions the way the real properties do."""

    def __init__(self, url: str, **kw: Any):
        self.video_id = extract.video_id(url)  # pytubefix's own URL parsing
        self.watch_url = f"https://youtube.com/watch?v={self.video_id}"
        self._spec = VIDEOS[self.video_id]

    def _get(self, i: int) -> Any:
        value = self._spec[i]
        if isinstance(value, BaseException):
            raise value
        return value

    title = property(lambda self: self._get(0))
    length = property(lambda self: self._get(1))
    author = property(lambda self: self._get(2))

    @property
    def streams(self) -> StreamQuery:
        return StreamQuery(list(self._get(3)))


class FakePlaylist:
    """Shaped like ``pytubefix.Playlist``: ``videos`` yields YouTube objects."""

    lists: dict[str, list[str]] = {}

    def __init__(self, url: str, **kw: Any):
        self.url = url

    @property
    def videos(self):
        ids = self.lists[self.url]
        if isinstance(ids, BaseException):
            raise ids
        return (FakeYouTube(f"https://www.youtube.com/watch?v={i}") for i in ids)


@pytest.fixture
def pyt():
    VIDEOS.clear()
    FakePlaylist.lists = {}
    return PytubeBackend(ScrapeConfig(), playlist_cls=FakePlaylist, youtube_cls=FakeYouTube)


def test_pytube_lists_a_playlist(pyt):
    VIDEOS.update({
        "aaaaaaaaaaa": ("Track A", 361, "DJ A", STREAMS),
        "bbbbbbbbbbb": ("Track B", ptx.VideoPrivate("bbbbbbbbbbb"), "DJ B", STREAMS),
        "ccccccccccc": ("Track C", ptx.AgeRestrictedError("ccccccccccc"), "DJ C", STREAMS),
    })
    FakePlaylist.lists[PL] = ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"]
    videos = pyt.list_videos(PL)
    assert videos == [
        VideoInfo("aaaaaaaaaaa", "Track A", 361.0, "DJ A", "https://youtube.com/watch?v=aaaaaaaaaaa"),
        VideoInfo("bbbbbbbbbbb", url="https://youtube.com/watch?v=bbbbbbbbbbb", unavailable="private"),
        VideoInfo("ccccccccccc", url="https://youtube.com/watch?v=ccccccccccc", unavailable="age_restricted"),
    ]


def test_pytube_lists_a_single_video(pyt):
    VIDEOS["aaaaaaaaaaa"] = ("Track A", 200, "DJ A", STREAMS)
    (v,) = pyt.list_videos("https://youtu.be/aaaaaaaaaaa?si=x")
    assert (v.id, v.title, v.duration, v.uploader) == ("aaaaaaaaaaa", "Track A", 200.0, "DJ A")


def test_pytube_listing_errors(pyt):
    FakePlaylist.lists[PL] = urllib.error.HTTPError(PL, 503, "Service Unavailable", None, None)
    with pytest.raises(TransientError) as e:
        pyt.list_videos(PL)
    assert e.value.reason == "http_503"
    VIDEOS["aaaaaaaaaaa"] = ("Track A", ptx.BotDetection("aaaaaaaaaaa"), "DJ A", STREAMS)
    FakePlaylist.lists[PL] = ["aaaaaaaaaaa"]
    with pytest.raises(TransientError) as e:  # a bot check on one video may pass later: not recorded as dead
        pyt.list_videos(PL)
    assert e.value.reason == "bot_check"


def test_pytube_resolves_the_highest_bitrate_audio_only_stream(pyt):
    VIDEOS["aaaaaaaaaaa"] = ("Track A", 200, "DJ A", STREAMS)
    src = pyt.resolve_audio(VideoInfo("aaaaaaaaaaa"))
    assert src.url == STREAMS[5].url and src.ext == "webm" and src.size == 5_100_000
    assert src.headers["User-Agent"] and src.format_note == "251 opus 160kbps"
    VIDEOS["aaaaaaaaaaa"] = ("Track A", 200, "DJ A", STREAMS[:4])
    src = pyt.resolve_audio(VideoInfo("aaaaaaaaaaa"))
    assert src.url == STREAMS[3].url and src.ext == "m4a"  # an audio-only "mp4" is an m4a


def test_pytube_sabr_stream_uses_pytubefix_download(pyt, tmp_path):
    calls = []

    def download(output_path, filename, max_retries):
        calls.append((output_path, filename, max_retries))
        (Path(output_path) / filename).write_bytes(b"sabr audio")

    VIDEOS["aaaaaaaaaaa"] = ("Track A", 200, "DJ A", [stream(251, "audio/webm", "160kbps", True, False,
                                                              sabr=True, download=download)])
    src = pyt.resolve_audio(VideoInfo("aaaaaaaaaaa"))
    assert src.url is None
    src.fetch(tmp_path / ".tmp-aaaaaaaaaaa.part")
    assert calls == [(str(tmp_path), ".tmp-aaaaaaaaaaa.part", 0)]
    assert (tmp_path / ".tmp-aaaaaaaaaaa.part").read_bytes() == b"sabr audio"


@pytest.mark.parametrize("error, kind, reason", [
    (ptx.VideoPrivate("aaaaaaaaaaa"), PermanentError, "private"),
    (ptx.AgeRestrictedError("aaaaaaaaaaa"), PermanentError, "age_restricted"),
    (ptx.VideoRegionBlocked("aaaaaaaaaaa"), PermanentError, "region_blocked"),
    (ptx.VideoRemovedByUploader("aaaaaaaaaaa"), PermanentError, "removed"),
    (ptx.MembersOnly("aaaaaaaaaaa"), PermanentError, "members_only"),
    (ptx.VideoUnavailable("aaaaaaaaaaa"), PermanentError, "unavailable"),
    (ptx.BotDetection("aaaaaaaaaaa"), TransientError, "bot_check"),
    (urllib.error.HTTPError("u", 429, "Too Many Requests", None, None), TransientError, "http_429"),
    (urllib.error.HTTPError("u", 403, "Forbidden", None, None), PermanentError, "http_403"),
    (urllib.error.URLError(ConnectionResetError(104, "Connection reset by peer")), TransientError, "connection"),
    (TimeoutError("timed out"), TransientError, "connection"),
])
def test_pytube_errors_are_sorted(pyt, error, kind, reason):
    VIDEOS["aaaaaaaaaaa"] = ("Track A", 200, "DJ A", error)
    with pytest.raises(kind) as e:
        pyt.resolve_audio(VideoInfo("aaaaaaaaaaa"))
    assert type(e.value) is kind and e.value.reason == reason


def test_pytube_without_audio_is_permanent(pyt):
    VIDEOS["aaaaaaaaaaa"] = ("Track A", 200, "DJ A", STREAMS[:2])
    with pytest.raises(PermanentError) as e:
        pyt.resolve_audio(VideoInfo("aaaaaaaaaaa"))
    assert e.value.reason == "no_audio_stream"


# ----------------------------------------------------------------------------- registry and sorting


def test_backend_registry():
    assert sorted(BACKENDS) == ["pytube", "yt-dlp"]
    assert isinstance(make_backend("pytube", ScrapeConfig()), PytubeBackend)
    assert make_backend("yt-dlp", ScrapeConfig()).name == "yt-dlp"
    with pytest.raises(ValueError, match="unknown backend 'youtube-dl'"):
        make_backend("youtube-dl", ScrapeConfig())


def test_unknown_messages_are_retried():
    err = classify_message("something odd happened")
    assert isinstance(err, TransientError) and err.reason == "error"
