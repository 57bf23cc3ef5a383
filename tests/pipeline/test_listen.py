"""listen.html: a self-contained page whose audio and pictures decode, whose numbers are
the report's, logged to runs in a real MLflow store and played by a real browser."""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ListenConfig
from pipeline.listen import MIME_TYPES, PAGE_NAME, build_page, headline_from_metrics, headline_from_report
from tests.browser import artifact_dir
from tests.tracking.eval_runs import artifacts, make_checkpoint, make_run, store_uri

# cheap: a handful of clips, few Griffin-Lim iterations
LISTEN = ListenConfig(clips=2, real_clips=2, long_seconds=12.0, iterations=2)

REPORT = {  # what evaluate's Report holds, with numbers a test can find again
    "metrics": {"fd_learned": 12.345678, "beat_share": 0.625, "inception_score": 3.25},
    "metrics_std": {"fd_learned": 0.5123, "beat_share": 0.0, "inception_score": 0.125},
    "baseline": {"fd_learned": 1.2345, "beat_share": 0.875, "inception_score": 6.5},
    "baseline_std": {"fd_learned": 0.0123, "beat_share": 0.0, "inception_score": 0.25},
    "info": {"checkpoint": "latest", "model": "dcgan1", "epoch": 3, "n_generated": 64, "seeds": [4, 5]},
    "per_seed": {"seeds": [4, 5]},
}


def parse(text: str):
    """The page through a strict HTML5 parser (html5lib raises on any parse error)."""
    import html5lib

    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)


def payload(src: str) -> tuple[str, bytes]:
    m = re.fullmatch(r"data:([\w/+.-]+);base64,([A-Za-z0-9+/=]+)", src)
    assert m, src[:80]
    return m.group(1), base64.b64decode(m.group(2), validate=True)


def decoded_seconds(data: bytes, suffix: str, tmp_path: Path, sample_rate: int) -> float:
    """Through the project's decoder, as segment reads audio."""
    from pipeline.decode import open_audio

    path = tmp_path / f"decoded-{len(list(tmp_path.glob('decoded-*')))}.{suffix}"
    path.write_bytes(data)
    _, blocks = open_audio(path, sample_rate)
    samples = sum(len(b) for b in blocks.blocks)
    assert not blocks.error, blocks.error
    return samples / sample_rate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("listen") / "g.pt", resolution=32)


@pytest.fixture(scope="module")
def built(checkpoint, small_dataset):
    return build_page(checkpoint, small_dataset, LISTEN, headline_from_report(REPORT), title="dcgan1 <run>",
                      lines=["a line & more"])


def test_the_page_is_html5_with_audio_and_pictures_that_decode(built, tmp_path, mel_config):
    doc = parse(built.html)
    assert doc.find("head/title").text == "dcgan1 <run>"  # escaped in the source, itself when parsed
    assert doc.find("head/meta[@name='viewport']") is not None  # phones get the page at their width
    audios, images = doc.findall(".//audio"), doc.findall(".//img")
    # 2 generated, 1 long piece, 2 real clips: each with its spectrogram
    assert len(audios) == 5 and len(images) == 5
    expected = [5.0, 5.0, LISTEN.long_seconds, 5.0, 5.0]
    for audio, seconds in zip(audios, expected):
        mime, data = payload(audio.get("src"))
        assert mime == MIME_TYPES[LISTEN.format]
        got = decoded_seconds(data, LISTEN.format, tmp_path, mel_config.sample_rate)
        assert got == pytest.approx(seconds, abs=0.1), (audio.get("data-seconds"), got)
        assert float(audio.get("data-seconds")) == pytest.approx(seconds, abs=0.05)
    from PIL import Image

    for img in images:
        mime, data = payload(img.get("src"))
        picture = Image.open(io.BytesIO(data))
        assert mime == "image/png" and picture.format == "PNG" and min(picture.size) > 50
    # nothing is fetched from elsewhere: every src is embedded, no script, no stylesheet link
    assert all(el.get("src", "").startswith("data:") for el in doc.iter() if el.get("src") is not None)
    assert doc.findall(".//script") == [] and doc.findall(".//link") == []
    titles = [fig.find("figcaption").text.strip() for fig in doc.findall(".//figure")]
    assert titles[:2] == ["generated 1", "generated 2"] and titles[3:] == ["real 1", "real 2"]
    assert set(built.sounds) == {"Generated clips", "Long-form piece", "Real clips"}


def test_the_page_shows_the_scores_with_their_baselines_and_seeds(built):
    doc = parse(built.html)
    rows = {tr.get("data-metric"): tr for tr in doc.findall(".//table[@id='metrics']/tbody/tr")}
    assert set(rows) == set(REPORT["metrics"])
    for key, row in rows.items():
        gen, base = row.find("td[@class='generated']"), row.find("td[@class='baseline']")
        assert float(gen.get("data-mean")) == REPORT["metrics"][key]
        assert float(gen.get("data-std")) == REPORT["metrics_std"][key]
        assert float(base.get("data-mean")) == REPORT["baseline"][key]
        assert float(base.get("data-std")) == REPORT["baseline_std"][key]
        # what a reader sees: mean ± std, to 4 significant digits
        shown = [float(x) for x in re.findall(r"[-\d.e+]+", gen.text)]
        assert shown[0] == pytest.approx(REPORT["metrics"][key], rel=1e-3)
    assert rows["fd_learned"].findall("td")[-1].text == "lower"
    assert rows["inception_score"].findall("td")[-1].text == "higher"
    assert doc.find(".//p[@id='seeds']").get("data-seeds") == "4, 5"


