"""serving.request: every client mistake is a RequestError (HTTP 400, 413 for size) naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ServeConfig
from serving.request import FORMATS, MAX_SEED, GenerationRequest, Limits, RequestError, parse_request

LIMITS = Limits(latent_dim=4, max_n=8, max_body_bytes=2048)
HUGE = "9" * 5000  # Python's int() refuses over 4,300 digits: the class of input behind issue 12 item 1


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


def test_audio_formats_are_the_encoders_with_its_content_types():
    from pipeline.audio import AUDIO_FORMATS, CONTENT_TYPES
    from serving.engine import ENCODERS

    assert set(ENCODERS) == set(FORMATS) >= set(AUDIO_FORMATS)
    assert {f: FORMATS[f] for f in AUDIO_FORMATS} == CONTENT_TYPES
    assert parse_request(body(format="MP3"), LIMITS).format == "mp3"
    assert parse_request(body(format="ogg"), LIMITS).content_type == "audio/ogg; codecs=vorbis"


def test_an_unknown_format_lists_the_formats():
    with pytest.raises(RequestError) as e:
        parse_request(body(format="flac"), LIMITS)
    assert e.value.error_code == 400
    assert e.value.message == "format: must be one of json, npy, png, wav, mp3, ogg, got a JSON string"


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
    (body(format="flac"), "format"),
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
    (b'{"n": ' + HUGE.encode() + b"}", "n"),
    (b'{"n": -' + HUGE.encode() + b"}", "n"),
    (b'{"seed": ' + HUGE.encode() + b"}", "seed"),
    (b'{"latents": [[0, 0, ' + HUGE.encode() + b', 0]]}', "latents[0][2]"),
    (b'{"extra": ' + HUGE.encode() + b"}", "extra"),
    (b"[" + HUGE.encode() + b"]", "body"),
    (HUGE.encode(), "body"),
    (body(n=None, seed=None, latents=None, format="gif"), "format"),
    (body(n=1.0), "n"),
    (body(seed="1"), "seed"),
    (body(latents=[["0", 0, 0, 0]]), "latents[0][0]"),
    (body(latents=[[1e31, 0, 0, 0]]), "latents[0][0]"),
    (body(latents=[[0, 0, 0, 0]], n=0), "n"),
    (body(latents=[[[0], 0, 0, 0]]), "latents[0][0]"),
    (body(latents={"0": [0, 0, 0, 0]}), "latents"),
    (body(seconds=4.9), "seconds"),
    (body(seconds=60.5), "seconds"),  # over serve.max_seconds (60 by default)
    (body(seconds=10, n=2), "seconds"),
    (body(seconds=10, latents=[[0, 0, 0, 0]] * 2), "seconds"),
    (body(seconds="10"), "seconds"),
    (body(seconds=True), "seconds"),
    (body(seconds=[10]), "seconds"),
    (b'{"seconds": NaN}', "seconds"),
    (b'{"seconds": ' + HUGE.encode() + b"}", "seconds"),
]


@pytest.mark.parametrize("raw,field", BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_bad_requests_name_the_field(raw, field):
    with pytest.raises(RequestError) as info:
        parse_request(raw, Limits(latent_dim=4, max_n=8, max_body_bytes=1 << 20))  # room for 5,000 digits
    err = info.value
    assert err.error_code == 400
    assert err.field == field
    assert err.message.startswith(f"{field}: ")
    doc = json.loads(err.body())
    assert doc["error"] == err.message and doc["field"] == field


@pytest.mark.parametrize("raw", [b" " * 2049, body(n=1, pad="x" * 3000), body(latents=[[0.0] * 4] * 8, n=8) + b" " * 4096,
                                 "x" * 2049])
def test_oversized_body_is_a_413_before_parsing(raw):
    # valid JSON or not, over the limit: the size is what the answer is about
    with pytest.raises(RequestError, match=r"^body: \d+ bytes is over the limit of 2048 bytes") as info:
        parse_request(raw, LIMITS)
    assert info.value.error_code == 413 and json.loads(info.value.body())["field"] == "body"


def test_deeply_nested_json_is_a_400_not_a_crash():
    deep = b"[" * 100000 + b"]" * 100000
    with pytest.raises(RequestError, match=r"^body: is not valid JSON"):
        parse_request(deep, Limits(latent_dim=4, max_n=8, max_body_bytes=1 << 20))


def test_seconds_asks_for_one_long_piece():
    r = parse_request(body(seconds=30, seed=2, format="wav"), LIMITS)
    assert (r.n, r.seed, r.format, r.seconds) == (1, 2, "wav", 30.0)
    one = parse_request(body(seconds=12.5, latents=[[0.5, 0, 0, 0]], n=1), LIMITS)
    assert one.seconds == 12.5 and one.latents.shape == (1, 4)
    assert parse_request(body(n=2), LIMITS).seconds is None
    for raw, message in ((body(seconds=10, n=3), "seconds: makes one continuous piece; it cannot be combined "
                                                 "with n = 3"),
                         (body(seconds=61), "seconds: must be between 5 and 60, got 61")):
        with pytest.raises(RequestError) as info:
            parse_request(raw, LIMITS)
        assert info.value.message == message
    longer = Limits.of(ServeConfig(max_seconds=120), 4)
    assert parse_request(body(seconds=120), longer).seconds == 120.0


def test_limits_come_from_the_serve_config():
    # one declaration of the defaults: ServeConfig; Limits has none of its own
    serve = ServeConfig()
    limits = Limits.of(serve, 100)
    assert (limits.max_n, limits.max_body_bytes, limits.latent_dim) == (serve.max_n, serve.max_body_bytes, 100)
    with pytest.raises(TypeError):
        Limits(latent_dim=4)  # type: ignore[call-arg]
    smaller = Limits.of(ServeConfig(max_n=2), 4)
    with pytest.raises(RequestError, match="^n: must be between 1 and 2"):
        parse_request(body(n=3), smaller)


# ----------------------------------------------------------------------------- properties

# any JSON value, with the numbers that broke the server: huge integers, NaN, infinities
JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
               | st.text(max_size=8) | st.just(object()))  # object(): a 5,000-digit integer


def _dumps(value) -> bytes:
    """JSON text of a drawn value; each object() becomes a 5,000-digit integer literal."""
    text = json.dumps(value, default=lambda o: "__HUGE__")
    return text.replace('"__HUGE__"', HUGE).encode()


json_values = st.recursive(JSON_LEAVES, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.sampled_from(["n", "seed", "latents", "format", "x"]), kids,
                                             max_size=4), max_leaves=12)
SLOW_OK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW_OK
@given(json_values)
def test_any_json_body_is_a_request_or_a_client_error(value):
    """Whatever JSON arrives, the answer is a valid request or a 400 naming a field: never
    another exception (which TorchServe would turn into a 503 for the whole batch)."""
    raw = _dumps(value)
    try:
        request = parse_request(raw, Limits(latent_dim=4, max_n=8, max_body_bytes=1 << 20))
    except RequestError as e:
        assert e.error_code == 400
        doc = json.loads(e.body())
        assert doc["error"] == e.message and doc["error"].startswith(doc["field"] + ": ")
        return
    assert isinstance(value, dict) and set(value) <= {"n", "seed", "latents", "format"}
    assert 1 <= request.n <= 8 and request.format in FORMATS
    assert request.latents is None or (request.latents.shape == (request.n, 4)
                                       and np.isfinite(request.latents).all())


valid_bodies = st.fixed_dictionaries({}, optional={
    "n": st.integers(1, 8), "seed": st.integers(0, MAX_SEED), "format": st.sampled_from(list(FORMATS))})


@SLOW_OK
@given(valid_bodies, st.sampled_from(["n", "seed", "latents", "format", "other"]), st.booleans(),
       st.integers(4301, 6000))
def test_a_huge_integer_anywhere_is_a_400_naming_its_field(doc, where, negative, digits):
    doc = dict(doc)
    if where == "latents":
        doc.pop("seed", None)
        doc.pop("n", None)
        doc["latents"] = [[0.0, 0.0, "__HUGE__", 0.0]]
        field = "latents[0][2]"
    else:
        doc[where] = "__HUGE__"
        field = where
    number = ("-" if negative else "") + "7" * digits
    raw = json.dumps(doc).replace('"__HUGE__"', number).encode()
    with pytest.raises(RequestError) as info:
        parse_request(raw, Limits(latent_dim=4, max_n=8, max_body_bytes=1 << 20))
    assert info.value.error_code == 400 and info.value.field == field


@SLOW_OK
@given(valid_bodies)
def test_valid_bodies_parse_to_what_they_say(doc):
    r = parse_request(json.dumps(doc).encode(), LIMITS)
    assert (r.n, r.seed, r.format) == (doc.get("n", 1), doc.get("seed"), doc.get("format", "json"))
