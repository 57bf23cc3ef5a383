"""technogan studio: the backend on its own (fast), then against a real TorchServe, through
its gate, and in a real headless Chromium (slow)."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import requests
import soundfile as sf
with warnings.catch_warnings():  # Starlette 1.x would rather have httpx2 for its test client; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from pipeline.config import MelConfig, ServeConfig
from serving.server import free_port
from serving.studio import GenerateForm, Studio, StudioError, StudioServer, byte_range, parse_seed, server_error
from tests.browser import artifact_dir

MEL = MelConfig()
PNG = b"\x89PNG\r\n\x1a\n"
TOO_BIG_SEED = "9" * 25  # digits the page accepts; the server names the range


# ----------------------------------------------------------------------------- fast: no server


def test_form_parsing_checks_shape_and_leaves_ranges_to_the_server():
    assert parse_seed("") is None and parse_seed(None) is None and parse_seed(" 42 ") == 42
    assert parse_seed(TOO_BIG_SEED) == int(TOO_BIG_SEED)  # out of range, but the server says so
    for bad in ("4.5", "seven", "1e3", True):
        with pytest.raises(StudioError) as e:
            parse_seed(bad)
        assert e.value.status == 400 and e.value.field == "seed"
    form = GenerateForm.parse({"seed": "7", "mode": "long", "seconds": "30", "format": "WAV"})
    assert form.body("png", 7) == {"n": 1, "seed": 7, "format": "png", "seconds": 30}
    assert GenerateForm.parse({"seed": "", "seconds": "x"}).seconds is None  # a clip ignores seconds
    for doc, fld in (({"mode": "long"}, "seconds"), ({"mode": "long", "seconds": "abc"}, "seconds"),
                     ({"format": "flac"}, "format"), ({"mode": "loop"}, "mode"), ({"bogus": 1}, "bogus"),
                     ([1], "body")):
        with pytest.raises(StudioError) as e:
            GenerateForm.parse(doc)
        assert e.value.field == fld, doc


def test_server_errors_keep_the_servers_words():
    e = server_error(400, json.dumps({"error": "seed: input should be at most 5", "field": "seed"}).encode())
    assert (e.status, e.message, e.field, e.source) == (400, "seed: input should be at most 5", "seed", "server")
    e = server_error(503, json.dumps({"code": 503, "type": "ServiceUnavailableException",
                                      "message": "Model \"technogan\" has no worker to serve inference request."}).encode())
    assert e.status == 502 and "HTTP 503" in e.message and "no worker" in e.message
    assert server_error(500, b"").message.endswith("(empty answer)")


def test_byte_ranges_for_the_audio_element():
    assert byte_range(None, 100) is None and byte_range("bytes=0-", 100) == (0, 99)
    assert byte_range("bytes=10-19", 100) == (10, 19) and byte_range("bytes=90-500", 100) == (90, 99)
    assert byte_range("bytes=-30", 100) == (70, 99) and byte_range("bytes=-300", 100) == (0, 99)
    for unsatisfiable in ("bytes=100-", "bytes=20-10", "bytes=-0"):
        with pytest.raises(ValueError):
            byte_range(unsatisfiable, 100)
    assert byte_range("bytes=0-1,5-6", 100) is None and byte_range("items=0-1", 100) is None


@pytest.fixture
def down_studio(tmp_path):
    """A studio whose TorchServe is not there: a loopback port nobody listens on."""
    studio = Studio(f"http://127.0.0.1:{free_port()}", serve=ServeConfig(), timeout=5, workdir=tmp_path)
    with TestClient(studio.app) as client:
        yield client


def test_server_down_is_an_error_the_page_can_show(down_studio):
    page_html = down_studio.get("/")
    assert page_html.status_code == 200 and 'id="generate"' in page_html.text and 'role="alert"' in page_html.text
    info = down_studio.get("/api/info").json()
    assert info["server"]["reachable"] is False and "not reachable" in info["server"]["error"]
    r = down_studio.post("/api/generate", json={"seed": "1"})
    assert r.status_code == 502 and "not reachable" in r.json()["error"] and r.json()["source"] == "studio"
    # the page's own mistakes are caught before anything is sent
    r = down_studio.post("/api/generate", json={"seed": "x1"})
    assert r.status_code == 400 and r.json()["field"] == "seed"
    r = down_studio.post("/api/generate", content=b"{" * 5000)
    assert r.status_code == 413
    r = down_studio.post("/api/generate", json={"version": "2"})
    assert r.status_code == 400 and "--mlflow" in r.json()["error"]  # no registry: only the served version
    assert down_studio.get("/api/results/nope/audio").status_code == 404
    assert down_studio.get("/api/generate").status_code == 405


def test_kept_results_are_bounded_in_number_and_bytes(tmp_path):
    from serving.studio import Result

    studio = Studio("http://127.0.0.1:1", workdir=tmp_path)
    ids = [studio.keep(Result(b"a" * 10, "audio/wav", b"p", f"{i}.wav"), max_results=3) for i in range(5)]
    assert list(studio.results) == ids[2:]
    big = studio.keep(Result(b"b" * 1000, "audio/wav", b"", "big.wav"), max_results=3, max_bytes=500)
    assert list(studio.results) == [big]  # alone over the bound, but the newest is always kept
    with TestClient(studio.app) as client:
        r = client.get(f"/api/results/{big}/audio", headers={"Range": "bytes=990-"})
        assert r.status_code == 206 and r.content == b"b" * 10 and r.headers["content-range"] == "bytes 990-999/1000"
        assert client.get(f"/api/results/{big}/audio", headers={"Range": "bytes=2000-"}).status_code == 416
        assert client.get(f"/api/results/{ids[0]}/audio").status_code == 404


def test_cli_refuses_a_bad_url_and_port(capsys):
    from pipeline.cli import main

    assert main(["studio", "--url", "ftp://x", "--port", "0"]) == 2
    assert "--url ftp://x" in capsys.readouterr().err
    assert main(["studio", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err


@pytest.mark.slow
def test_the_studio_command_serves_the_page_until_interrupted(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    port, upstream = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "studio", "--url", f"http://127.0.0.1:{upstream}",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                page_html = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.2)
        assert page_html.status_code == 200 and "technogan studio" in page_html.text
        info = requests.get(f"http://127.0.0.1:{port}/api/info", timeout=30).json()
        assert info["url"] == f"http://127.0.0.1:{upstream}" and info["server"]["reachable"] is False
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert f"technogan studio on http://127.0.0.1:{port}" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- slow: a real TorchServe


@pytest.fixture(scope="module")
def older_version(serve_run_config, champion_version, trained_run):
    """A second registered version, without an alias: TorchServe serves the champion, so this
    one is generated in the studio's own process."""
    from tracking.runs import get_client

    client = get_client(serve_run_config.tracking.uri)
    mv = client.create_model_version(serve_run_config.evaluate.registry_model, source=champion_version.source,
                                     run_id=trained_run.run_id, tags={"checkpoint": champion_version.tags["checkpoint"]})
    assert mv.version != str(champion_version.version)
    return mv


