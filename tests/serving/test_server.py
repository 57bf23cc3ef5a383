"""A real TorchServe serving a freshly built technogan.mar behind the real gate
(serving/gate.py), on free loopback ports: ``server.inference_url`` is the gate,
``server.direct_url`` TorchServe's own inference API behind it.

The server starts once for the module and is stopped even when a test fails.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile as sf
from PIL import Image

from pipeline.config import MelConfig
from serving.client import Client, ClientError
from serving.server import Ports, TorchServe

MEL = MelConfig()
JSON = {"Content-Type": "application/json"}


def post(server, body=None, raw: bytes | None = None, headers=JSON, timeout=120) -> requests.Response:
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    return requests.post(server.predictions_url, data=data, headers=headers, timeout=timeout)


def test_ping_is_healthy_without_a_token(server):
    r = requests.get(f"{server.inference_url}/ping", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "Healthy"


def test_model_is_registered_with_batching(server, model_store):
    from serving.package import read_description

    desc = requests.get(f"{server.management_url}/models/technogan", timeout=10).json()[0]
    assert desc["batchSize"] == 8 and desc["minWorkers"] == desc["maxWorkers"] == 1
    assert desc["modelVersion"] == read_description(model_store / "technogan.mar")["version"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_a_405_json_with_allow(server, method):
    r = requests.request(method, server.predictions_url, data=json.dumps({"n": 1}), headers=JSON, timeout=60)
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.text[:300]
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["field"] == "method" and doc["error"].startswith(f"method: {method} is not allowed")


def test_torchserve_alone_would_generate_for_a_get(server):
    """Why the gate is there: TorchServe 0.12 hands the handler no method."""
    r = requests.get(f"{server.direct_url}/predictions/technogan", timeout=60)
    assert r.status_code == 200 and np.asarray(r.json()["mels"]).shape == (1, *MEL.shape)
    assert requests.get(f"{server.inference_url}/models", timeout=10).status_code == 404  # nor its other paths


def test_32_parallel_clients_all_get_their_answer(server):
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda i: post(server, {"seed": i, "format": "npy"}, timeout=300), range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    assert [r.headers["x-technogan-seed"] for r in responses] == [str(i) for i in range(32)]
    assert max(int(r.headers["x-technogan-batch"]) for r in responses) > 1  # the gate did not serialise them


def test_empty_body_gives_one_json_spectrogram(server):
    r = post(server, headers={})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["shape"] == [1, MEL.n_mels, MEL.n_frames] and doc["model_resolution"] == 64
    mels = np.asarray(doc["mels"])
    assert mels.shape == (1, *MEL.shape) and mels.max() <= 0 and mels.min() >= -MEL.top_db
    assert isinstance(doc["seed"], int) and r.headers["x-technogan-seed"] == str(doc["seed"])
    assert MelConfig.from_dict(doc["mel_config"]) == MEL


@pytest.mark.parametrize("n", [1, 3])
def test_json_shape_matches_n(server, n):
    doc = post(server, {"n": n, "seed": 1}).json()
    assert doc["shape"] == [n, *MEL.shape] and np.asarray(doc["mels"]).shape == (n, *MEL.shape)


def test_npy_is_the_exact_float32_array(server):
    r = post(server, {"n": 2, "seed": 9, "format": "npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    arr = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert arr.dtype == np.float32 and arr.shape == (2, *MEL.shape)
    doc = post(server, {"n": 2, "seed": 9}).json()  # json is the same, rounded to 0.01 dB
    np.testing.assert_allclose(np.asarray(doc["mels"]), arr, atol=0.006)


def test_png_opens(server):
    r = post(server, {"n": 4, "seed": 2, "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    img.load()
    assert img.format == "PNG" and img.width > 600 and img.height > 200


@pytest.mark.parametrize("n", [1, 2])
def test_wav_parses_with_rate_and_length(server, serve_run_config, n):
    r = post(server, {"n": n, "seed": 4, "format": "wav"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    audio, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    gap = int(round(serve_run_config.serve.wav_gap_seconds * MEL.sample_rate))
    assert sr == MEL.sample_rate
    assert audio.ndim == 1 and len(audio) == n * MEL.clip_samples + (n - 1) * gap
    assert 0.1 < np.abs(audio).max() <= 1.0  # rendered sound, not silence


@pytest.mark.parametrize("fmt,ctype,magic", [("mp3", "audio/mpeg", (b"ID3", b"\xff\xf3", b"\xff\xf2")),
                                              ("ogg", "audio/ogg; codecs=vorbis", (b"OggS",))])
def test_compressed_audio_decodes_to_the_clips_length(server, serve_run_config, tmp_path, fmt, ctype, magic):
    from pipeline.audio.encode import MP3_DELAY_SAMPLES
    from pipeline.decode import open_audio

    n = 2
    r = post(server, {"n": n, "seed": 4, "format": fmt.upper() if fmt == "mp3" else fmt})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == ctype and r.content.startswith(magic)
    wav = post(server, {"n": n, "seed": 4, "format": "wav"}).content
    assert len(r.content) < len(wav) / 4  # the point of compressing: 64 kbps mp3, ~52 kbps Vorbis vs 353 kbps PCM
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(r.content)
    _, blocks = open_audio(path, MEL.sample_rate)
    audio = np.concatenate(list(blocks.blocks))
    gap = int(round(serve_run_config.serve.wav_gap_seconds * MEL.sample_rate))
    want = n * MEL.clip_samples + (n - 1) * gap
    if fmt == "ogg":
        assert len(audio) == want
    else:  # LAME's delay first, then padding to a whole 576-sample frame
        assert want + MP3_DELAY_SAMPLES <= len(audio) < want + MP3_DELAY_SAMPLES + 576, (len(audio), want)
        audio = audio[MP3_DELAY_SAMPLES:]
    # the same sound as the WAV of the same seed: the clips loud where the WAV is, the gap silent
    ref, _ = sf.read(io.BytesIO(wav), dtype="float32")
    clip_rms = [float(np.sqrt(np.mean(x[:MEL.clip_samples] ** 2))) for x in (audio, ref)]
    assert 0.1 < clip_rms[1] and abs(clip_rms[0] - clip_rms[1]) < 0.25 * clip_rms[1], clip_rms
    silence = audio[MEL.clip_samples + 300:MEL.clip_samples + gap - 300]
    assert np.sqrt(np.mean(silence ** 2)) < 0.02


def test_an_unknown_format_is_a_400_listing_the_formats(server):
    r = post(server, {"format": "flac"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "format: must be one of json, npy, png, wav, mp3, ogg, got a JSON string",
                        "field": "format"}


def test_a_long_form_piece_is_one_continuous_wav_and_its_png(server):
    from pipeline.longform import seconds_to_frames

    r = post(server, {"seconds": 12, "seed": 5, "format": "wav"})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "audio/wav" and r.headers["x-technogan-seed"] == "5"
    audio, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == MEL.sample_rate and len(audio) == (seconds_to_frames(12, MEL) - 1) * MEL.hop_length
    assert 0.1 < np.abs(audio).max() <= 1.0
    img = Image.open(io.BytesIO(post(server, {"seconds": 12, "seed": 5, "format": "png"}).content))
    assert img.format == "PNG" and img.width > 600


def test_a_60_second_piece_as_json_fits_the_response_limit_and_repeats(server):
    from pipeline.longform import seconds_to_frames

    r = post(server, {"seconds": 60, "seed": 9})
    assert r.status_code == 200, r.text[:300]
    doc = r.json()
    frames = seconds_to_frames(60, MEL)
    assert doc["shape"] == [1, MEL.n_mels, frames] and np.asarray(doc["mels"]).shape == (1, MEL.n_mels, frames)
    assert len(doc["boundaries_s"]) == len(doc["path"]["windows"]) - 1 >= 12
    assert doc["seed"] == 9 and doc["path"]["seed"] == 9
    npy = np.load(io.BytesIO(post(server, {"seconds": 60, "seed": 9, "format": "npy"}).content))
    assert np.allclose(npy, np.asarray(doc["mels"]), atol=0.01)  # json rounds to 2 decimals


def test_same_seed_same_mels(server):
    a = post(server, {"n": 2, "seed": 1234}).json()
    b = post(server, {"n": 2, "seed": 1234}).json()
    c = post(server, {"n": 2, "seed": 1235}).json()
    assert a["seed"] == b["seed"] == 1234
    assert a["mels"] == b["mels"]
    assert a["mels"] != c["mels"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    # the answers alone, one at a time, are the reference
    cases = [{"n": 1 + i % 3, "seed": 100 + i, "format": "npy"} for i in range(16)]
    alone = [np.load(io.BytesIO(post(server, c).content)) for c in cases[:4]]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda c: post(server, c), cases))
    assert all(r.status_code == 200 for r in responses)
    batches = [int(r.headers["x-technogan-batch"]) for r in responses]
    assert max(batches) > 1, f"no request was batched: {batches}"
    for case, r in zip(cases, responses):
        arr = np.load(io.BytesIO(r.content))
        assert arr.shape == (case["n"], *MEL.shape)
        assert r.headers["x-technogan-seed"] == str(case["seed"])
    for ref, r in zip(alone, responses[:4]):
        np.testing.assert_allclose(np.load(io.BytesIO(r.content)), ref, atol=1e-3)


def test_mixed_formats_in_one_batch_keep_their_content_types(server):
    formats = ["json", "npy", "png", "wav", "mp3", "ogg"] * 2
    with ThreadPoolExecutor(len(formats)) as pool:
        responses = list(pool.map(lambda f: post(server, {"format": f, "seed": 5}), formats))
    expected = {"json": "application/json", "npy": "application/octet-stream", "png": "image/png", "wav": "audio/wav",
                "mp3": "audio/mpeg", "ogg": "audio/ogg; codecs=vorbis"}
    for fmt, r in zip(formats, responses):
        assert r.status_code == 200 and r.headers["content-type"] == expected[fmt]
    assert max(int(r.headers["x-technogan-batch"]) for r in responses) > 1


BAD = [
    ({"n": 0}, None, "n"),
    ({"n": 65}, None, "n"),
    ({"n": "2"}, None, "n"),
    ({"n": 1.5}, None, "n"),
    ({"seed": "abc"}, None, "seed"),
    ({"seed": -5}, None, "seed"),
    ({"latents": [[0.1] * 99]}, None, "latents[0]"),
    ({"latents": [[0.1] * 101]}, None, "latents[0]"),
    ({"latents": "zzz"}, None, "latents"),
    (None, b'{"latents": [[' + b"0," * 99 + b"NaN]]}", "latents[0][99]"),
    (None, b'{"latents": [[' + b"0," * 99 + b"Infinity]]}", "latents[0][99]"),
    ({"format": "flac"}, None, "format"),
    ({"format": ["json"]}, None, "format"),
    ({"colour": "red"}, None, "colour"),
    ({"seconds": 61}, None, "seconds"),
    ({"seconds": 10, "n": 2}, None, "seconds"),
    (None, b"{this is not json", "body"),
    (None, b"[1, 2, 3]", "body"),
    (None, b"\xff\xfe\x00", "body"),
    (None, b'{"n": ' + b"9" * 5000 + b"}", "n"),
    (None, b'{"seed": ' + b"9" * 5000 + b"}", "seed"),
]


@pytest.mark.parametrize("body,raw,field", BAD, ids=[f"{i}-{f}" for i, (_, _, f) in enumerate(BAD)])
def test_bad_input_is_a_400_naming_the_field(server, body, raw, field):
    r = post(server, body, raw=raw)
    assert r.status_code == 400, r.text[:300]
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["error"].startswith(f"{field}: ") and doc["field"] == field


def test_burst_of_200_mixed_requests_no_5xx(server):
    bad = (15, 16, 19)

    def one(i: int) -> int:
        kind = i % 20  # per 20: 12 json, 3 npy, 1 wav, 1 png (every other 20), 3 bad
        if kind < 12:
            body = {"n": 1 + i % 2, "seed": i}
        elif kind < 15:
            body = {"format": "npy", "n": 2}
        elif kind in bad[:2]:
            body = {"n": 0}
        elif kind == 17:
            body = {"format": "wav"}
        elif kind == 18 and i % 40 == 18:
            body = {"format": "png"}  # plotting is the slow one: 5 of them
        elif kind == 18:
            body = {"format": "npy", "seed": i}
        else:
            body = {"latents": [[0.0] * 3]}
        return post(server, body, timeout=300).status_code

    with ThreadPoolExecutor(16) as pool:  # bounded client concurrency, loopback only
        codes = list(pool.map(one, range(200)))
    expected = [400 if i % 20 in bad else 200 for i in range(200)]
    assert codes == expected
    assert requests.get(f"{server.inference_url}/ping", timeout=10).json()["status"] == "Healthy"
    assert post(server, {"seed": 1}).status_code == 200


def test_metrics_show_request_counters_and_handler_metrics(server):
    post(server, {"format": "wav"})
    post(server, {"format": "png"})
    post(server, {"n": 0})
    wanted = ["Requests2XX{", "Requests4XX{", 'ts_inference_requests_total{model_name="technogan"',
              'ClipsGenerated{ModelName="technogan"', 'GenerationTime{ModelName="technogan"',
              'RenderTime{ModelName="technogan"', 'PlotTime{ModelName="technogan"',
              'RequestsRejected{ModelName="technogan"']
    deadline = time.monotonic() + 30
    while True:  # the frontend picks backend metrics up from the worker's log, a moment later
        text = requests.get(server.metrics_url, timeout=10).text
        missing = [w for w in wanted if w not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"missing from /metrics: {missing}"
    clips = [line for line in text.splitlines() if line.startswith("ClipsGenerated{")]
    assert float(clips[0].rsplit(" ", 1)[1]) >= 3


def test_client_returns_arrays_png_and_wav(server):
    c = Client(server.inference_url)
    mels = c.mels(n=2, seed=3)
    assert mels.db.shape == (2, *MEL.shape) and mels.seed == 3 and mels.mel_config["n_mels"] == MEL.n_mels
    arr = c.npy(n=2, seed=3)
    np.testing.assert_allclose(mels.db, arr, atol=0.006)
    assert c.png(n=1, seed=3)[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.wav(seed=3)[:4] == b"RIFF"
    z = np.zeros((1, 100), dtype=np.float32)
    assert c.npy(latents=z).shape == (1, *MEL.shape)
    with pytest.raises(ClientError) as info:
        c.mels(n=1000)
    assert info.value.status == 400 and info.value.field == "n"


def _free_base_port() -> int:
    """A port P with P to P+4 all free (technogan serve --port P uses all five)."""
    for _ in range(50):
        p = Ports.free().inference
        if p > 65000:
            continue
        socks = []
        try:
            for q in range(p, p + 5):
                s = socket.socket()
                s.bind(("127.0.0.1", q))
                socks.append(s)
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no three consecutive free ports")


def test_technogan_serve_stops_cleanly_on_ctrl_c(model_store, tmp_path):
    port = _free_base_port()
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--model-store", str(model_store), "--port", str(port),
           "--workdir", str(tmp_path / "ts")]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = post_ok(port)
            except requests.RequestException:
                ready = False
            if ready:
                break
            time.sleep(0.5)
        assert ready, (tmp_path / "serve.log").read_text()[-3000:]
        assert requests.get(f"http://127.0.0.1:{port + 2}/metrics", timeout=10).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/predictions/technogan", timeout=10).status_code == 405
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the foreground group
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "token auth is DISABLED" in text and "127.0.0.1" in text
    for q in range(port, port + 5):  # TorchServe and its workers are gone: the ports are free again
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", q)) != 0, f"port {q} still answers after Ctrl-C"


def post_ok(port: int) -> bool:
    r = requests.post(f"http://127.0.0.1:{port}/predictions/technogan", data=b"", timeout=10)
    return r.status_code == 200


HUGE = b"9" * 5000  # over Python's 4,300-digit limit for int()


@pytest.mark.slow
def test_huge_integers_fail_alone_in_their_batch(server):
    """Mixed into batches with valid requests, a 5,000-digit integer anywhere in the body
    gets its own 400 naming its field, and every valid request of the batch gets its 200."""
    bad = [
        (b'{"n": ' + HUGE + b"}", "n"),
        (b'{"seed": ' + HUGE + b', "format": "npy"}', "seed"),
        (b'{"seed": -' + HUGE + b"}", "seed"),
        (b'{"latents": [[' + b"0," * 99 + HUGE + b"]]}", "latents[0][99]"),
        (b'{"n": 1, "other": [' + HUGE + b"]}", "other"),
    ]
    cases = []
    for i in range(40):  # 1 bad in 4, spread through the stream so batches mix them
        if i % 4 == 3:
            raw, field = bad[(i // 4) % len(bad)]
            cases.append((raw, field))
        else:
            cases.append((json.dumps({"n": 1 + i % 2, "seed": i, "format": "npy"}).encode(), None))
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda c: post(server, raw=c[0], timeout=300), cases))
    batches = []
    for i, ((_raw, field), r) in enumerate(zip(cases, responses)):
        if field is None:
            assert r.status_code == 200, (i, r.status_code, r.text[:200])
            assert np.load(io.BytesIO(r.content)).shape == (1 + i % 2, *MEL.shape)
            batches.append(int(r.headers["x-technogan-batch"]))
        else:
            assert r.status_code == 400, (i, r.status_code, r.text[:200])
            assert r.json()["field"] == field
    assert max(batches) > 1, f"no request was batched: {batches}"


@pytest.mark.slow
def test_an_8_mb_body_gets_our_json_413(server):
    r = post(server, raw=b" " * (8 << 20))
    assert r.status_code == 413 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["field"] == "body" and "over the limit of 1048576 bytes" in doc["error"]
    assert post(server, {"seed": 1}).status_code == 200  # and the worker is fine


@pytest.mark.slow
def test_a_body_over_the_frontend_limit_gets_the_gates_json_413(server, serve_run_config):
    limit = serve_run_config.serve.frontend_max_request_bytes
    r = post(server, raw=b" " * (limit + 1))
    assert r.status_code == 413 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": f"body: {limit + 1} bytes is over the limit of {limit} bytes", "field": "body"}


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/evil.mar", "https://example.com/evil.mar",
                                 "file:///tmp/evil.mar"])
def test_management_api_registers_nothing_outside_the_model_store(server, url):
    # refused twice over: the model API is off (enable_model_api=false, 405), and were it
    # turned on, allowed_urls admits nothing but our own archive
    r = requests.post(f"{server.management_url}/models", params={"url": url, "model_name": "evil"}, timeout=30)
    assert r.status_code == 405, r.text
    names = [m["modelName"] for m in requests.get(f"{server.management_url}/models", timeout=10).json()["models"]]
    assert names == ["technogan"]


@pytest.mark.slow
def test_technogan_serve_exits_with_the_workers_error_when_the_model_cannot_load(model_store, tmp_path):
    """An archive whose weights do not match their meta: `technogan serve` must stop with
    the worker's error, not leave TorchServe restarting workers and answering 500."""
    import zipfile

    import torch

    from tests.serving.crafted import tamper

    with zipfile.ZipFile(model_store / "technogan.mar") as z:
        entries = {name: z.read(name) for name in z.namelist()}
    (tmp_path / "g.pt").write_bytes(entries["generator.pt"])
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    meta = json.loads(payload["meta"])
    bad = tamper(tmp_path / "g.pt", tmp_path / "bad.pt", resolution=128)  # the weights are 64x64
    assert meta["resolution"] == 64
    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(store / "technogan.mar", "w") as z:
        for name, data in entries.items():
            z.writestr(name, bad.read_bytes() if name == "generator.pt" else data)
    port = _free_base_port()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--model-store", str(store),
                           "--port", str(port), "--workdir", str(tmp_path / "ts")],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "failed to load" in proc.stderr and "do not match" in proc.stderr, proc.stderr[-3000:]
    for q in range(port, port + 5):  # and TorchServe is gone
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", q)) != 0


