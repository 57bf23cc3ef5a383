"""The TorchServe configs we ship and write: only inference faces the network, the
management API loads nothing but our archive, oversized bodies reach the handler."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config import ConfigError, MelConfig, ServeConfig, load_config
from serving.server import Ports, allowed_urls, config_properties, response_size_limit

SHIPPED = Path(__file__).resolve().parents[2] / "serving" / "config.properties"


def properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key.strip() not in out, f"{key} set twice"
            out[key.strip()] = value.strip()
    return out


def test_shipped_config_binds_loopback_behind_the_gate():
    text = SHIPPED.read_text()
    p = properties(text)
    # only the gate faces the network; TorchServe's inference is its upstream, on loopback
    assert p["inference_address"] == "http://127.0.0.1:8085"
    gate = re.search(r"technogan gate --listen 0\.0\.0\.0:8080 --upstream (\S+) --max-request-bytes (\d+)", text)
    assert gate and gate.group(1) == p["inference_address"] and int(gate.group(2)) == int(p["max_request_size"])
    for key in ("management_address", "metrics_address"):
        assert p[key].startswith("http://127.0.0.1:"), (key, p[key])
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert p[key] == "127.0.0.1", (key, p[key])
    assert not [k for k, v in p.items() if "0.0.0.0" in v]


def test_shipped_config_limits_what_the_management_api_may_load():
    p = properties(SHIPPED.read_text())
    # TorchServe's default is file://.*|http(s)?://.*: any URL, i.e. anyone's code
    assert p["enable_model_api"] == "false"
    assert p["allowed_urls"] == "file:///model-store/technogan[.]mar"
    assert "http" not in p["allowed_urls"] and ".*" not in p["allowed_urls"]


def test_shipped_config_matches_the_serve_defaults():
    p = properties(SHIPPED.read_text())
    serve, mel = ServeConfig(), MelConfig()
    assert int(p["max_request_size"]) == serve.frontend_max_request_bytes > serve.max_body_bytes
    assert int(p["max_response_size"]) == response_size_limit(serve, mel)
    assert int(p["job_queue_size"]) == serve.queue_size
    assert int(p["default_workers_per_model"]) == serve.workers
    assert int(p["default_response_timeout"]) == serve.response_timeout_s
    assert p["decode_input_request"] == "false" and p["metrics_mode"] == "prometheus"


def test_the_metrics_advice_is_in_the_readme():
    readme = (SHIPPED.parents[1] / "README.md").read_text()
    assert "metrics_address=http://0.0.0.0:8082" in readme and "NetworkPolicy" in readme


def test_written_config_binds_loopback_and_lets_big_bodies_reach_the_handler(tmp_path):
    serve = ServeConfig(max_body_bytes=2 << 20, frontend_max_request_bytes=40 << 20)
    p = properties(config_properties(serve, MelConfig(), Ports.from_base(9000), model_store=tmp_path / "st+ore"))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert p[key].startswith("http://127.0.0.1:")
    assert p["grpc_inference_address"] == p["grpc_management_address"] == "127.0.0.1"
    assert int(p["max_request_size"]) == 40 << 20
    assert p["enable_model_api"] == "false"
    assert p["allowed_urls"] == allowed_urls(tmp_path / "st+ore")
    assert p["allowed_urls"].endswith("/st[+]ore/technogan[.]mar") and "\\" not in p["allowed_urls"]
    # behind the gate TorchServe's inference stays on loopback whatever the other binds
    p = properties(config_properties(serve, MelConfig(), Ports.from_base(9000), bind="0.0.0.0",
                                     inference_bind="127.0.0.1"))
    assert p["inference_address"] == "http://127.0.0.1:9000" and p["management_address"] == "http://0.0.0.0:9001"


def test_the_frontend_limit_must_exceed_the_body_limit():
    with pytest.raises(ConfigError, match="frontend_max_request_bytes"):
        load_config(None, {"serve.max_body_bytes": 4 << 20, "serve.frontend_max_request_bytes": 4 << 20})


def test_archived_serve_settings_round_trip_and_refuse_unknown_keys():
    from pydantic import ValidationError

    serve = load_config(None, {"serve.max_n": 7, "serve.port": 9999}).serve
    archived = serve.archived()
    assert "port" not in archived  # an archive does not depend on where it is served
    assert ServeConfig.model_validate(archived).max_n == 7
    with pytest.raises(ValidationError, match="max_m"):
        ServeConfig.model_validate({**archived, "max_m": 3})  # once dropped silently by ServeSettings


@pytest.mark.parametrize("max_seconds", [60, 600])
def test_the_response_limit_holds_the_longest_long_form_piece(max_seconds):
    from pipeline.longform import seconds_to_frames

    serve, mel = ServeConfig(max_seconds=max_seconds), MelConfig()
    limit = response_size_limit(serve, mel)
    samples = (seconds_to_frames(max_seconds, mel) - 1) * mel.hop_length
    assert 44 + 2 * samples < limit  # 16-bit mono WAV
    assert mel.n_mels * seconds_to_frames(max_seconds, mel) * len("-79.99,") < limit  # json, 2 decimals