@pytest.fixture(scope="module")
def studio(server, serve_run_config, older_version, tmp_path_factory):
    s = Studio(server.inference_url, serve_run_config.tracking.uri, serve_run_config.serve,
               serve_run_config.evaluate.registry_model, timeout=120, workdir=tmp_path_factory.mktemp("studio"))
    with StudioServer(s) as running:
        yield running


def _generate(studio, **form) -> requests.Response:
    return requests.post(f"{studio.url}/api/generate", json=form, timeout=180)


def _duration(wav: bytes) -> float:
    info = sf.info(io.BytesIO(wav))
    return info.frames / info.samplerate


@pytest.mark.slow
def test_backend_generates_through_torchserve_and_in_process(studio, server, serve_run_config, champion_version,
                                                             older_version):
    info = requests.get(f"{studio.url}/api/info", timeout=60).json()
    assert info["server"]["reachable"] and info["server"]["served_version"] == str(champion_version.version)
    assert info["server"]["formats"] == ["wav", "mp3", "ogg"]  # what the server has, in the page's order
    by_version = {v["version"]: v for v in info["versions"]}
    assert by_version[str(champion_version.version)]["aliases"] == ["champion"] and by_version[str(champion_version.version)]["served"]
    assert by_version[str(older_version.version)]["aliases"] == [] and not by_version[str(older_version.version)]["served"]

    r = _generate(studio, seed="11", format="wav")
    assert r.status_code == 200, r.text
    res = r.json()
    assert (res["seed"], res["version"], res["source"]) == (11, str(champion_version.version), "torchserve")
    wav = requests.get(studio.url + res["audio_url"], timeout=30)
    png = requests.get(studio.url + res["image_url"], timeout=30)
    assert wav.headers["content-type"].startswith("audio/wav") and png.content.startswith(PNG)
    assert _duration(wav.content) == pytest.approx(MEL.clip_seconds, abs=0.05)
    # the very piece TorchServe makes for that seed, through the gate
    direct = requests.post(server.predictions_url, json={"n": 1, "seed": 11, "format": "wav"}, timeout=120)
    assert _duration(direct.content) == _duration(wav.content)

    # the older version, generated in the studio from its checkpoint (same weights here, so the
    # same mel as TorchServe's for that seed)
    r = _generate(studio, seed="11", format="wav", version=str(older_version.version))
    assert r.status_code == 200, r.text
    old = r.json()
    assert (old["version"], old["source"]) == (str(older_version.version), "in-process")
    old_wav = requests.get(studio.url + old["audio_url"], timeout=30).content
    assert _duration(old_wav) == pytest.approx(MEL.clip_seconds, abs=0.05)
    a, _ = sf.read(io.BytesIO(old_wav))
    b, _ = sf.read(io.BytesIO(wav.content))
    assert a.shape == b.shape and np.corrcoef(a, b)[0, 1] > 0.99  # the same piece rendered twice

    # long-form, by TorchServe and in-process: one piece of that length
    assert info["longform"] and info["server"]["seconds_range"] == [5.0, float(serve_run_config.serve.max_seconds)]
    for version, source in ((str(champion_version.version), "torchserve"), (str(older_version.version), "in-process")):
        r = _generate(studio, seed="4", mode="long", seconds="7", format="wav", version=version)
        assert r.status_code == 200, r.text
        res = r.json()
        assert (res["source"], res["seconds"], res["download_name"]) == (source, 7, f"technogan-v{version}-seed4-7s.wav")
        long_wav = requests.get(studio.url + res["audio_url"], timeout=30).content
        assert _duration(long_wav) == pytest.approx(7.0, abs=0.05)
        assert requests.get(studio.url + res["image_url"], timeout=30).content.startswith(PNG)
    too_long = serve_run_config.serve.max_seconds + 1
    for version in (str(champion_version.version), str(older_version.version)):
        r = _generate(studio, seed="4", mode="long", seconds=str(too_long), version=version)
        assert r.status_code == 400 and r.json()["field"] == "seconds", r.text
        assert r.json()["error"].startswith(f"seconds: must be between 5 and {serve_run_config.serve.max_seconds}")

    # no seed: the studio draws one, and says which
    drawn = _generate(studio, format="wav").json()
    assert isinstance(drawn["seed"], int) and 0 <= drawn["seed"] < 2**53


