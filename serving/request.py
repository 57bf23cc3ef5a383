"""Parse and validate one request body of ``POST /predictions/technogan``.

Pure functions, no torch and no TorchServe state: the handler calls
``parse_request`` once per request of a batch, so one bad request becomes its own
HTTP 400 (or 413) while the others in the same batch are still answered.

The body is an optional JSON object, typed by ``RequestBody`` (pydantic, strict):

- ``n``: how many spectrograms, 1..serve.max_n (default 1, or the number of latents);
- ``seed``: integer seed for the latents, 0..2^63-1 (default: a fresh random seed, reported back);
- ``latents``: explicit latent vectors, a list of ``n`` lists of ``latent_dim`` finite numbers;
- ``format``: ``json`` (default), ``npy``, ``png``, ``wav``, ``mp3`` or ``ogg`` (Vorbis).
- ``seconds``: one continuous long-form piece of this many seconds (5..serve.max_seconds)
  instead of separate clips (``pipeline.longform``); not with ``n`` > 1 nor with more than
  one row of ``latents`` (one row is the piece's one anchor latent).

Every client mistake raises ``RequestError`` (a TorchServe ``PredictionException``
with code 400, 413 for a body over ``serve.max_body_bytes``) whose message starts with
the offending field's name. The limits come from the ``serve`` config section
(``pipeline.config.ServeConfig``) baked into the archive, and the model's latent size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from ts.utils.util import PredictionException

from pipeline.config import ServeConfig

FORMATS: dict[str, str] = {
    # format -> response content type; the audio ones are pipeline.audio.CONTENT_TYPES
    # (tests/serving/test_request.py checks they agree: this module stays free of torch)
    "json": "application/json",
    "npy": "application/octet-stream",
    "png": "image/png",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg; codecs=vorbis",
}
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes any 64-bit value; keep it signed-safe
# Latent values whose magnitude float32 cannot hold (3.4e38) would become inf in the generator
MAX_LATENT = 1e30
# Integers with more digits than this are never a valid n, seed or latent; they are kept out
# of Python's int() altogether (it refuses over 4,300 digits, and is quadratic below that)
MAX_INT_DIGITS = 40
# A long-form piece's length (seconds): at least one generator window; the top is serve.max_seconds
MIN_SECONDS = 5.0
MAX_SECONDS = 600.0


class RequestError(PredictionException):
    """A client mistake: HTTP 400 (413 for an oversized body) with ``{"error": message, "field": field}``."""

    def __init__(self, field: str, message: str, code: int = 400):
        self.field = field
        super().__init__(f"{field}: {message}", code)

    def body(self) -> bytes:
        return json.dumps({"error": self.message, "field": self.field}).encode("utf-8")


@dataclass(frozen=True)
class Limits:
    """What the served model accepts: ``max_n`` and ``max_body_bytes`` from the archive's
    ``serve`` section (``ServeConfig`` holds the defaults), ``latent_dim`` from the model."""

    latent_dim: int
    max_n: int
    max_body_bytes: int
    max_seconds: float = float(ServeConfig.model_fields["max_seconds"].default)  # the one default: ServeConfig's

    @classmethod
    def of(cls, serve: Any, latent_dim: int) -> "Limits":
        """From a ``ServeConfig`` and the model's latent size."""
        return cls(latent_dim=int(latent_dim), max_n=serve.max_n, max_body_bytes=serve.max_body_bytes,
                   max_seconds=float(serve.max_seconds))


class HugeInt:
    """A JSON integer literal too long to be any valid value; stands in for it unparsed."""

    def __init__(self, digits: int):
        self.digits = digits


def _parse_int(text: str) -> int | HugeInt:
    digits = len(text.lstrip("-"))
    return HugeInt(digits) if digits > MAX_INT_DIGITS else int(text)


def _no_huge(value: Any) -> Any:
    if isinstance(value, HugeInt):
        raise ValueError(f"is an integer of {value.digits} digits, far out of range")
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number, not NaN or infinity")
    if abs(value) > MAX_LATENT:
        raise ValueError(f"must be between -{MAX_LATENT:g} and {MAX_LATENT:g}, got {value:g}")
    return value


Latent = Annotated[float, BeforeValidator(_no_huge), Field(strict=True), AfterValidator(_finite)]


