"""serving.request: every client mistake is a RequestError (HTTP 400) naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.request import FORMATS, MAX_SEED, GenerationRequest, Limits, RequestError, parse_request

LIMITS = Limits(latent_dim=4, max_n=8, max_body_bytes=2048)


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize("raw", [None, b"", bytearray(b""), b"  \n", "", {}])
def test_empty_body_is_one_json_spectrogram(raw):
    assert parse_request(raw, LIMITS) == GenerationRequest(n=1, format="json")


def test_full_request_parses():
    r = parse_request(body(n=3, seed=11, format="PNG"), LIMITS)
    assert (r.n, r.seed, r.format, r.latents) == (3, 11, "png", None)
    assert r.content_type == "image/png"


def test_latents_set_n_and_come_back_as_float32():
    lat = [[0.5, -1, 2, 0], [1e-3, 0, 0, 3]]
    r = parse_request(body(latents=lat, format="wav"), LIMITS)
    assert r.n == 2 and r.seed is None
    assert r.latents.dtype == np.float32 and r.latents.shape == (2, 4)
    np.testing.assert_allclose(r.latents, np.asarray(lat, dtype=np.float32))


def test_already_decoded_dict_is_accepted():
    # a server running with decode_input_request=true hands the handler a dict
    assert parse_request({"n": 2}, LIMITS).n == 2


def test_every_format_has_a_content_type():
    for fmt, ctype in FORMATS.items():
        assert parse_request(body(format=fmt), LIMITS).content_type == ctype


BAD = [
    # (raw body, field the message must start with)
    (body(n=0), "n"),
    (body(n=9), "n"),
    (body(n=-1), "n"),
    (body(n="3"), "n"),
    (body(n=2.5), "n"),
    (body(n=True), "n"),
    (body(n=[1]), "n"),
    (body(seed="x"), "seed"),
    (body(seed=-1), "seed"),
    (body(seed=MAX_SEED + 1), "seed"),
    (body(seed=1.5), "seed"),
    (body(seed=False), "seed"),
    (body(format="mp3"), "format"),
    (body(format=3), "format"),
    (body(latents=[[1, 2, 3]]), "latents[0]"),
    (body(latents=[[1, 2, 3, 4], [1, 2, 3, 4, 5]]), "latents[1]"),
    (body(latents=[[1, 2, "3", 4]]), "latents[0][2]"),
    (body(latents=[[1, 2, None, 4]]), "latents[0][2]"),
    (body(latents=[[1, 2, True, 4]]), "latents[0][2]"),
    (b'{"latents": [[1, NaN, 0, 0]]}', "latents[0][1]"),
    (b'{"latents": [[1, 0, Infinity, 0]]}', "latents[0][2]"),
    (b'{"latents": [[1, 0, 0, -Infinity]]}', "latents[0][3]"),
    (b'{"latents": [[1, 0, 0, 1e400]]}', "latents[0][3]"),
    (b'{"latents": [[1, 0, 0, ' + b"9" * 400 + b"]]}", "latents[0][3]"),
    (body(latents=[]), "latents"),
    (body(latents=[1, 2, 3, 4]), "latents[0]"),
    (body(latents="abc"), "latents"),
    (body(latents=[[0, 0, 0, 0]] * 9), "latents"),
    (body(latents=[[0, 0, 0, 0]] * 2, n=3), "n"),
    (body(latents=[[0, 0, 0, 0]], seed=1), "seed"),
    (body(m=3), "m"),
    (b"{", "body"),
    (b"not json", "body"),
    (b"[1, 2]", "body"),
    (b'"hello"', "body"),
    (b"3", "body"),
    (b"null", "body"),
    (b"\xff\xfe{}", "body"),
    (b"[" * 100000 + b"]" * 100000, "body"),
    (b" " * 2049, "body"),
    (body(n=1, pad="x" * 3000), "body"),
]


@pytest.mark.parametrize("raw,field", BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_bad_requests_name_the_field(raw, field):
    with pytest.raises(RequestError) as info:
        parse_request(raw, LIMITS)
    err = info.value
    assert err.error_code == 400
    assert err.field == field
    assert err.message.startswith(f"{field}: ")
    doc = json.loads(err.body())
    assert doc["error"] == err.message and doc["field"] == field


def test_oversized_body_is_rejected_before_parsing():
    # valid JSON, but over the limit: the size is what the message is about
    raw = body(latents=[[0.0] * 4] * 8, n=8) + b" " * 4096
    with pytest.raises(RequestError, match=r"^body: \d+ bytes is over the limit of 2048 bytes"):
        parse_request(raw, LIMITS)


def test_deeply_nested_json_is_a_400_not_a_crash():
    deep = b"[" * 100000 + b"]" * 100000
    with pytest.raises(RequestError, match=r"^body: is not valid JSON"):
        parse_request(deep, Limits(latent_dim=4, max_body_bytes=1 << 20))