@pytest.mark.slow
def test_backend_passes_on_the_servers_400_and_bounds_answers(studio, server, serve_run_config, older_version, tmp_path):
    r = _generate(studio, seed=TOO_BIG_SEED)
    direct = requests.post(server.predictions_url, json={"n": 1, "seed": int(TOO_BIG_SEED), "format": "png"}, timeout=60)
    assert r.status_code == 400 and direct.status_code == 400
    assert r.json() == {"error": direct.json()["error"], "field": "seed", "source": "server"}
    assert "9223372036854775807" in r.json()["error"]
    # the in-process version validates exactly like the handler
    r = _generate(studio, seed=TOO_BIG_SEED, version=str(older_version.version))
    assert r.status_code == 400 and r.json()["error"] == direct.json()["error"]
    r = _generate(studio, seed="1", version="99")
    assert r.status_code == 404 and "no version '99'" in r.json()["error"]

    small = Studio(server.inference_url, serve=serve_run_config.serve, timeout=60, max_answer_bytes=4096,
                   workdir=tmp_path)
    with TestClient(small.app) as client:
        r = client.post("/api/generate", json={"seed": "3"})
        assert r.status_code == 502 and "over the studio's limit of 4096 bytes" in r.json()["error"]
    hasty = Studio(server.inference_url, serve=serve_run_config.serve, timeout=0.001, workdir=tmp_path)
    with TestClient(hasty.app) as client:
        r = client.post("/api/generate", json={"seed": "3"})
        assert r.status_code == 504 and "did not answer within" in r.json()["error"]