def test_headline_from_logged_metrics_when_no_report_is_at_hand():
    h = headline_from_metrics({"eval.fd_learned": 2.0, "eval.std.fd_learned": 0.25, "eval.baseline.fd_learned": 0.5,
                               "eval.ceiling.fd_learned": 0.75, "epoch": 3.0}, {"technogan.eval.n": "64"})
    assert [(r.key, r.mean, r.std, r.baseline) for r in h.rows] == [("fd_learned", 2.0, 0.25, 0.5)]
    assert h.n_generated == 64


def test_without_the_dataset_the_page_says_so_and_keeps_the_rest(checkpoint, tmp_path):
    cfg = ListenConfig(clips=1, real_clips=2, long_seconds=0.0, iterations=1, format="wav")
    built = build_page(checkpoint, tmp_path / "gone", cfg, None, title="t")
    doc = parse(built.html)
    assert len(doc.findall(".//audio")) == 1 and doc.find(".//table") is None
    assert "not on this machine" in built.html and str(tmp_path / "gone") in built.html


def test_promote_logs_the_champions_page_to_its_run(tmp_path, small_dataset):
    from pipeline.evaluate.promote import promote
    from tracking.runs import get_client

    uri = store_uri(tmp_path)
    ids = {m: make_run(uri, "promo", tmp_path, model=m, dataset=small_dataset,
                       metrics={"eval.fd_learned": fd, "eval.std.fd_learned": 0.125, "eval.baseline.fd_learned": 0.5})
           for m, fd in (("dcgan1", 5.0), ("dcgan2", 2.0))}
    cfg = ListenConfig(clips=1, real_clips=1, long_seconds=0.0, iterations=1)
    result = promote("promo", "eval.fd_learned", "gen-listen", "champion", uri, out=tmp_path / "p", listen=cfg)
    assert result.winner.run_id == ids["dcgan2"]
    assert "promotion/" + PAGE_NAME in artifacts(get_client(uri), ids["dcgan2"], "promotion")
    doc = parse((tmp_path / "p" / PAGE_NAME).read_text())
    assert "Champion: dcgan2" in doc.find(".//h1").text
    # no report on these runs: the scores come from the logged metrics
    row = doc.find(".//table[@id='metrics']/tbody/tr[@data-metric='fd_learned']")
    assert float(row.find("td[@class='generated']").get("data-mean")) == 2.0
    assert float(row.find("td[@class='generated']").get("data-std")) == 0.125
    assert float(row.find("td[@class='baseline']").get("data-mean")) == 0.5
    ranked = [tr.find("td").text for tr in doc.findall(".//table[@id='comparison']/tbody/tr")]
    assert ranked[:2] == ["dcgan2", "dcgan1"]
    assert len(doc.findall(".//audio")) == 2  # one generated, one real
    # without a listen config, promote logs no page
    promote("promo", "eval.fd_learned", "gen-listen", "champion", uri, out=tmp_path / "q")
    assert not (tmp_path / "q" / PAGE_NAME).exists()


@pytest.mark.slow
def test_the_page_plays_in_a_real_browser(built, tmp_path, page):  # noqa: F811 (the fixture)
    path = built.write(tmp_path / PAGE_NAME)
    page.goto(path.resolve().as_uri())
    # every audio element reads its header (no download beyond the data URI) ...
    page.wait_for_function("() => [...document.querySelectorAll('audio')].every(a => a.readyState >= 1)")
    durations = page.evaluate("() => [...document.querySelectorAll('audio')].map(a => a.duration)")
    expected = [5.0, 5.0, LISTEN.long_seconds, 5.0, 5.0]
    assert len(durations) == len(expected)
    for got, want in zip(durations, expected):
        assert math.isfinite(got) and got == pytest.approx(want, abs=0.15), durations
    # ... every picture is decoded ...
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    widths = page.evaluate("() => [...document.images].map(i => i.naturalWidth)")
    assert len(widths) == 5 and min(widths) > 0
    page.screenshot(path=str(artifact_dir() / "listen-desktop.png"), full_page=True)
    # ... and on a phone's width nothing sticks out sideways but the scrollable score table
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    card = page.evaluate("() => document.querySelector('figure img').getBoundingClientRect().width")
    assert 300 <= card <= 390
    page.screenshot(path=str(artifact_dir() / "listen-phone.png"), full_page=True)


def test_config_turns_the_page_off_and_bounds_it():
    from pipeline.config import EvaluateConfig, load_config
    from pipeline.errors import UserError

    assert EvaluateConfig().listen.enabled and load_config(None).evaluate.listen.format in MIME_TYPES
    assert not load_config(None, {"evaluate.listen.enabled": False}).evaluate.listen.enabled
    with pytest.raises(UserError, match="evaluate.listen.clips"):
        load_config(None, {"evaluate.listen.clips": 1000})
    with pytest.raises(UserError, match="evaluate.listen.long_seconds"):
        load_config(None, {"evaluate.listen.long_seconds": 2.0})
    with pytest.raises(UserError, match="evaluate.listen.format"):
        load_config(None, {"evaluate.listen.format": "flac"})
    assert np.isfinite(load_config(None).evaluate.demo_long_seconds)


def test_a_piece_of_exactly_one_row_is_drawn_in_one_row(mel_config):
    from PIL import Image

    from pipeline.longform import seconds_to_frames
    from pipeline.plot import plot_long_mel

    # a 30 s piece has one frame past 30 s (T frames are T - 1 hops): still one row of 30 s
    frames = seconds_to_frames(30.0, mel_config)
    one = Image.open(io.BytesIO(plot_long_mel(np.zeros((mel_config.n_mels, frames), np.float32), mel_config)))
    two = Image.open(io.BytesIO(plot_long_mel(np.zeros((mel_config.n_mels, 2 * frames), np.float32), mel_config)))
    assert two.size[1] > 1.5 * one.size[1]  # 60 s: two rows of 30 s
