"""The work behind one prediction, without TorchServe: latents -> mels -> response bodies.

``Engine`` holds a loaded generator, its mel config and a renderer. The handler
calls it for every batch; ``benchmarks/bench_serve.py`` calls the very same methods
in-process to measure what TorchServe adds on top.

Shapes: a generator maps latents ``[B, latent_dim]`` to normalised mels
``[B, 1, R, R]`` in [-1, 1] at the model resolution R; every response is made at
the stored (analysis) resolution of the mel config, ``[n, n_mels, n_frames]``,
because that is what the mel config's time and frequency axes describe.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import nn

from pipeline.audio import AUDIO_FORMATS
from pipeline.config import LongformConfig, MelConfig, ServeConfig
from pipeline.generate import latents_for_seed
from pipeline.mel import normalised_to_db, to_stored_resolution
from serving.request import GenerationRequest

if TYPE_CHECKING:
    from pipeline.longform import LongPiece

log = logging.getLogger(__name__)

# Largest seed the handler draws itself: exact in a JSON number for any client (2^53).
MAX_DRAWN_SEED = 2**53


@dataclass
class Timings:
    """Milliseconds spent per stage of one batch (for the handler's metrics)."""

    generate_ms: float = 0.0
    render_ms: float = 0.0
    plot_ms: float = 0.0
    encode_ms: float = 0.0
    clips: int = 0


class Engine:
    """A generator ready to serve: ``generate`` mels and ``encode`` them per format."""

    def __init__(self, generator: nn.Module, meta: dict[str, Any], settings: ServeConfig,
                 device: torch.device | str = "cpu"):
        from pipeline.audio import MelRenderer

        self.generator = generator.eval()
        self.meta = meta
        self.settings = settings
        self.device = torch.device(device)
        self.mel_config = MelConfig.from_dict(meta["mel_config"])
        self.latent_dim = int(meta["latent_dim"])
        self.resolution = int(meta["resolution"])
        self.renderer = MelRenderer(self.mel_config, n_iter=settings.render_iterations,
                                    mel_inverse=settings.render_mel_inverse, nnls_steps=settings.render_nnls_steps,
                                    device=self.device)
        self._seeds = np.random.default_rng()  # OS entropy: only for requests without a seed
        # long-form pieces as `technogan generate --seconds` makes them, up to serve.max_seconds
        self.longform = LongformConfig(max_seconds=float(settings.max_seconds))

    # -- latents and mels

    def draw_seed(self) -> int:
        return int(self._seeds.integers(0, MAX_DRAWN_SEED))

    def latents(self, request: GenerationRequest) -> tuple[torch.Tensor, Optional[int]]:
        """(latents [n, latent_dim], the seed used or None when the client gave latents)."""
        if request.latents is not None:
            return torch.from_numpy(np.ascontiguousarray(request.latents)), None
        seed = request.seed if request.seed is not None else self.draw_seed()
        return latents_for_seed(seed, request.n, self.latent_dim), seed

    def generate_long(self, request: GenerationRequest) -> tuple["LongPiece", Optional[int]]:
        """(the long-form piece of ``request.seconds``, the seed used or None when the client gave
        its one anchor latent). The same seed gives the piece ``technogan generate --seconds``
        gives (with the default longform settings)."""
        from pipeline.longform import generate_long

        if request.latents is not None:
            anchors, seed = np.ascontiguousarray(request.latents), None
        else:
            anchors, seed = None, request.seed if request.seed is not None else self.draw_seed()
        assert request.seconds is not None
        piece = generate_long(self.generator, self.meta, request.seconds, seed=seed or 0, anchors=anchors,
                              device=self.device, settings=self.longform)
        return piece, seed

    @torch.no_grad()  # not inference_mode: its tensors refuse the in-place ops of plotting/rendering
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, latent_dim] -> normalised mels at stored resolution [B, n_mels, n_frames] (CPU)."""
        if z.shape[0] == 0:
            return torch.zeros(0, *self.mel_config.shape)
        x = self.generator(z.to(self.device, torch.float32))  # [B, 1, R, R]
        x = to_stored_resolution(x[:, 0].float(), self.mel_config)  # [B, M, T]
        return x.cpu()

    def warm_up(self) -> None:
        """One small request of every format, so the first client does not pay for lazy
        set-up (filterbanks and their inverse, FFT plans, matplotlib's font cache)."""
        from serving.request import FORMATS

        from pipeline.audio import EncodeError

        mels = self.generate(latents_for_seed(0, 1, self.latent_dim))
        for fmt in FORMATS:
            try:
                ENCODERS[fmt](self, mels, 0)
            except EncodeError as e:
                # no usable ffmpeg: the other formats still serve; these answer 500 naming why
                log.error("format %s is unavailable on this server: %s", fmt, e)

    # -- response bodies, one per format

    def encode(self, request: GenerationRequest, mels: "torch.Tensor | LongPiece", seed: Optional[int],
               timings: Optional[Timings] = None) -> bytes:
        """Normalised mels [n, M, T] of one request (or its long-form piece) -> the response body
        in its format."""
        from pipeline.longform import LongPiece

        t0 = time.perf_counter()
        if isinstance(mels, LongPiece):
            body = self.encode_long(request.format, mels, seed)
        else:
            body = ENCODERS[request.format](self, mels, seed)
        if timings is not None:
            ms = (time.perf_counter() - t0) * 1000.0
            if request.format in AUDIO_FORMATS:  # Griffin-Lim, then (mp3, ogg) ffmpeg
                timings.render_ms += ms
            elif request.format == "png":
                timings.plot_ms += ms
            else:
                timings.encode_ms += ms
        return body

    def db(self, mels: torch.Tensor) -> np.ndarray:
        """Normalised [n, M, T] -> dB relative to each clip's peak, float32 [n, M, T]."""
        return normalised_to_db(mels.numpy().astype(np.float32, copy=False), self.mel_config).astype(np.float32)

    def to_json(self, mels: torch.Tensor, seed: Optional[int]) -> bytes:
        # float64 before rounding, or -40.01 comes out as the float32 -40.0099983215332
        db = np.round(self.db(mels).astype(np.float64), self.settings.json_decimals)  # [n, M, T]
        doc = {
            "mels": db.tolist(),
            "shape": list(db.shape),
            "seed": seed,
            "unit": "dB relative to each clip's peak",
            "model": self.meta.get("model"),
            "model_resolution": self.resolution,
            "mel_config": self.mel_config.to_dict(),
        }
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def to_npy(self, mels: torch.Tensor, seed: Optional[int]) -> bytes:
        buf = io.BytesIO()
        np.save(buf, self.db(mels), allow_pickle=False)  # float32 [n, M, T] in dB
        return buf.getvalue()

    def to_png(self, mels: torch.Tensor, seed: Optional[int]) -> bytes:
        from pipeline.plot import plot_mel_grid

        n = mels.shape[0]
        title = f"{n} generated mel spectrogram{'s' if n > 1 else ''}" + (f" (seed {seed})" if seed is not None else "")
        png = plot_mel_grid(mels.numpy(), self.mel_config, path=None, title=title)
        assert png is not None  # path=None: the picture comes back as bytes
        return png

    def to_audio(self, mels: torch.Tensor, fmt: str) -> bytes:
        """Mels [n, M, T] rendered to audio, the clips joined with ``serve.wav_gap_seconds``
        of silence, as one ``fmt`` file (``wav``, ``mp3``, ``ogg``; EncodeError if ffmpeg fails)."""
        from pipeline.audio import encode_audio

        audio = self.renderer.render(mels)  # [n, clip_samples]
        return encode_audio(audio, self.mel_config.sample_rate, fmt, gap_seconds=self.settings.wav_gap_seconds)

    def to_wav(self, mels: torch.Tensor, seed: Optional[int]) -> bytes:
        return self.to_audio(mels, "wav")

    def to_mp3(self, mels: torch.Tensor, seed: Optional[int]) -> bytes:
        return self.to_audio(mels, "mp3")

    def to_ogg(self, mels: torch.Tensor, seed: Optional[int]) -> bytes:
        return self.to_audio(mels, "ogg")


    # -- a long-form piece: the same formats, of one long mel [M, T]

    def encode_long(self, fmt: str, piece: "LongPiece", seed: Optional[int]) -> bytes:
        """A long-form piece in ``fmt``: json/npy its dB mel [1, M, T] (json adds the window
        joins, the tempo and the latent path), png its rows with the joins marked, wav/mp3/ogg
        the piece rendered in one chunked pass (``pipeline.longform.render_long``)."""
        mels = torch.from_numpy(piece.mel[None])  # [1, M, T]
        if fmt == "npy":
            return self.to_npy(mels, seed)
        if fmt == "json":
            db = np.round(self.db(mels).astype(np.float64), self.settings.json_decimals)
            doc = {"mels": db.tolist(), "shape": list(db.shape), "seed": seed, "seconds": piece.seconds,
                   "boundaries_s": piece.boundaries_s, "tempo_bpm": piece.tempo_bpm,
                   "unit": "dB relative to the piece's peak", "model": self.meta.get("model"),
                   "model_resolution": self.resolution, "mel_config": self.mel_config.to_dict(), "path": piece.path}
            return json.dumps(doc, separators=(",", ":")).encode("utf-8")
        if fmt == "png":
            from pipeline.plot import plot_long_mel

            title = f"{piece.seconds:.0f} s long-form piece" + (f" (seed {seed})" if seed is not None else "")
            png = plot_long_mel(piece.mel, self.mel_config, path=None, title=title, boundaries_s=piece.boundaries_s)
            assert png is not None
            return png
        from pipeline.audio import encode_audio
        from pipeline.longform import render_long

        audio = render_long(piece, n_iter=self.settings.render_iterations, seed=seed or 0,
                            mel_inverse=self.settings.render_mel_inverse, nnls_steps=self.settings.render_nnls_steps,
                            settings=self.longform, device=self.device)
        return encode_audio(audio, self.mel_config.sample_rate, fmt)


# format -> encoder; adding a format is one entry here and one in serving.request.FORMATS
ENCODERS = {
    "json": Engine.to_json,
    "npy": Engine.to_npy,
    "png": Engine.to_png,
    "wav": Engine.to_wav,
    "mp3": Engine.to_mp3,
    "ogg": Engine.to_ogg,
}