# ----------------------------------------------------------------------------- slow: the page in Chromium


def _wait_ready(pg) -> None:
    pg.wait_for_function("document.getElementById('server-status').textContent.includes('TorchServe at')")


def _generate_in_page(pg) -> None:
    pg.click("#generate")
    pg.wait_for_function("document.getElementById('generate').disabled === false")


def _audio_duration(card) -> float:
    return card.locator("audio").evaluate(
        """a => new Promise((ok, fail) => {
             if (a.readyState >= 1) return ok(a.duration);
             a.addEventListener('loadedmetadata', () => ok(a.duration));
             a.addEventListener('error', () => fail(new Error('audio error ' + (a.error && a.error.code))));
           })""")


@pytest.mark.slow
def test_page_generates_shows_and_plays(page, studio, champion_version, older_version):  # noqa: F811
    page.goto(studio.url)
    _wait_ready(page)
    assert f"serves registry version {str(champion_version.version)}" in page.inner_text("#server-status")
    page.fill("#seed", "7")
    page.select_option("#format", "wav")
    page.click("#generate")
    # progress shows while TorchServe works, and goes away after
    page.wait_for_selector("#progress", state="visible")
    page.wait_for_selector(".result")
    assert page.is_hidden("#progress") and page.is_hidden("#error")
    card = page.locator(".result").first
    assert "seed 7" in card.locator("h2").inner_text() and f"version {str(champion_version.version)}" in card.inner_text()
    assert _audio_duration(card) == pytest.approx(MEL.clip_seconds, abs=0.05)
    card.locator("img.spectrogram").evaluate("img => img.decode()")
    assert card.locator("img.spectrogram").evaluate("img => img.naturalWidth") > 0
    download = card.locator("a.download")
    assert download.get_attribute("download").endswith(".wav")
    with page.expect_download() as dl:
        download.click()
    assert sf.info(dl.value.path()).duration == pytest.approx(MEL.clip_seconds, abs=0.05)

    # an older version next to the champion, same seed
    options = page.locator("#version option").all_inner_texts()
    assert any(f"version {str(older_version.version)}" in o and o.endswith(": in the studio") for o in options), options
    page.select_option("#version", str(older_version.version))
    _generate_in_page(page)
    cards = page.locator(".result")
    assert cards.count() == 2 and page.is_hidden("#error")
    newest = cards.first
    assert f"version {str(older_version.version)}" in newest.locator("h2").inner_text()
    assert _audio_duration(newest) == pytest.approx(MEL.clip_seconds, abs=0.05)
    newest.locator("img.spectrogram").evaluate("img => img.decode()")
    page.screenshot(path=str(artifact_dir() / "studio.png"), full_page=True)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mp3", "ogg"])
