"""TorchServe handler of ``technogan.mar``: random latents in, mel spectrograms out.

API (DESIGN.md, "Serving API"): ``POST /predictions/technogan`` with an optional JSON
body ``{"n", "seed", "latents", "format", "seconds"}``; see ``serving.request`` for the fields
and ``serving.engine`` for the response formats (json, npy, png, wav, mp3, ogg).

Code: the archive carries this file, the weights and their JSON description, not the
project's code. TorchServe starts its workers with the Python that runs the server,
where the ``technogan`` distribution is installed (the same virtualenv or image), so
this module imports ``pipeline`` and ``serving`` from there: one copy of the code, the
one the tests ran against. ``initialize`` checks the installed version against the
one recorded at packaging time and logs a warning when they differ.

Batching: TorchServe hands ``handle`` up to ``batchSize`` requests. Each is validated
on its own, so a bad one gets its own HTTP 400 (``{"error": "<field>: ..."}``) while
the rest of the batch is generated in one forward pass and answered with its own
content type. Exactly one response per request, in order.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from pipeline.audio import EncodeError
from pipeline.checkpoint import load_generator
from pipeline.config import ServeConfig
from pipeline.errors import UserError
from serving.engine import Engine, Timings
from serving.package import DESCRIPTION_FILE
from serving.request import GenerationRequest, Limits, RequestError, parse_request

log = logging.getLogger(__name__)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
REASONS = {400: "Bad Request", 413: "Payload Too Large", 500: "Internal Server Error"}


class TechnoganHandler(BaseHandler):
    """BaseHandler with our own model loading, request parsing and response encoding.

    ``handle`` (timing, describe/explain hooks) is TorchServe's; ``preprocess`` parses
    each request, ``inference`` runs the generator once for the whole batch and
    ``postprocess`` encodes each answer.
    """

    def initialize(self, context) -> None:
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        gpu_id = props.get("gpu_id")
        # CPU unless TorchServe assigned this worker a GPU (BaseHandler's rule, minus XLA/MPS)
        self.device = torch.device(f"cuda:{gpu_id}") if torch.cuda.is_available() and gpu_id is not None \
            else torch.device("cpu")
        self.manifest = context.manifest
        self.description = json.loads((model_dir / DESCRIPTION_FILE).read_text())
        # the archive's serve section, validated as strictly as a config file: an unknown
        # key (an archive from another technogan version) stops the worker naming it
        settings = ServeConfig.model_validate(self.description.get("serve", {}))
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)

        packaged = self.description.get("technogan_version")
        installed = _installed_version()
        if packaged and installed and packaged != installed:
            log.warning("archive was packaged with technogan %s but the server runs %s", packaged, installed)

        # torch.load(..., weights_only=True) of a state_dict into the registry's generator
        weights = model_dir / self.manifest["model"]["serializedFile"]
        generator, meta = load_generator(weights, map_location=self.device)
        self.engine = Engine(generator, meta, settings, device=self.device)
        self.engine.warm_up()  # the worker reports READY only after this: no slow first request
        self.limits = Limits.of(settings, self.engine.latent_dim)
        self.model = generator
        self.initialized = True
        log.info("technogan handler ready: %s at %dx%d, latent %d, registry version %s, run %s, device %s",
                 meta["model"], self.engine.resolution, self.engine.resolution, self.engine.latent_dim,
                 self.description.get("version"), self.description.get("run_id"), self.device)

    # -- BaseHandler's three steps, batch in, batch out

    def preprocess(self, data: list[dict[str, Any]]) -> list[GenerationRequest | RequestError]:
        """One parsed request or one RequestError per row of the batch."""
        parsed: list[GenerationRequest | RequestError] = []
        for idx, row in enumerate(data):
            try:
                parsed.append(parse_request(self._body(idx, row), self.limits))
            except RequestError as e:
                parsed.append(e)
            except Exception:  # a bug of ours: this request alone fails, never its batch
                log.exception("reading request %d of the batch failed", idx)
                parsed.append(RequestError("body", "internal error while reading the request", code=500))
        return parsed

    def inference(self, data: list[GenerationRequest | RequestError], *args, **kwargs):
        """Draw every valid request's latents and run the generator once for the batch."""
        timings = Timings()
        valid = [(i, r) for i, r in enumerate(data) if isinstance(r, GenerationRequest)]
        latents, seeds = [], {}
        for i, request in valid:
            if request.seconds is not None:  # a long-form piece: its own windows, after the batch
                continue
            z, seeds[i] = self.engine.latents(request)  # [n_i, latent_dim]
            latents.append(z)
        t0 = time.perf_counter()
        mels = self.engine.generate(torch.cat(latents)) if latents else None  # [sum n_i, M, T]
        timings.generate_ms = (time.perf_counter() - t0) * 1000.0
        results: list[Any] = list(data)
        start = 0
        for i, request in valid:
            if request.seconds is not None:
                t1 = time.perf_counter()
                try:
                    piece, seed = self.engine.generate_long(request)
                except UserError as e:  # a value the request model let through but the piece refuses
                    results[i] = RequestError("seconds", str(e))
                    continue
                timings.generate_ms += (time.perf_counter() - t1) * 1000.0
                timings.clips += len(piece.path["windows"])  # one generated window each
                results[i] = (request, piece, seed)
                continue
            assert mels is not None  # there are clip requests, so there were latents
            results[i] = (request, mels[start:start + request.n], seeds[i])
            start += request.n
        timings.clips += start
        self._timings = timings
        return results

    def postprocess(self, data: list[Any]) -> list[bytes]:
        """One body per request; status, content type and seed header set per request."""
        timings: Timings = getattr(self, "_timings", Timings())
        out: list[bytes] = []
        rejected = 0
        for idx, item in enumerate(data):
            if isinstance(item, RequestError):
                rejected += 1
                out.append(self._error(idx, item.error_code, item.body()))
                continue
            request, mels, seed = item
            try:
                body = self.engine.encode(request, mels, seed, timings)
            except EncodeError as e:  # the server's ffmpeg, not the client: say what is wrong
                log.error("encoding a %s response failed: %s", request.format, e)
                out.append(self._error(idx, 500, json.dumps({"error": f"format: {e}", "field": "format"}).encode()))
                continue
            except Exception:  # a bug of ours, not the client's: this request alone gets a 500
                log.exception("encoding a %s response failed", request.format)
                out.append(self._error(idx, 500, json.dumps({"error": "internal error while encoding the response"}).encode()))
                continue
            self.context.set_response_content_type(idx, request.content_type)
            # how many requests shared this handler call: lets clients (and tests) see batching work
            self.context.set_response_header(idx, "X-Technogan-Batch", str(len(data)))
            # the registry version the archive was packaged from: the studio tells it from older ones
            self.context.set_response_header(idx, "X-Technogan-Version", str(self.description.get("version", "")))
            if seed is not None:
                self.context.set_response_header(idx, "X-Technogan-Seed", str(seed))
            out.append(body)
        self._emit_metrics(timings, rejected)
        return out

    # -- helpers

    def _body(self, idx: int, row: dict[str, Any]) -> Any:
        """The request body as TorchServe delivered it (bytes with decode_input_request=false);
        raises RequestError for a form-encoded body, which TorchServe does not pass on."""
        for key in ("body", "data"):
            if key in row:
                return row[key]
        # TorchServe turns form-encoded bodies into parameters and drops the body itself
        headers = self.context.get_all_request_header(idx) if self.context is not None else {}
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type" and isinstance(v, str)), "")
        if ctype.lower().startswith(FORM_TYPES):
            raise RequestError("body", f"was sent as {ctype.split(';')[0]}; send JSON with "
                                       "Content-Type: application/json")
        return None

    def _error(self, idx: int, code: int, body: bytes) -> bytes:
        self.context.set_response_status(code, REASONS.get(code, "Error"), idx=idx)
        self.context.set_response_content_type(idx, "application/json")
        return body

    def _emit_metrics(self, timings: Timings, rejected: int) -> None:
        """The handler's own metrics, declared in serving/metrics.yaml so Prometheus shows them."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        # fresh dimension lists: TorchServe appends its defaults to the list it is given
        if timings.clips:
            metrics.add_counter("ClipsGenerated", timings.clips, dimensions=[])
            metrics.add_metric("GenerationTime", round(timings.generate_ms, 3), unit="ms", dimensions=[],
                               metric_type=MetricTypes.GAUGE)
        if timings.render_ms:
            metrics.add_metric("RenderTime", round(timings.render_ms, 3), unit="ms", dimensions=[],
                               metric_type=MetricTypes.GAUGE)
        if timings.plot_ms:
            metrics.add_metric("PlotTime", round(timings.plot_ms, 3), unit="ms", dimensions=[],
                               metric_type=MetricTypes.GAUGE)
        if rejected:
            metrics.add_counter("RequestsRejected", rejected, dimensions=[])


def _installed_version() -> str | None:
    try:
        return metadata.version("technogan")
    except metadata.PackageNotFoundError:
        return None
