"""The handler without a server: initialize/handle with TorchServe's own Context objects."""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from pipeline.config import MelConfig
from serving.handler import TechnoganHandler
from serving.package import read_description
from serving.server import METRICS_YAML


def make_context(model_dir, batch_size=8) -> Context:
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    metrics.initialize_cache()
    metrics.model_name = "technogan"
    return Context("technogan", str(model_dir), manifest, batch_size, None, "0.12.0", metrics=metrics)


def set_batch(ctx: Context, n: int, content_type: str = "application/json") -> None:
    """What TorchServe's Service.predict does before calling the handler."""
    ctx.request_ids = {i: f"req-{i}" for i in range(n)}
    ctx.request_processor = [RequestProcessor({"Content-Type": content_type}) for _ in range(n)]
    ctx.metrics.set_request_ids(ctx.request_ids)


@pytest.fixture(scope="module")
def handler(unpacked_archive):
    h = TechnoganHandler()
    h.initialize(make_context(unpacked_archive))
    return h


def test_initialize_loads_the_archive(handler, model_store):
    desc = read_description(model_store / "technogan.mar")
    assert handler.initialized
    assert handler.engine.latent_dim == desc["latent_dim"] == 100
    assert handler.engine.resolution == desc["resolution"] == 64
    assert handler.limits.max_n == desc["serve"]["max_n"] == 64
    assert not handler.model.training  # eval mode: BatchNorm running stats, no Dropout


def test_manifest_and_description(model_store, trained_run, champion_version):
    with zipfile.ZipFile(model_store / "technogan.mar") as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        config = z.read("model-config.yaml").decode()
    assert {"generator.pt", "technogan.json", "handler.py", "model-config.yaml"} <= names
    assert manifest["model"]["modelName"] == "technogan"
    assert manifest["model"]["handler"] == "handler.py"
    assert manifest["model"]["modelVersion"] == read_description(model_store / "technogan.mar")["version"]
    assert "batchSize: 8" in config and "minWorkers: 1" in config and "maxWorkers: 1" in config
    desc = read_description(model_store / "technogan.mar")
    assert desc["run_id"] == trained_run.run_id
    assert desc["version"] == str(champion_version.version)  # archive version = registry version
    assert desc["registry"] == {"name": champion_version.name, "version": str(champion_version.version),
                                "alias": "champion"}
    assert desc["model"] == "dcgan1"
    assert MelConfig.from_dict(desc["mel_config"]) == MelConfig()


def test_handle_a_mixed_batch(handler, unpacked_archive, caplog):
    ctx = make_context(unpacked_archive)
    bodies = [
        b"",  # defaults: one json spectrogram
        json.dumps({"n": 2, "seed": 5, "format": "npy"}).encode(),
        json.dumps({"n": 0}).encode(),  # bad: its own 400, the rest still answered
        json.dumps({"format": "png", "n": 2, "seed": 1}).encode(),
        json.dumps({"format": "wav", "seed": 2}).encode(),
        b"{not json",
        json.dumps({"latents": [[0.0] * 100], "format": "json"}).encode(),
    ]
    set_batch(ctx, len(bodies))
    with caplog.at_level(logging.INFO):
        out = handler.handle([{"body": bytearray(b)} for b in bodies], ctx)
    assert len(out) == len(bodies)
    status = [ctx.get_response_status(i)[0] for i in range(len(bodies))]
    ctypes = [ctx.get_response_content_type(i) for i in range(len(bodies))]
    assert status == [200, 200, 400, 200, 200, 400, 200]
    assert ctypes == ["application/json", "application/octet-stream", "application/json", "image/png",
                      "audio/wav", "application/json", "application/json"]
    mel = MelConfig()

    doc = json.loads(out[0])
    assert doc["shape"] == [1, *mel.shape] and np.asarray(doc["mels"]).shape == (1, *mel.shape)
    assert isinstance(doc["seed"], int)
    arr = np.load(io.BytesIO(out[1]))
    assert arr.dtype == np.float32 and arr.shape == (2, *mel.shape)
    assert arr.max() <= 0.0 and arr.min() >= -mel.top_db  # dB relative to the peak
    assert json.loads(out[2])["error"].startswith("n: ")
    assert Image.open(io.BytesIO(out[3])).format == "PNG"
    audio, sr = sf.read(io.BytesIO(out[4]))
    assert sr == mel.sample_rate and audio.shape == (mel.clip_samples,)
    assert json.loads(out[5])["error"].startswith("body: ")
    assert json.loads(out[6])["seed"] is None
    # the handler's own metrics went out through TorchServe's metrics cache
    emitted = caplog.text
    assert "[METRICS]ClipsGenerated.Count:7|#ModelName:technogan,Level:Model" in emitted
    assert "[METRICS]RequestsRejected.Count:2" in emitted
    for name in ("GenerationTime", "RenderTime", "PlotTime"):
        assert f"[METRICS]{name}.Milliseconds:" in emitted