@pytest.mark.parametrize("port", ["0", "-1", "65532", "70000"])
def test_technogan_serve_refuses_port_zero_and_out_of_range(tmp_path, port, capsys):
    from pipeline.cli import main as cli_main

    assert cli_main(["serve", "--model-store", str(tmp_path), "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: must be between 1 and 65531" in err


def _worker_pid(server) -> int:
    workers = requests.get(f"{server.management_url}/models/technogan", timeout=10).json()[0]["workers"]
    return int(workers[0]["pid"])


def _kill_worker_mid_request(server, send):
    """Run ``send()`` in a thread, SIGKILL the worker once the worker has the request,
    and return what ``send`` returned. The worker log line says when it is in flight."""
    model_log = server.workdir / "logs" / "model_log.log"
    start = model_log.stat().st_size
    pid = _worker_pid(server)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(send)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with open(model_log, "rb") as f:
                f.seek(start)
                if b"Backend received inference" in f.read():
                    break
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        result = future.result(timeout=400)
    server.wait_ready(240)  # TorchServe starts a new worker
    assert _worker_pid(server) != pid
    return result


@pytest.mark.slow
def test_a_killed_workers_request_is_resent_by_the_gate(server):
    slow = {"n": 8, "seed": 3, "format": "wav"}  # a second or more of Griffin-Lim: in flight when killed
    resent = server.gate.resent
    r = _kill_worker_mid_request(server, lambda: post(server, slow, timeout=400))
    # TorchServe answered "Worker died." and the gate sent the request again, to the new worker
    assert r.status_code == 200 and r.content[:4] == b"RIFF", r.text[:300]
    assert server.gate.resent == resent + 1

    # TorchServe's own answer, behind the gate (documented in the README): 507 when it has
    # already seen exit code 137 (which it reads as out of memory), 500 when it has not yet
    # (a race); serving.client resends it too, for a server without the gate
    sent = []
    session = requests.Session()
    session.hooks["response"].append(lambda resp, *a, **k: sent.append(resp.status_code))
    client = Client(server.direct_url, timeout=400, session=session)
    wav = _kill_worker_mid_request(server, lambda: client.wav(**{k: v for k, v in slow.items() if k != "format"}))
    assert wav[:4] == b"RIFF"
    assert len(sent) == 2 and sent[0] in (500, 507) and sent[1] == 200  # answered by the resent request


@pytest.mark.slow
def test_allowed_urls_admit_only_our_archive_even_with_the_model_api_on(tmp_path, monkeypatch):
    """allowed_urls is the second lock: turn the model API on and registering any URL but
    <model-store>/technogan.mar is still refused by TorchServe itself."""
    import serving.server as server_module
    from pipeline.config import load_config
    from serving.package import package
    from tests.tracking.eval_runs import make_checkpoint

    written = server_module.config_properties
    monkeypatch.setattr(server_module, "config_properties", lambda *a, **k: written(*a, **k).replace(
        "enable_model_api=false", "enable_model_api=true"))
    config = load_config(None)
    package(config, tmp_path / "store", checkpoint=str(make_checkpoint(tmp_path / "g.pt", resolution=32)))
    with TorchServe(tmp_path / "store", tmp_path / "ts", config.serve, MEL, Ports.free()) as ts:
        ours = "file://" + str((tmp_path / "store" / "technogan.mar").resolve())
        for url in ("http://127.0.0.1:9/evil.mar", "file:///tmp/evil.mar", ours + ".evil", ours.replace(".mar", "Xmar")):
            r = requests.post(f"{ts.management_url}/models", params={"url": url, "model_name": "evil"}, timeout=60)
            assert r.status_code == 404 and "does not match any allowed URL" in r.json()["message"], (url, r.text)
        r = requests.post(f"{ts.management_url}/models", params={"url": ours, "model_name": "evil"}, timeout=60)
        assert "allowed URL" not in r.text  # our own archive passes the check (it is already registered)
        names = [m["modelName"] for m in requests.get(f"{ts.management_url}/models", timeout=10).json()["models"]]
        assert names == ["technogan"]