def test_page_plays_the_compressed_formats(page, studio, champion_version, fmt):  # noqa: F811
    page.goto(studio.url)
    _wait_ready(page)
    assert page.locator("#format option").all_inner_texts() == ["wav", "mp3", "ogg"]
    page.fill("#seed", "3")
    page.select_option("#format", fmt)
    _generate_in_page(page)
    assert page.is_hidden("#error"), page.inner_text("#error")
    card = page.locator(".result").first
    # encoders pad a little (LAME's frames, Opus's pre-skip is in the header): within 0.1 s
    assert _audio_duration(card) == pytest.approx(MEL.clip_seconds, abs=0.1)
    assert card.locator("a.download").get_attribute("download") == f"technogan-v{champion_version.version}-seed3.{fmt}"
    src = card.locator("audio").get_attribute("src")
    r = requests.get(studio.url + src, timeout=30)
    tail = requests.get(studio.url + src, headers={"Range": "bytes=-100"}, timeout=30)
    assert tail.status_code == 206 and tail.content == r.content[-100:]
    assert tail.headers["content-range"] == f"bytes {len(r.content) - 100}-{len(r.content) - 1}/{len(r.content)}"
    assert r.headers["content-type"].startswith({"mp3": "audio/mpeg", "ogg": "audio/ogg"}[fmt])
    magic = (b"ID3", b"\xff\xfb", b"\xff\xf3") if fmt == "mp3" else (b"OggS",)
    assert r.content.startswith(magic)


@pytest.mark.slow
def test_page_makes_a_long_form_piece_and_shows_the_servers_limit(page, studio, server, serve_run_config):  # noqa: F811
    page.goto(studio.url)
    _wait_ready(page)
    assert page.is_hidden("#seconds-box")
    page.check("#mode-long")
    assert page.is_visible("#seconds-box")
    assert f"(5 to {serve_run_config.serve.max_seconds} s on this server)" in page.inner_text("#length-hint")
    page.fill("#seed", "9")
    page.fill("#seconds", "8")
    _generate_in_page(page)
    assert page.is_hidden("#error"), page.inner_text("#error")
    card = page.locator(".result").first
    assert "long-form, 8 s" in card.locator("h2").inner_text()
    assert _audio_duration(card) == pytest.approx(8.0, abs=0.05)
    card.locator("img.spectrogram").evaluate("img => img.decode()")
    assert card.locator("img.spectrogram").evaluate("img => img.naturalWidth") > 0

    too_long = serve_run_config.serve.max_seconds + 30
    page.fill("#seconds", str(too_long))
    _generate_in_page(page)
    message = requests.post(server.predictions_url, json={"seed": 9, "seconds": too_long}, timeout=60).json()["error"]
    assert message.startswith("seconds: must be between")
    assert page.inner_text("#error") == f"The server said (HTTP 400): {message}"
    assert page.locator(".result").count() == 1


@pytest.mark.slow
def test_page_shows_the_servers_message_for_a_bad_seed(page, studio, server):  # noqa: F811
    page.goto(studio.url)
    _wait_ready(page)
    page.fill("#seed", TOO_BIG_SEED)
    _generate_in_page(page)
    message = requests.post(server.predictions_url, json={"seed": int(TOO_BIG_SEED)}, timeout=60).json()["error"]
    assert page.is_visible("#error")
    assert page.inner_text("#error") == f"The server said (HTTP 400): {message}"
    assert page.locator(".result").count() == 0


@pytest.mark.slow
def test_page_shows_that_the_server_is_down(page, tmp_path):  # noqa: F811
    down = Studio(f"http://127.0.0.1:{free_port()}", serve=ServeConfig(), timeout=5, workdir=tmp_path)
    with StudioServer(down) as running:
        page.goto(running.url)
        page.wait_for_function("document.getElementById('server-status').classList.contains('down')")
        assert "not reachable" in page.inner_text("#server-status")
        page.fill("#seed", "5")
        _generate_in_page(page)
        assert page.is_visible("#error") and "not reachable" in page.inner_text("#error")
    # the studio itself gone: the page still says so
    _generate_in_page(page)
    assert "The studio's backend is not reachable" in page.inner_text("#error")
