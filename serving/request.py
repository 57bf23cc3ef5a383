"""Parse and validate one request body of ``POST /predictions/technogan``.

Pure functions, no torch and no TorchServe state: the handler calls
``parse_request`` once per request of a batch, so one bad request becomes its own
HTTP 400 while the others in the same batch are still answered.

The body is an optional JSON object ``{"n", "seed", "latents", "format"}``:

- ``n``: how many spectrograms, 1..max_n (default 1, or the number of latents);
- ``seed``: integer seed for the latents (default: a fresh random seed, reported back);
- ``latents``: explicit latent vectors, a list of ``n`` lists of ``latent_dim`` finite numbers;
- ``format``: ``json`` (default), ``npy``, ``png`` or ``wav``.

Every client mistake raises ``RequestError`` (a TorchServe ``PredictionException``
with code 400) whose message starts with the offending field's name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from ts.utils.util import PredictionException

FORMATS: dict[str, str] = {
    # format -> response content type
    "json": "application/json",
    "npy": "application/octet-stream",
    "png": "image/png",
    "wav": "audio/wav",
}
FIELDS = ("n", "seed", "latents", "format")
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes any 64-bit value; keep it signed-safe


class RequestError(PredictionException):
    """A client mistake: HTTP 400 with ``{"error": message, "field": field}``."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}", 400)

    def body(self) -> bytes:
        return json.dumps({"error": self.message, "field": self.field}).encode("utf-8")


@dataclass(frozen=True)
class Limits:
    """What the served model accepts; comes from the archive's description."""

    latent_dim: int
    max_n: int = 64
    max_body_bytes: int = 1 << 20


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request. Exactly one of ``seed`` / ``latents`` decides the latents."""

    n: int
    format: str
    seed: Optional[int] = None  # None with latents None: the handler draws a fresh seed
    latents: Optional[np.ndarray] = None  # [n, latent_dim] float32, all finite

    @property
    def content_type(self) -> str:
        return FORMATS[self.format]


def _is_int(v: Any) -> bool:
    # JSON true/false arrive as bool, a subclass of int: never a count or a seed
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def decode_body(raw: Any, limits: Limits) -> dict[str, Any]:
    """TorchServe's request value -> the JSON object (``{}`` for an empty body).

    ``raw`` is bytes when the server runs with ``decode_input_request=false`` (ours
    does), but an already-decoded dict/list/str is accepted too so the handler also
    works under a server that decodes JSON bodies itself.
    """
    if raw is None:
        return {}
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > limits.max_body_bytes:
            raise RequestError("body", f"{len(raw)} bytes is over the limit of {limits.max_body_bytes} bytes")
        if not raw.strip():
            return {}
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("body", "is not UTF-8 text; send a JSON object") from None
    elif isinstance(raw, str):
        text = raw
        if len(text.encode("utf-8")) > limits.max_body_bytes:
            raise RequestError("body", f"over the limit of {limits.max_body_bytes} bytes")
        if not text.strip():
            return {}
    else:
        # already decoded by the server: check the size of what the client sent, roughly
        if len(json.dumps(raw)) > limits.max_body_bytes:
            raise RequestError("body", f"over the limit of {limits.max_body_bytes} bytes")
        text = None
    if text is not None:
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = str(e) if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise RequestError("body", f"is not valid JSON ({msg})") from None
    if not isinstance(raw, dict):
        raise RequestError("body", f"must be a JSON object like {{\"n\": 4}}, got a JSON {_json_type(raw)}")
    return raw


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def parse_latents(value: Any, limits: Limits) -> np.ndarray:
    """``latents`` -> float32 [n, latent_dim]; every row the right length, every value finite."""
    if not isinstance(value, list) or not value:
        raise RequestError("latents", f"must be a non-empty array of arrays of {limits.latent_dim} numbers")
    if len(value) > limits.max_n:
        raise RequestError("latents", f"has {len(value)} rows; at most {limits.max_n} are allowed")
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise RequestError(f"latents[{i}]", f"must be an array of {limits.latent_dim} numbers, got a JSON {_json_type(row)}")
        if len(row) != limits.latent_dim:
            raise RequestError(f"latents[{i}]", f"has length {len(row)}; the model's latent size is {limits.latent_dim}")
        for j, x in enumerate(row):
            if not _is_number(x):
                raise RequestError(f"latents[{i}][{j}]", f"must be a number, got a JSON {_json_type(x)}")
            # Python's json accepts NaN/Infinity literals, and huge ints overflow float32
            try:
                f = float(x)
            except OverflowError:
                f = math.inf
            if not math.isfinite(f) or abs(f) > 1e30:
                raise RequestError(f"latents[{i}][{j}]", f"must be a finite number, got {x}")
    return np.asarray(value, dtype=np.float32)  # [n, latent_dim]


def parse_request(raw: Any, limits: Limits) -> GenerationRequest:
    """Validate one request body; raises ``RequestError`` naming the field at fault."""
    body = decode_body(raw, limits)
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(unknown[0], f"unknown field; the allowed fields are {', '.join(FIELDS)}")

    fmt = body.get("format", "json")
    if fmt is None:
        fmt = "json"
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise RequestError("format", f"must be one of {', '.join(FORMATS)}, got {json.dumps(fmt)}")
    fmt = fmt.lower()

    n = body.get("n")
    if n is not None:
        if not _is_int(n):
            raise RequestError("n", f"must be an integer, got a JSON {_json_type(n)} ({json.dumps(n)})")
        if not 1 <= n <= limits.max_n:
            raise RequestError("n", f"must be between 1 and {limits.max_n}, got {n}")

    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed):
            raise RequestError("seed", f"must be an integer, got a JSON {_json_type(seed)} ({json.dumps(seed)})")
        if not 0 <= seed <= MAX_SEED:
            raise RequestError("seed", f"must be between 0 and {MAX_SEED}, got {seed}")

    latents = None
    if body.get("latents") is not None:
        if seed is not None:
            raise RequestError("seed", "cannot be combined with latents (the latents are already chosen)")
        latents = parse_latents(body["latents"], limits)
        if n is not None and n != latents.shape[0]:
            raise RequestError("n", f"is {n} but {latents.shape[0]} latents were given")
        n = latents.shape[0]

    return GenerationRequest(n=n or 1, format=fmt, seed=seed, latents=latents)