def test_same_seed_same_mels_whatever_else_is_in_the_batch(handler, unpacked_archive):
    ctx = make_context(unpacked_archive)
    alone = [json.dumps({"seed": 42, "n": 3, "format": "npy"}).encode()]
    set_batch(ctx, 1)
    a = np.load(io.BytesIO(handler.handle([{"body": bytearray(b)} for b in alone], ctx)[0]))
    crowded = [json.dumps({"seed": 7, "n": 5, "format": "npy"}).encode(), alone[0],
               json.dumps({"n": 2, "format": "npy"}).encode()]
    set_batch(ctx, 3)
    out = handler.handle([{"body": bytearray(b)} for b in crowded], ctx)
    b = np.load(io.BytesIO(out[1]))
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert not np.allclose(np.load(io.BytesIO(out[0]))[:3], a, atol=1e-3)  # another seed, other mels


def test_latents_equal_to_the_seeds_latents_give_the_same_mels(handler, unpacked_archive):
    from pipeline.generate import latents_for_seed

    ctx = make_context(unpacked_archive)
    z = latents_for_seed(3, 2, 100).tolist()
    bodies = [json.dumps({"seed": 3, "n": 2, "format": "npy"}).encode(),
              json.dumps({"latents": z, "format": "npy"}).encode()]
    set_batch(ctx, 2)
    out = handler.handle([{"body": bytearray(b)} for b in bodies], ctx)
    np.testing.assert_allclose(np.load(io.BytesIO(out[0])), np.load(io.BytesIO(out[1])), atol=1e-3)


def test_compressed_formats_in_a_batch(handler, unpacked_archive):
    ctx = make_context(unpacked_archive)
    bodies = [json.dumps({"format": "mp3", "seed": 2}).encode(), json.dumps({"format": "ogg", "seed": 2}).encode()]
    set_batch(ctx, len(bodies))
    out = handler.handle([{"body": bytearray(b)} for b in bodies], ctx)
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [200, 200]
    assert [ctx.get_response_content_type(i) for i in range(2)] == ["audio/mpeg", "audio/ogg; codecs=vorbis"]
    assert out[0][:3] == b"ID3" and out[1][:4] == b"OggS"


def test_a_failing_ffmpeg_is_a_500_naming_it_and_the_rest_are_served(unpacked_archive, tmp_path, monkeypatch, caplog):
    """The server's ffmpeg, found on PATH, fails (a build without LAME): the worker still
    starts, mp3 requests get a 500 with ffmpeg's complaint, the others their answer."""
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"[out#0 @ 0x55] Unknown encoder 'libmp3lame'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    h = TechnoganHandler()
    with caplog.at_level(logging.ERROR):
        h.initialize(make_context(unpacked_archive))  # warm-up meets the failure: logged, not fatal
    assert "format mp3 is unavailable on this server" in caplog.text
    ctx = make_context(unpacked_archive)
    bodies = [json.dumps({"format": "mp3", "seed": 2}).encode(), json.dumps({"format": "wav", "seed": 2}).encode()]
    set_batch(ctx, len(bodies))
    out = h.handle([{"body": bytearray(b)} for b in bodies], ctx)
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [500, 200]
    assert ctx.get_response_content_type(0) == "application/json"
    assert json.loads(out[0]) == {"error": "format: cannot encode mp3: ffmpeg exited with 1: "
                                           "Unknown encoder 'libmp3lame'", "field": "format"}
    assert out[1][:4] == b"RIFF"


