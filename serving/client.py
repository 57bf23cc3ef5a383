"""A small Python client for the technogan TorchServe API.

    from serving.client import Client
    c = Client("http://127.0.0.1:8080")
    mels = c.mels(n=4, seed=7)          # GeneratedMels: .db float32 [4, n_mels, n_frames], .seed, .mel_config
    arr = c.npy(n=4, seed=7)            # the same dB array, exact float32
    png = c.png(n=16, seed=7)           # PNG bytes of the grid plot
    wav = c.wav(n=2, seed=7)            # WAV bytes, clips one after another

Every method takes ``n``, ``seed`` or ``latents`` (a [n, latent_dim] array). A 400
from the server raises ``ClientError`` carrying the server's message, which names the
field at fault.

A request in flight when its TorchServe worker dies is answered by TorchServe itself
with ``Worker died.``: 507 when it has seen the worker's exit code 137 (SIGKILL, which
TorchServe reads as out of memory), 500 otherwise (a race inside TorchServe). Generating
has no side effects, so the gate in front of TorchServe (``serving/gate.py``) sends it
again once, and so does this client (``worker_retries`` times, default 1): through the
gate that covers a second death in a row, and it covers a TorchServe reached directly.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import requests

MODEL_NAME = "technogan"


class ClientError(Exception):
    """The server refused the request (HTTP 4xx/5xx); ``status`` and ``message`` say why."""

    def __init__(self, status: int, message: str, field: Optional[str] = None):
        self.status = status
        self.message = message
        self.field = field
        super().__init__(f"HTTP {status}: {message}")


@dataclass
class GeneratedMels:
    """A json response: mels in dB relative to each clip's peak."""

    db: np.ndarray  # float32 [n, n_mels, n_frames]
    seed: Optional[int]
    mel_config: dict[str, Any]
    model: Optional[str] = None


def worker_died(r: requests.Response) -> bool:
    """TorchServe's own answer to a request whose worker died under it (507 or 500)."""
    if r.status_code not in (500, 507):
        return False
    try:
        return "Worker died" in str(r.json().get("message", ""))
    except ValueError:
        return False


class Client:
    """Talks to ``POST <base_url>/predictions/technogan``; one ``requests.Session`` per client."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", timeout: float = 120.0,
                 session: Optional[requests.Session] = None, worker_retries: int = 1):
        self.url = f"{base_url.rstrip('/')}/predictions/{MODEL_NAME}"
        self.timeout = timeout
        self.session = session or requests.Session()
        self.worker_retries = worker_retries

    def request(self, format: str = "json", n: Optional[int] = None, seed: Optional[int] = None,
                latents: Optional[Sequence[Sequence[float]] | np.ndarray] = None) -> requests.Response:
        """POST one request; returns the response of a 200, raises ClientError otherwise."""
        body: dict[str, Any] = {"format": format}
        if n is not None:
            body["n"] = n
        if seed is not None:
            body["seed"] = seed
        if latents is not None:
            body["latents"] = np.asarray(latents, dtype=np.float64).tolist()
        for _ in range(1 + max(0, self.worker_retries)):
            r = self.session.post(self.url, data=json.dumps(body), headers={"Content-Type": "application/json"},
                                  timeout=self.timeout)
            if not worker_died(r):
                break
        if r.status_code != 200:
            try:
                err = r.json()
                raise ClientError(r.status_code, err.get("error") or err.get("message") or r.text, err.get("field"))
            except ValueError:
                raise ClientError(r.status_code, r.text) from None
        return r

    def mels(self, n: Optional[int] = None, seed: Optional[int] = None, latents=None) -> GeneratedMels:
        """json format: the mels as an array plus the seed used and the mel config."""
        doc = self.request("json", n, seed, latents).json()
        db = np.asarray(doc["mels"], dtype=np.float32).reshape(doc["shape"])
        return GeneratedMels(db=db, seed=doc.get("seed"), mel_config=doc.get("mel_config", {}), model=doc.get("model"))

    def npy(self, n: Optional[int] = None, seed: Optional[int] = None, latents=None) -> np.ndarray:
        """npy format: float32 [n, n_mels, n_frames] in dB, exactly as generated."""
        return np.load(io.BytesIO(self.request("npy", n, seed, latents).content), allow_pickle=False)

    def png(self, n: Optional[int] = None, seed: Optional[int] = None, latents=None) -> bytes:
        """png format: the grid plot's bytes."""
        return self.request("png", n, seed, latents).content

    def wav(self, n: Optional[int] = None, seed: Optional[int] = None, latents=None) -> bytes:
        """wav format: a mono 16-bit WAV file's bytes."""
        return self.request("wav", n, seed, latents).content
