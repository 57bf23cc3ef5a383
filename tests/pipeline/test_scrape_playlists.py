"""The playlists file: loading, defaults, and errors that name the bad entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, ScrapeConfig, load_config
from pipeline.scrape.playlists import load_playlists, parse_playlists, parse_youtube_url

REPO = Path(__file__).resolve().parents[2]
PL = "https://www.youtube.com/playlist?list=PLw-VjHDlEOgvtnnnqWlTqByAtC7tXBg6D"
VIDEO = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "playlists.yaml"
    p.write_text(text)
    return p


def test_loads_entries_and_applies_defaults(tmp_path):
    p = write(tmp_path, f"""
playlists:
  - url: {PL}
    label: peak time
    max_tracks: 20
    max_duration: 3600
  - {VIDEO}
""")
    a, b = load_playlists(p)
    assert (a.url, a.label, a.max_tracks) == (PL, "peak time", 20)
    c = ScrapeConfig()
    assert a.durations(c.min_duration, c.max_duration) == (120.0, 3600.0)
    assert b.url == VIDEO and b.label is None and b.durations(c.min_duration, c.max_duration) == (120.0, 900.0)


def test_the_example_file_is_valid():
    entries = load_playlists(REPO / "configs" / "playlists.example.yaml")
    assert len(entries) == 4 and entries[1].min_duration == 180


@pytest.mark.parametrize("body, expected", [
    (f"playlists:\n  - url: {PL}\n  - url: {VIDEO}\n    labl: x\n",
     f"entry 2 ({VIDEO}): labl: unknown key"),
    (f"playlists:\n  - url: {PL}\n  - url: https://www.youtub.com/playlist?list=PLabcdefghijk\n",
     "entry 2 (https://www.youtub.com/playlist?list=PLabcdefghijk): url: not a YouTube URL"),
    ("playlists:\n  - url: www.youtube.com/watch?v=dQw4w9WgXcQ\n",
     "entry 1 (www.youtube.com/watch?v=dQw4w9WgXcQ): url: not an http(s) URL"),
    ("playlists:\n  - url: https://www.youtube.com/watch?v=short\n", "url: watch URL without a valid 11-character v= id"),
    ("playlists:\n  - url: https://www.youtube.com/playlist\n", "url: playlist URL without a valid list= id"),
    ("playlists:\n  - url: https://www.youtube.com/@somechannel\n", "url: neither a playlist"),
    (f"playlists:\n  - url: {PL}\n    max_tracks: 0\n", f"entry 1 ({PL}): max_tracks: Input should be greater than or equal to 1"),
    (f"playlists:\n  - url: {PL}\n    min_duration: 600\n    max_duration: 300\n",
     "min_duration 600.0 must be below max_duration 300.0"),
    ("playlists:\n  - label: no url\n", "entry 1: url: Field required"),
    ("playlists:\n  - 42\n", "entry 1: expected a mapping or a URL string, got int"),
    ("playlists: []\n", "expected a non-empty list under 'playlists'"),
    (f"playlist:\n  - {PL}\n", "unknown top-level key(s) ['playlist']"),
    ("playlists: [\n", "not valid YAML"),
])
def test_errors_name_the_entry(tmp_path, body, expected):
    p = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_playlists(p)
    assert expected in str(e.value) and str(p) in str(e.value)


def test_all_bad_entries_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        parse_playlists([{"url": PL, "x": 1}, "https://example.com/a", VIDEO], "f.yaml")
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("f.yaml: entry 1") and lines[1].startswith("f.yaml: entry 2")


def test_missing_file():
    with pytest.raises(ConfigError, match="playlists file not found"):
        load_playlists("/nonexistent/playlists.yaml")


@pytest.mark.parametrize("url, kind, ident", [
    (PL, "playlist", "PLw-VjHDlEOgvtnnnqWlTqByAtC7tXBg6D"),
    (VIDEO, "video", "dQw4w9WgXcQ"),
    ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PLw-VjHDlEOgvtnnnqWlTqByAtC7tXBg6D", "video", "dQw4w9WgXcQ"),
    ("https://youtu.be/dQw4w9WgXcQ?si=abc", "video", "dQw4w9WgXcQ"),
    ("https://music.youtube.com/playlist?list=OLAK5uy_abcdefghijklmnop", "playlist", "OLAK5uy_abcdefghijklmnop"),
    ("https://m.youtube.com/shorts/dQw4w9WgXcQ", "video", "dQw4w9WgXcQ"),
])
def test_parse_youtube_url(url, kind, ident):
    parsed = parse_youtube_url(url)
    assert (parsed.kind, parsed.id) == (kind, ident)


def test_scrape_config_section(tmp_path):
    c = load_config(overrides={"scrape.retries": 2, "scrape.backend": "pytube"}).scrape
    assert (c.retries, c.backend) == (2, "pytube")
    with pytest.raises(ConfigError, match="scrape.backend"):
        load_config(overrides={"scrape.backend": "youtube-dl"})
    with pytest.raises(ConfigError, match="scrape.pause: unknown key"):
        load_config(overrides={"scrape.pause": 1})
    with pytest.raises(ConfigError, match="min_duration 900.0 must be below max_duration 900.0"):
        load_config(overrides={"scrape.min_duration": 900})


def test_cli_reports_a_bad_entry_and_exits_2(tmp_path):
    import subprocess
    import sys

    p = write(tmp_path, f"playlists:\n  - url: {PL}\n    max_tracks: many\n")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "scrape", "--playlists", str(p), "--out",
                        str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert f"technogan scrape: error: {p}: entry 1 ({PL}): max_tracks:" in r.stderr
    assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "scrape", "--playlists", str(p), "--out",
                        str(tmp_path / "out"), "--shard", "3/3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--shard must look like I/N" in r.stderr