class RequestBody(BaseModel):
    """The JSON object of one request. Strict: no strings for numbers, no booleans for
    integers, no NaN or infinity, no unknown fields. ``n``'s upper bound and the latent
    size depend on the served model and come in the validation context."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    n: Optional[Annotated[int, BeforeValidator(_no_huge), Field(ge=1)]] = None
    seed: Optional[Annotated[int, BeforeValidator(_no_huge), Field(ge=0, le=MAX_SEED)]] = None
    latents: Optional[list[list[Latent]]] = Field(None, min_length=1)
    format: Optional[Annotated[Literal[tuple(FORMATS)], BeforeValidator(_lower)]] = None  # type: ignore[valid-type]
    seconds: Optional[Annotated[float, BeforeValidator(_no_huge), AfterValidator(_finite)]] = None

    @model_validator(mode="after")
    def _fits_the_model(self, info: ValidationInfo) -> "RequestBody":
        ctx = info.context or {}
        max_n, latent_dim = ctx.get("max_n"), ctx.get("latent_dim")
        if self.seconds is not None:
            top = ctx.get("max_seconds", MAX_SECONDS)
            if not MIN_SECONDS <= self.seconds <= top:
                raise _FieldError("seconds", f"must be between {MIN_SECONDS:g} and {top:g}, got {self.seconds:g}")
            if self.n is not None and self.n > 1:
                raise _FieldError("seconds", f"makes one continuous piece; it cannot be combined with n = {self.n}")
            if self.latents is not None and len(self.latents) > 1:
                raise _FieldError("seconds", f"makes one continuous piece from one anchor latent; got "
                                             f"{len(self.latents)} rows of latents")
        if max_n is not None and self.n is not None and self.n > max_n:
            raise _FieldError("n", f"must be between 1 and {max_n}, got {self.n}")
        if self.latents is not None:
            if self.seed is not None:
                raise _FieldError("seed", "cannot be combined with latents (the latents are already chosen)")
            if max_n is not None and len(self.latents) > max_n:
                raise _FieldError("latents", f"has {len(self.latents)} rows; at most {max_n} are allowed")
            for i, row in enumerate(self.latents):
                if latent_dim is not None and len(row) != latent_dim:
                    raise _FieldError(f"latents[{i}]", f"has length {len(row)}; the model's latent size is "
                                                       f"{latent_dim}")
            if self.n is not None and self.n != len(self.latents):
                raise _FieldError("n", f"is {self.n} but {len(self.latents)} latents were given")
        return self


class _FieldError(ValueError):
    """Raised inside RequestBody's cross-field check: carries the field it is about."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request. Exactly one of ``seed`` / ``latents`` decides the latents."""

    n: int
    format: str
    seed: Optional[int] = None  # None with latents None: the handler draws a fresh seed
    latents: Optional[np.ndarray] = None  # [n, latent_dim] float32, all finite
    seconds: Optional[float] = None  # a long-form piece of this length instead of n clips

    @property
    def content_type(self) -> str:
        return FORMATS[self.format]


def _too_big(limits: Limits, size: int) -> RequestError:
    return RequestError("body", f"{size} bytes is over the limit of {limits.max_body_bytes} bytes", code=413)


def decode_body(raw: Any, limits: Limits) -> Any:
    """TorchServe's request value -> the decoded JSON value (``{}`` for an empty body).

    ``raw`` is bytes when the server runs with ``decode_input_request=false`` (ours
    does), but an already-decoded dict/list/str is accepted too so the handler also
    works under a server that decodes JSON bodies itself.
    """
    if raw is None:
        return {}
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > limits.max_body_bytes:
            raise _too_big(limits, len(raw))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("body", "is not UTF-8 text; send a JSON object") from None
    elif isinstance(raw, str):
        text = raw
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limits.max_body_bytes:
            raise _too_big(limits, size)
    else:
        return raw  # already decoded by the server (its own size limit applied)
    if not text.strip():
        return {}
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise RequestError("body", "is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError and any other refusal of the parser
        raise RequestError("body", f"is not valid JSON ({e})") from None


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float, HugeInt)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _field_name(loc: tuple[Any, ...]) -> str:
    """pydantic's error location -> the JSON path clients see: ``latents[0][2]``. The steps
    pydantic adds for Optional and Annotated wrappers (``function-after[...]``,
    ``literal[...]``, ``constrained-int``) are not fields and are dropped."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif "[" not in str(part) and not str(part).startswith(("function", "constrained")):
            name += f".{part}" if name else str(part)
    return name or "body"


def _error_from(err: ValidationError) -> RequestError:
    """The first problem pydantic found, as a RequestError. Never formats the input value
    itself (``str`` of a huge int raises, and the client knows what it sent)."""
    first = err.errors(include_url=False, include_input=True, include_context=True)[0]
    ctx = first.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, _FieldError):
        return RequestError(inner.field, inner.message)
    field = _field_name(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        return RequestError(field, f"unknown field; the allowed fields are {', '.join(RequestBody.model_fields)}")
    if kind == "value_error":
        msg = str(inner) if inner is not None else first["msg"]
        return RequestError(field, msg)
    got = f", got a JSON {_json_type(first.get('input'))}"  # the input's type only: str() of it may raise
    if kind in ("literal_error", "enum"):
        return RequestError(field, f"must be one of {', '.join(FORMATS)}" + got)
    if kind in TYPE_NAMES:
        return RequestError(field, f"must be {TYPE_NAMES[kind]}" + got)
    return RequestError(field, first["msg"][0].lower() + first["msg"][1:])


# pydantic's type errors -> what the client should have sent
TYPE_NAMES = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "list_type": "an array", "string_type": "a string",
}


def parse_request(raw: Any, limits: Limits) -> GenerationRequest:
    """Validate one request body; raises ``RequestError`` naming the field at fault."""
    body = decode_body(raw, limits)
    if not isinstance(body, dict):
        raise RequestError("body", f"must be a JSON object like {{\"n\": 4}}, got a JSON {_json_type(body)}")
    try:
        req = RequestBody.model_validate(body, context={"max_n": limits.max_n, "latent_dim": limits.latent_dim,
                                                             "max_seconds": limits.max_seconds})
    except ValidationError as e:
        raise _error_from(e) from None
    except RecursionError:  # an already-decoded, absurdly nested value
        raise RequestError("body", "is nested too deeply") from None
    latents = None if req.latents is None else np.asarray(req.latents, dtype=np.float32)  # [n, latent_dim]
    n = latents.shape[0] if latents is not None else (req.n or 1)
    return GenerationRequest(n=n, format=req.format or "json", seed=req.seed, latents=latents,
                             seconds=None if req.seconds is None else float(req.seconds))