def test_form_encoded_body_gets_a_400(handler, unpacked_archive):
    ctx = make_context(unpacked_archive)
    set_batch(ctx, 1, content_type="application/x-www-form-urlencoded")
    out = handler.handle([{}], ctx)  # TorchServe drops form bodies into parameters
    assert ctx.get_response_status(0)[0] == 400
    assert json.loads(out[0])["error"].startswith("body: ")




def test_an_archive_with_an_unknown_serve_setting_does_not_load(unpacked_archive, tmp_path):
    """The archive's serve section is a ServeConfig: an unknown key stops the worker naming
    it (ServeSettings.from_dict used to drop it silently)."""
    import shutil

    from pydantic import ValidationError

    copy = tmp_path / "model_dir"
    shutil.copytree(unpacked_archive, copy)
    desc = json.loads((copy / "technogan.json").read_text())
    desc["serve"]["max_m"] = 3
    (copy / "technogan.json").write_text(json.dumps(desc))
    with pytest.raises(ValidationError, match="max_m"):
        TechnoganHandler().initialize(make_context(copy))


def test_huge_integers_and_oversized_bodies_fail_alone_in_a_batch(handler, unpacked_archive):
    ctx = make_context(unpacked_archive)
    bodies = [
        b'{"n": ' + b"9" * 5000 + b"}",
        json.dumps({"n": 2, "seed": 5, "format": "npy"}).encode(),
        b'{"latents": [[' + b"1" * 4400 + b"]]}",
        b" " * ((1 << 20) + 1),
        json.dumps({"seed": 6, "format": "npy"}).encode(),
    ]
    set_batch(ctx, len(bodies))
    out = handler.handle([{"body": bytearray(b)} for b in bodies], ctx)
    status = [ctx.get_response_status(i)[0] for i in range(len(bodies))]
    assert status == [400, 200, 400, 413, 200]
    assert [json.loads(out[i])["field"] for i in (0, 2, 3)] == ["n", "latents[0][0]", "body"]
    assert np.load(io.BytesIO(out[1])).shape[0] == 2 and np.load(io.BytesIO(out[4])).shape[0] == 1


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.serving.test_request import _dumps, json_values  # noqa: E402


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(json_values, min_size=1, max_size=5))
def test_whatever_shares_the_batch_the_valid_requests_get_their_answer(handler, unpacked_archive, drawn):
    """Arbitrary JSON bodies (huge integers, NaN, nesting, wrong types) mixed into a batch
    with valid requests: every valid one gets its mels, every other one a JSON 4xx."""
    ctx = make_context(unpacked_archive)
    valid = json.dumps({"seed": 1, "format": "npy"}).encode()
    bodies = [valid, *(_dumps(v) for v in drawn), valid]
    set_batch(ctx, len(bodies))
    out = handler.handle([{"body": bytearray(b)} for b in bodies], ctx)
    assert len(out) == len(bodies)
    for i, body in enumerate(bodies):
        code = ctx.get_response_status(i)[0]
        if body == valid:
            assert code == 200 and np.load(io.BytesIO(out[i])).shape == (1, *MelConfig().shape)
        elif code != 200:
            assert code == 400, (body[:200], code)
            doc = json.loads(out[i])
            assert doc["error"].startswith(doc["field"] + ": ")
