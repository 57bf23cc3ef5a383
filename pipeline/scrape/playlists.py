"""The playlists file: which YouTube playlists (and single videos) to scrape.

```yaml
playlists:
  - url: https://www.youtube.com/playlist?list=PLxxxxxxxx
    label: minimal          # optional, stored in the manifest
    max_tracks: 200         # optional, first N eligible videos of this playlist
    min_duration: 120       # optional seconds, default from the scrape config (2 min)
    max_duration: 900       # optional seconds, default from the scrape config (15 min)
  - url: https://www.youtube.com/watch?v=dQw4w9WgXcQ
```

Validated on load: a malformed URL, an unknown key or a bad number is an error
naming the entry (``playlists.yaml: entry 3 (https://...): max_tracks: ...``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import parse_qs, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, read_yaml

# Hosts whose URLs we accept; a typo such as "youtub.com" fails at load time rather
# than after an hour of scraping.
YOUTUBE_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com", "youtu.be"}
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_PLAYLIST_ID = re.compile(r"^[A-Za-z0-9_-]{10,64}$")


@dataclass(frozen=True)
class ParsedUrl:
    kind: str  # "playlist" | "video"
    id: str


def check_video_id(vid: object) -> str:
    """``vid`` if it is a YouTube video id (11 of ``A-Za-z0-9_-``), else ValueError.

    Ids become file names (``audio/<id>.<ext>``) and glob patterns, so one that a
    listing (or a hostile stub) returns is checked before it touches the file system."""
    if not isinstance(vid, str) or not _VIDEO_ID.match(vid):
        raise ValueError(f"not a YouTube video id (11 of A-Za-z0-9_-): {vid!r}")
    return vid


def canonical_url(parsed: ParsedUrl) -> str:
    """The URL a backend is given: rebuilt from the checked id, nothing else of the input."""
    if parsed.kind == "playlist":
        return f"https://www.youtube.com/playlist?list={parsed.id}"
    return f"https://www.youtube.com/watch?v={parsed.id}"


def parse_youtube_url(url: str) -> ParsedUrl:
    """Classify a YouTube URL as a playlist or a single video; ValueError when malformed
    (including any ``list=`` id, on any URL, that is not a playlist id)."""
    u = urlparse(url.strip())
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = (u.hostname or "").lower()
    query = parse_qs(u.query, keep_blank_values=True)
    if host not in YOUTUBE_HOSTS:
        raise ValueError(f"not a YouTube URL (host {host!r}): {url!r}")
    for lid in query.get("list", []):
        if not _PLAYLIST_ID.match(lid):
            raise ValueError(f"malformed list= id {lid!r} (10-64 of A-Za-z0-9_-) in {url!r}")
    if host == "youtu.be":
        vid = u.path.strip("/")
        if not _VIDEO_ID.match(vid):
            raise ValueError(f"malformed video id {vid!r} in {url!r}")
        return ParsedUrl("video", vid)
    if u.path.rstrip("/") == "/playlist":
        lid = (query.get("list") or [""])[0]
        if not _PLAYLIST_ID.match(lid):
            raise ValueError(f"playlist URL without a valid list= id: {url!r}")
        return ParsedUrl("playlist", lid)
    if u.path.rstrip("/") == "/watch" or u.path.startswith("/shorts/"):
        vid = (query.get("v") or [""])[0] if u.path.startswith("/watch") else u.path.split("/")[2]
        if not _VIDEO_ID.match(vid):
            raise ValueError(f"watch URL without a valid 11-character v= id: {url!r}")
        return ParsedUrl("video", vid)
    raise ValueError(f"neither a playlist (/playlist?list=...) nor a video (/watch?v=...) URL: {url!r}")


class PlaylistEntry(BaseModel):
    """One line of the playlists file: a playlist or a single video, with its filters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    label: Optional[str] = None
    max_tracks: Optional[int] = Field(None, ge=1)
    min_duration: Optional[float] = Field(None, ge=0.0, description="seconds; None = the scrape config's")
    max_duration: Optional[float] = Field(None, gt=0.0, description="seconds; None = the scrape config's")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("empty URL")
        return v

    @model_validator(mode="after")
    def _durations(self) -> "PlaylistEntry":
        if self.min_duration is not None and self.max_duration is not None and self.min_duration >= self.max_duration:
            raise ValueError(f"min_duration {self.min_duration} must be below max_duration {self.max_duration}")
        return self

    def durations(self, default_min: float, default_max: float) -> tuple[float, float]:
        """(min, max) seconds after applying the scrape config's defaults."""
        lo = default_min if self.min_duration is None else self.min_duration
        hi = default_max if self.max_duration is None else self.max_duration
        return lo, hi


def _entry_name(i: int, raw: Any) -> str:
    url = raw.get("url") if isinstance(raw, dict) else None
    return f"entry {i + 1}" + (f" ({url})" if url else "")


def parse_playlists(data: Any, where: str = "<playlists>") -> list[PlaylistEntry]:
    """Validate the loaded YAML. Accepts ``{"playlists": [...]}`` or a bare list; each item
    is a mapping or a plain URL string."""
    if isinstance(data, dict):
        extra = set(data) - {"playlists"}
        if extra:
            raise ConfigError(f"{where}: unknown top-level key(s) {sorted(extra)}; expected 'playlists'")
        data = data.get("playlists")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: expected a non-empty list under 'playlists'")
    entries: list[PlaylistEntry] = []
    errors: list[str] = []
    for i, raw in enumerate(data):
        item = {"url": raw} if isinstance(raw, str) else raw
        name = _entry_name(i, item)
        if not isinstance(item, dict):
            errors.append(f"{where}: {name}: expected a mapping or a URL string, got {type(raw).__name__}")
            continue
        try:
            entry = PlaylistEntry.model_validate(item)
        except ValidationError as e:
            for err in e.errors():
                key = ".".join(str(p) for p in err["loc"]) or "<entry>"
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                errors.append(f"{where}: {name}: {key}: {msg}")
            continue
        try:
            parse_youtube_url(entry.url)
        except ValueError as e:
            errors.append(f"{where}: {name}: url: {e}")
            continue
        entries.append(entry)
    if errors:
        raise ConfigError("\n".join(errors))
    return entries


def load_playlists(path: str | os.PathLike) -> list[PlaylistEntry]:
    """Read and validate a playlists YAML file; ConfigError names the file and the entry."""
    return parse_playlists(read_yaml(path, "playlists file"), str(path))
