"""Typed configuration: the one mel config and the run config loaded from YAML presets.

Every section is a pydantic model with ``extra="forbid"`` so a misspelt key fails at
load time with its dotted path (``train.batch_sise: extra inputs are not permitted``)
before any work starts. Each stage owns one section; the resolved config is saved
with every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text


class ConfigError(UserError, ValueError):
    """A config file or value is wrong; the message names the key and the file."""


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types a field annotation admits (Optional/Union/Literal unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)}
    return {annotation} if annotation in (bool, int, float, str) else set()


class Section(BaseModel):
    """Base of every config section: unknown keys refused, and no silent coercion.

    pydantic's lax mode would read ``epochs: true`` as 1, ``lr: .inf`` as infinity,
    ``amp: "no"`` as False and ``experiment: ""`` as a name; a config is written by
    hand, so each of those is a mistake reported with its key instead."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return v
        kinds = _scalar_kinds(field.annotation)
        if not kinds or v is None:
            return v
        if isinstance(v, bool):
            if bool not in kinds:
                raise ValueError(f"expected {_kind_names(kinds)}, got a boolean ({v})")
            return v
        if isinstance(v, int):
            if int not in kinds and float not in kinds:
                raise ValueError(f"expected {_kind_names(kinds)}, got an integer ({v})")
            return v
        if isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"must be a finite number, got {v}")
            if float not in kinds:
                raise ValueError(f"expected {_kind_names(kinds)}, got a decimal number ({v})")
            return v
        if isinstance(v, str):
            if str not in kinds:
                raise ValueError(f"expected {_kind_names(kinds)}, got a string ({v!r})")
            words = _literal_strings(field.annotation)
            if bool in kinds and words is not None and v not in words:
                # pydantic would read "yes" as true for the bool half of a switch with named values
                raise ValueError(f"expected true/false or one of {sorted(words)}, got {v!r}")
            if not v.strip() and field.default != "":
                raise ValueError("must not be empty")
        return v


def _literal_strings(annotation: Any) -> set[str] | None:
    """The strings a field admits when they are all named by Literals (None when any string is)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_literal_strings(a) for a in typing.get_args(annotation)]
        return None if any(p is None for p in parts) else set().union(*parts)  # type: ignore[arg-type]
    if origin is Literal:
        return {a for a in typing.get_args(annotation) if isinstance(a, str)}
    return None if annotation is str else set()


def _kind_names(kinds: set[type]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(names[k] for k in (bool, int, float, str) if k in kinds)


# ----------------------------------------------------------------------------- mel


class MelConfig(Section):
    """The one mel configuration. Saved beside the dataset and inside every checkpoint.

    Stored mels are log-mel power in dB relative to each clip's peak, floored at
    ``-top_db`` and mapped linearly to [-1, 1] (0 dB -> 1, -top_db -> -1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(22050, ge=4000, le=192000)
    clip_seconds: float = Field(5.0, gt=0.0, le=60.0)
    n_fft: int = Field(2048, ge=64, le=16384)
    hop_length: int = Field(512, ge=16, le=8192)
    n_mels: int = Field(128, ge=8, le=512)
    fmin: float = Field(0.0, ge=0.0)
    fmax: Optional[float] = Field(None, gt=0.0, description="None means sample_rate / 2")
    top_db: float = Field(80.0, gt=0.0, le=200.0, description="dB floor below the clip's peak")
    power: float = Field(2.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> "MelConfig":
        if self.fmax is not None and self.fmax > self.sample_rate / 2:
            raise ValueError(f"fmax {self.fmax} exceeds Nyquist ({self.sample_rate / 2})")
        if self.fmin >= self.f_max:
            raise ValueError(f"fmin {self.fmin} must be below fmax {self.f_max}")
        if self.hop_length > self.n_fft:
            raise ValueError("hop_length must not exceed n_fft")
        return self

    @property
    def f_max(self) -> float:
        return float(self.fmax) if self.fmax is not None else self.sample_rate / 2

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def n_frames(self) -> int:
        # librosa's centred STFT: one frame per hop plus the frame at t=0
        return 1 + self.clip_samples // self.hop_length

    @property
    def shape(self) -> tuple[int, int]:
        """Stored (analysis) resolution of one clip: [n_mels, n_frames]."""
        return (self.n_mels, self.n_frames)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MelConfig":
        return _validate(cls, data, "mel_config")

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MelConfig":
        data = read_yaml(path, "mel config", hint=" (is this a segmented dataset folder?)")  # JSON is YAML
        return _validate(cls, data, str(path))


# ----------------------------------------------------------------------------- data stages


class SynthConfig(Section):
    """Synthetic techno, the embedded default data set."""

    tracks: int = Field(32, ge=1, le=100000)
    seconds: float = Field(90.0, ge=1.0, le=3600.0)
    seed: int = 0
    format: Literal["wav", "mp3", "flac", "ogg"] = "wav"
    sample_rate: int = Field(44100, ge=8000, le=192000)
    channels: Literal[1, 2] = 2


class SegmentConfig(Section):
    """Audio folder -> mel shards."""

    workers: Optional[int] = Field(None, ge=1, le=512, description="None means all cores")
    silence_dbfs: float = Field(-60.0, le=0.0, description="clips whose peak is below this are skipped")
    batch_clips: int = Field(16, ge=1, le=1024, description="clips decoded and turned into mels at a time")
    decoder: Literal["auto", "pyav", "soundfile", "ffmpeg"] = Field(
        "auto", description="auto: libsndfile in process, then PyAV, then the ffmpeg command line")


# The model resolutions the networks support (pipeline.models.networks builds them);
# stated here once so the config and the networks cannot disagree.
MIN_RESOLUTION = 32
MAX_RESOLUTION = 256


def resolution_problem(r: int) -> Optional[str]:
    """Why ``r`` is not a supported model resolution, or None when it is."""
    if r < MIN_RESOLUTION or r > MAX_RESOLUTION or r & (r - 1):
        return f"must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got {r}"
    return None


class DataConfig(Section):
    """How the training set is drawn from the dataset."""

    resolution: int = Field(64, description=f"model input size, a power of two from {MIN_RESOLUTION} "
                                            f"to {MAX_RESOLUTION}")
    max_samples: Optional[int] = Field(None, ge=1)
    seed: int = 0
    normalize: Literal["none", "per_bin"] = Field(
        "none", description="per_bin: the critic sees each mel row standardised and the generator's Tanh output "
        "is mapped back through fixed per-row affine layers (statistics from the training clips, cached in "
        "<dataset>/stats and saved in every checkpoint); data, plots, audio and serving stay in [-1, 1]")
    crop: Literal["fixed", "random"] = Field(
        "fixed", description="random: every epoch each clip is read from a random start in it, running on into "
        "the next clip of its track (the two joined at their recorded levels), so the critic sees windows at any "
        "offset instead of the same 5 s cuts; needs a dataset whose index records peak_db (segmented since it does)")

    @field_validator("resolution")
    @classmethod
    def _pow2(cls, v: int) -> int:
        problem = resolution_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class ScrapeConfig(Section):
    """YouTube playlists -> raw audio + manifest (``technogan scrape``): network manners and limits."""

    backend: Literal["yt-dlp", "pytube"] = "yt-dlp"
    retries: int = Field(4, ge=0, le=50, description="extra attempts per video after a transient error")
    backoff_seconds: float = Field(2.0, ge=0.0, le=600.0, description="first backoff; doubles per attempt, full jitter")
    backoff_max_seconds: float = Field(120.0, ge=0.0, le=3600.0, description="cap on one backoff sleep")
    pause_seconds: float = Field(2.0, ge=0.0, le=600.0, description="pause between two downloads")
    connect_timeout: float = Field(10.0, gt=0.0, le=600.0, description="seconds to open a connection")
    read_timeout: float = Field(30.0, gt=0.0, le=3600.0, description="seconds without a byte before giving up")
    download_timeout: float = Field(1800.0, gt=0.0, le=86400.0, description="seconds one download attempt may "
                                    "take in all: a server that trickles bytes is given up on (then retried)")
    chunk_bytes: int = Field(10 * 1024 * 1024, ge=0, description="HTTP Range request size; 0 = one request")
    max_failure_share: float = Field(0.1, ge=0.0, le=1.0, description="exit non-zero above this share of failures")
    min_duration: float = Field(120.0, ge=0.0, description="default per playlist: shorter videos are skipped (s)")
    max_duration: float = Field(900.0, gt=0.0, description="default per playlist: longer videos are skipped (s)")
    duration_tolerance: float = Field(0.1, ge=0.0, le=1.0, description="decoded vs listed duration, relative")

    @model_validator(mode="after")
    def _check(self) -> "ScrapeConfig":
        if self.min_duration >= self.max_duration:
            raise ValueError(f"min_duration {self.min_duration} must be below max_duration {self.max_duration}")
        return self


# ----------------------------------------------------------------------------- models, training, tracking


class ModelConfig(Section):
    """Hyperparameters of a GAN from the study (see pipeline.models.registry for the names).

    Widths are the channel count of the generator's last hidden layer (``g_width``) and of
    the critic's first layer (``d_width``); the other layers are multiples of them.
    """

    name: str = Field("dcgan1", description="registry name: dcgan1, dcgan2, wgan-wc, wgan-gp")
    latent_dim: int = Field(100, ge=1, le=4096)
    g_width: int = Field(64, ge=1, le=4096)
    d_width: int = Field(64, ge=1, le=4096)
    g_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="generator Dropout rate (DCGAN2, WGANs)")
    d_dropout: float = Field(0.3, ge=0.0, lt=1.0, description="discriminator/critic Dropout rate")
    leaky_slope: float = Field(0.2, ge=0.0, lt=1.0)
    spectral_norm: bool = Field(False, description="spectral normalisation (Miyato et al. 2018) on every "
                                "Conv2d of the critic; the figure's layers stay as they are")
    minibatch_std: bool = Field(False, description="the critic's last convolution also sees the spread of "
                                "its input features across groups of 4 clips of the batch (Karras et al. 2018), "
                                "so a generator that repeats itself is told apart; one extra input channel")
    g_upsample: Literal["transposed", "nearest"] = Field(
        "transposed", description="how the generator doubles its map: the figures' stride-2 ConvTranspose2d, or "
        "nearest-neighbour upsampling then a 3x3 Conv2d (Odena et al. 2016: no checkerboard); same channels")
    d_time_branch: bool = Field(False, description="a second critic path beside the figure's: 1D convolutions "
                                "along time with the mel bins as channels (4 d_width wide), so each feature spans "
                                "every band and deeper ones compare neighbouring beats; its score is added")
    d_rhythm_branch: bool = Field(False, description="a third critic path: the onsets' autocorrelation at every "
                                  "lag up to half the clip, per 4 bands of mel rows (where beats fall and how "
                                  "loud they are do not matter, their regularity does), scored by 3 layers "
                                  "4 d_width wide; its score is added")
    g_time_branch: bool = Field(False, description="a second generator path beside the figure's: 1D transposed "
                                "convolutions along time with the mel bins as output channels (4 g_width wide), "
                                "making whole frames; its output is added before the Tanh")


class StudyRunConfig(Section):
    """A named run (``technogan train --run NAME``): one of the study's (configs/study.yaml: a
    model trained E epochs on N clips), or a recipe: the model, data and train sections of
    another ``preset`` on this config's data and tracking (quickstart's ``laptop`` run)."""

    model: Optional[str] = Field(None, description="registry name; null = the preset's (or the config's)")
    epochs: Optional[int] = Field(None, ge=1, description="null = the preset's (or the config's)")
    max_samples: Optional[int] = Field(None, ge=1, description="capped at the dataset size")
    max_minutes: Optional[float] = Field(None, gt=0.0, description="wall-clock budget of this run")
    preset: Optional[str] = Field(None, description="a preset file, or the name of a packaged one (laptop), whose "
                                  "model, data and train sections this run trains with")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys set last, e.g. "
                                      "{model.g_width: 16}")
    description: str = ""


AugmentTransform = Literal["shift", "time_mask", "freq_mask", "gain"]


class TrainConfig(Section):
    """The training loop. Optimiser/loss fields left at null take the model's defaults
    from the registry (e.g. WGAN-GP: Adam 1e-4, betas (0.5, 0.9), 5 critic steps, lambda 10)."""

    dataset: Optional[str] = Field(None, description="mel dataset folder; null = <out_dir>/dataset")
    out_dir: Optional[str] = Field(None, description="local checkpoints; null = <out_dir>/train")
    epochs: int = Field(5, ge=1, le=100000)
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many generator steps (total)")
    batch_size: int = Field(64, ge=1, le=65536)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool | Literal["auto"] = Field(True, description="bfloat16 autocast: true = on CUDA only; auto = on CUDA "
                                        "and on a CPU that computes bfloat16 natively (AVX512-BF16 or AMX); "
                                        "false = never")
    workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes")
    channels_last: bool = Field(False, description="keep both networks' convolution weights and the batches in "
                                "channels-last memory layout, which oneDNN's CPU and cuDNN's tensor-core "
                                "convolutions run faster on; the same networks and results up to rounding")
    cache_in_memory: bool = Field(True, description="resize the training set once and keep it in RAM")
    optimizer: Optional[Literal["adam", "rmsprop"]] = None
    lr: Optional[float] = Field(None, gt=0.0)
    betas: Optional[tuple[float, float]] = None
    n_critic: Optional[int] = Field(None, ge=1, le=100, description="critic steps per generator step")
    clip_value: Optional[float] = Field(None, gt=0.0, description="WGAN-WC weight clipping bound")
    gp_weight: Optional[float] = Field(None, ge=0.0, description="WGAN-GP penalty weight lambda")
    loss: Optional[Literal["bce", "wasserstein", "hinge"]] = Field(
        None, description="adversarial loss; null = the model's own (bce for the DCGANs, wasserstein for the "
        "WGANs). A DCGAN critic trained with hinge or wasserstein loses its final Sigmoid; bce on a critic "
        "without one is BCE with logits. WGAN-WC's clipping and WGAN-GP's penalty stay whatever the loss")
    lr_g: Optional[float] = Field(None, gt=0.0, description="generator learning rate; null = lr (two time-scale "
                                  "update rule, Heusel et al. 2017, when it differs from lr_d)")
    lr_d: Optional[float] = Field(None, gt=0.0, description="critic learning rate; null = lr")
    r1_gamma: Optional[float] = Field(None, gt=0.0, description="R1 penalty (gamma/2) E||grad D(x_real)||^2 "
                                      "(Mescheder et al. 2018) added to the critic loss; null = off")
    r1_every: int = Field(16, ge=1, le=10000, description="lazy R1 (StyleGAN2): computed every r1_every-th "
                          "critic step and scaled by r1_every")
    rhythm_match: Optional[float] = Field(None, gt=0.0, le=1e4, description="feature matching on the rhythm "
                                          "(Salimans et al. 2016): this weight times the squared relative gap "
                                          "between the generated and the real batch's periodicity per band "
                                          "(mean square onset autocorrelation), added to the generator loss; "
                                          "null = off")
    ema_decay: Optional[float] = Field(None, gt=0.0, lt=1.0, description="exponential moving average of the "
                                       "generator's weights (e.g. 0.999); samples, evaluation, checkpoints and "
                                       "serving use the average; null = off")
    ema_warmup_steps: int = Field(100, ge=0, le=10_000_000, description="the EMA decay ramps up from 0 over "
                                  "this many generator steps so the random initial weights are forgotten")
    ema_rampup: Optional[float] = Field(None, gt=0.0, le=1.0, description="the EMA's half-life grows with the "
                                        "run: this share of the generator steps done, up to ema_decay's "
                                        "half-life (StyleGAN2-ADA's ema_rampup, e.g. 0.05); replaces "
                                        "ema_warmup_steps; null = off")
    lr_decay: Literal["off", "linear", "cosine"] = Field(
        "off", description="learning rates of both networks decay over the run's budget (its steps or its "
        "max_minutes, whichever runs out first): constant until lr_decay_start of it, then down to "
        "lr_decay_final times the rate at the end")
    lr_decay_start: float = Field(0.5, ge=0.0, lt=1.0, description="share of the budget spent before the "
                                  "decay begins")
    lr_decay_final: float = Field(0.0, ge=0.0, le=1.0, description="the rates' multiplier at the budget's end")
    augment: Literal["off", "fixed", "adaptive"] = Field(
        "off", description="audio-safe augmentation of real and generated batches alike (pipeline/train/"
        "augment.py); adaptive (Karras et al. 2020) tunes its probability and is meant for small sets "
        "(a few thousand clips or fewer)")
    augment_p: Optional[float] = Field(None, ge=0.0, le=1.0, description="probability of each transform per "
                                       "sample: the fixed value, or adaptive's start; null = 0.2 fixed, "
                                       "0.0 adaptive")
    augment_p_max: float = Field(0.8, gt=0.0, le=1.0, description="adaptive p never exceeds this: near 1 "
                                 "the masks would leak into what the generator makes")
    augment_target: float = Field(0.6, gt=0.0, lt=1.0, description="adaptive: the E[sign(D(real))] the "
                                  "critic's overfitting heuristic is held at")
    augment_speed: int = Field(20000, ge=1, description="adaptive: real clips seen for p to move by 1.0 "
                               "when the heuristic stays on one side of the target")
    augment_interval: int = Field(4, ge=1, le=10000, description="adaptive: critic steps between updates of p")
    augment_transforms: list[AugmentTransform] = Field(
        default_factory=lambda: list(typing.get_args(AugmentTransform)),
        description="shift: circular time shift; time_mask/freq_mask: a span of frames/rows set to silence "
        "(-1); gain: a random dB offset; never a shift along frequency")
    augment_gain_db: float = Field(6.0, gt=0.0, le=60.0, description="gain offsets are drawn from "
                                   "[-augment_gain_db, +augment_gain_db] dB")
    max_minutes: Optional[float] = Field(None, gt=0.0, le=525600.0, description="wall-clock budget: the run "
                                         "ends cleanly, with a checkpoint, after this many minutes of training")
    threads: Optional[int] = Field(None, ge=1, le=1024, description="intra-op threads on CPU; null = half "
                                   "the cores (1 to 4), which holds up when other processes share the machine")
    checkpoint_every: int = Field(500, ge=1, description="generator steps between checkpoints")
    sample_every: int = Field(500, ge=1, description="generator steps between sample grids")
    artifact_every_s: float = Field(30.0, ge=0.0, description="epoch-end checkpoint, grid and loss plot at most "
                                    "once per this many seconds (short epochs); the last epoch always")
    score_every: Optional[int] = Field(None, ge=1, description="generator steps between the cheap learned-FD "
                                       "score that keeps generator-best.pt; null = no best checkpoint")
    score_clips: int = Field(256, ge=16, le=65536, description="generated clips per periodic score")
    n_samples: int = Field(16, ge=1, le=256, description="fixed latent batch drawn in sample grids")
    max_abs_loss: float = Field(1e4, gt=0.0, description="a loss above this counts as exploding")
    divergence_patience: int = Field(10, ge=1, description="consecutive exploding steps that stop the run")
    progress: bool = True
    prometheus_port: Optional[int] = Field(None, ge=0, le=65535)
    pushgateway: Optional[str] = Field(None, description="host:port of a Prometheus Pushgateway")
    runs: dict[str, StudyRunConfig] = Field(default_factory=dict, description="named runs (--run NAME)")

    @field_validator("augment", "lr_decay", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false: take it for the word it was written as
        return "off" if v is False else v

    @field_validator("augment_transforms")
    @classmethod
    def _transforms(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each transform at most once, got {v}")
        return v

    @model_validator(mode="after")
    def _check_augment(self) -> "TrainConfig":
        if self.augment != "off" and not self.augment_transforms:
            raise ValueError("augment is on but augment_transforms is empty")
        if self.augment == "adaptive" and self.augment_p is not None and self.augment_p > self.augment_p_max:
            raise ValueError(f"augment_p {self.augment_p} exceeds augment_p_max {self.augment_p_max}")
        return self


class TrackingConfig(Section):
    """MLflow. The URI is MLFLOW_TRACKING_URI, else ``uri``, else sqlite:///<cwd>/mlflow.db."""

    uri: Optional[str] = None
    experiment: str = "technogan"
    request_timeout_s: float = Field(10.0, gt=0.0)
    max_backoff_s: float = Field(30.0, gt=0.0, description="longest wait between retries")
    start_timeout_s: float = Field(10.0, ge=0.0, description="how long training waits for a tracking server at "
                                   "run start before going on without it (the run is created when it answers)")
    flush_timeout_s: float = Field(60.0, ge=0.0, description="how long to wait at the end before spooling")
    spool_dir: Optional[str] = Field(None, description="unsent records; null = <cwd>/mlflow-spool")


# ----------------------------------------------------------------------------- serving


class ServeConfig(Section):
    """TorchServe: what ``technogan package`` bakes into the archive (the handler reads it
    from there) and what ``technogan serve`` binds. See serving/ and the README's Serving."""

    port: int = Field(8080, ge=1, le=65531, description="inference port; management port+1, metrics +2, gRPC +3, +4")
    max_n: int = Field(64, ge=1, le=1024, description="most spectrograms one request may ask for")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="larger request bodies get our "
                                "JSON 413 from the handler")
    frontend_max_request_bytes: int = Field(32 << 20, ge=2048, le=1 << 30, description="TorchServe's own "
                                            "max_request_size: bodies up to it reach the handler (and get the JSON "
                                            "413); above it TorchServe answers 413 with an empty body")
    workers: int = Field(1, ge=1, le=64, description="TorchServe workers; each loads the model")
    batch_size: int = Field(8, ge=1, le=256, description="requests TorchServe batches into one handler call")
    max_batch_delay_ms: int = Field(2, ge=0, le=10000, description="how long a batch waits to fill up "
                                    "(a lone request waits all of it)")
    queue_size: int = Field(1000, ge=1, le=100000, description="requests TorchServe queues before it answers 503")
    response_timeout_s: int = Field(120, ge=1, le=3600, description="a worker busier than this is restarted")
    wav_gap_seconds: float = Field(0.5, ge=0.0, le=10.0, description="silence between clips of a wav, mp3 or ogg with n > 1")
    render_iterations: int = Field(16, ge=0, le=1000, description="Griffin-Lim iterations when serving wav")
    render_mel_inverse: Literal["pinv", "nnls"] = Field("nnls", description="mel -> linear inverse when serving wav")
    render_nnls_steps: int = Field(10, ge=0, le=1000, description="NNLS steps when render_mel_inverse is nnls")
    max_seconds: int = Field(60, ge=5, le=600, description="longest long-form piece (the request's seconds) "
                             "one request may ask for")
    json_decimals: int = Field(2, ge=0, le=8, description="dB decimals in json responses (npy is exact)")
    torch_threads: Optional[int] = Field(1, ge=1, le=256, description="per worker: the frontend needs a core "
                                         "too, and oversubscribed threads spin; null = torch's default")

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        if self.frontend_max_request_bytes <= self.max_body_bytes:
            raise ValueError(f"frontend_max_request_bytes ({self.frontend_max_request_bytes}) must be above "
                             f"max_body_bytes ({self.max_body_bytes}), or oversized bodies get TorchServe's "
                             "empty 413 instead of the handler's JSON error")
        return self

    def archived(self) -> dict[str, Any]:
        """The settings the handler reads back from the archive's ``technogan.json`` (not
        the port: an archive does not depend on where it is served)."""
        return self.model_dump(mode="json", exclude={"port"})


# ----------------------------------------------------------------------------- long-form pieces


class LongformConfig(Section):
    """Long-form pieces (``technogan generate --seconds S``, the API's ``seconds``): a walk
    through latent space, one generated window per step, windows overlapped, beat-aligned
    and crossfaded in the mel domain, rendered in overlapping chunks. See pipeline/longform.py."""

    step: float = Field(0.25, ge=0.0, le=1.0, description="how fast the music changes: the distance walked "
                        "along the path of anchor latents per window (1 = a new anchor every window, 0.25 = every "
                        "fourth window, about every 15 s with 5 s windows; 0 = one latent throughout)")
    overlap_seconds: float = Field(1.0, gt=0.0, le=10.0, description="how much consecutive windows overlap "
                                   "(and are crossfaded); with max_shift_seconds under half a window")
    max_shift_seconds: float = Field(0.25, ge=0.0, le=5.0, description="bound on the beat alignment's move of "
                                     "each window (also capped at half a beat of the previous window's tempo)")
    chunk_seconds: float = Field(30.0, ge=1.0, le=600.0, description="audio rendered per Griffin-Lim chunk: "
                                 "bounds memory whatever the piece's length")
    chunk_overlap_seconds: float = Field(0.5, gt=0.0, le=5.0, description="frames one chunk shares with the "
                                         "next (held fixed there, so the two agree sample for sample)")
    min_seconds: float = Field(5.0, gt=0.0, le=3600.0, description="shortest piece generate --seconds takes")
    max_seconds: float = Field(600.0, gt=0.0, le=3600.0, description="longest piece generate --seconds takes")

    @model_validator(mode="after")
    def _check(self) -> "LongformConfig":
        if self.max_shift_seconds >= self.overlap_seconds:
            raise ValueError(f"max_shift_seconds {self.max_shift_seconds} must be below overlap_seconds "
                             f"{self.overlap_seconds}")
        if self.chunk_overlap_seconds * 2 >= self.chunk_seconds:
            raise ValueError(f"chunk_overlap_seconds {self.chunk_overlap_seconds} must be under half of "
                             f"chunk_seconds {self.chunk_seconds}")
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"min_seconds {self.min_seconds} exceeds max_seconds {self.max_seconds}")
        return self


# ----------------------------------------------------------------------------- evaluation


class ListenConfig(Section):
    """``listen.html``, the page ``evaluate`` and ``promote`` log to a run: generated clips,
    a long-form piece and real clips, each with its spectrogram, and the headline scores
    (see pipeline/listen.py). Its cost is the rendering: keep it to a handful of clips."""

    enabled: bool = Field(True, description="build and log listen.html in evaluate and promote")
    clips: int = Field(4, ge=0, le=32, description="generated clips on the page")
    real_clips: int = Field(4, ge=0, le=32, description="real clips of the training set on the page")
    long_seconds: float = Field(30.0, ge=0.0, le=600.0, description="the long-form piece's length (s); 0 = none")
    iterations: int = Field(16, ge=0, le=1000, description="Griffin-Lim iterations for the page's audio")
    format: Literal["mp3", "ogg", "wav"] = Field("mp3", description="the page's audio (compressed keeps it small)")
    seed: int = Field(0, ge=0, description="latents of the clips and the long piece, and which real clips")

    @field_validator("long_seconds")
    @classmethod
    def _long(cls, v: float) -> float:
        if 0 < v < 5:
            raise ValueError(f"must be 0 (no long piece) or at least 5 s (one window), got {v}")
        return v


class EvaluateConfig(Section):
    """Scoring runs (``technogan evaluate``), promoting the best (``technogan promote``)
    and rendering audio from mels (``technogan generate``). See pipeline/evaluate/."""

    n: int = Field(2048, ge=16, le=1_000_000, description="generated clips scored per checkpoint")
    max_real: Optional[int] = Field(None, ge=16, description="cap on real clips used; null = the whole dataset")
    seed: int = Field(0, description="latents, real halves, k-means and encoder initialisation")
    seeds: int = Field(3, ge=1, le=100, description="independent latent draws (seed, seed+1, ...) per checkpoint; "
                       "every metric is reported as their mean and standard deviation")
    ndb_clips: int = Field(512, ge=16, le=1_000_000, description="NDB/K compares this many clips of each side "
                           "(capped at the held-out half and at n): its test power, so the figure, depends on it")
    ceiling: bool = Field(True, description="also score real held-out clips rendered to audio (Griffin-Lim) and "
                          "analysed again: what the renderer alone costs (rendered once per dataset, cached)")
    ceiling_clips: int = Field(512, ge=8, le=100_000, description="held-out clips the ceiling renders, at most")
    batch_size: int = Field(256, ge=1, le=65536, description="clips per generator/encoder forward pass")
    kmeans_k: int = Field(50, ge=2, le=10000, description="NDB/K bins (Richardson & Weiss use 50)")
    kmeans_iters: int = Field(30, ge=1, le=1000)
    ndb_alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance of each bin's two-proportion test")
    kid_subsets: int = Field(50, ge=1, le=10000, description="KID subsets (mean and std are reported)")
    kid_subset_size: int = Field(1000, ge=2, description="capped at the smaller set's size")
    beat_bpm: tuple[float, float] = Field((120.0, 150.0), description="tempo range of a techno beat")
    tempo_search_bpm: tuple[float, float] = Field((80.0, 200.0), description="range the tempo is searched in")
    beat_clarity: float = Field(0.3, gt=0.0, lt=1.0, description="onset autocorrelation at the beat period that counts as a beat")
    encoder_steps: int = Field(150, ge=1, le=100000, description="training steps of the in-project feature encoder (track classifier)")
    encoder_batch_size: int = Field(32, ge=2, le=4096)
    encoder_width: int = Field(16, ge=4, le=512)
    encoder_embed_dim: int = Field(64, ge=4, le=2048)
    encoder_lr: float = Field(2e-3, gt=0.0)
    encoder_dir: Optional[str] = Field(None, description="encoder cache; null = <dataset>/encoders")
    selection_metric: str = Field("eval.fd_learned", description="promote picks the best run by this key")
    registry_model: str = Field("technogan-generator", description="MLflow registered model name")
    champion_alias: str = "champion"
    render_iterations: int = Field(32, ge=0, le=1000, description="Griffin-Lim iterations for WAV output")
    render_mel_inverse: Literal["nnls", "pinv"] = "nnls"
    demo_wavs: int = Field(4, ge=0, le=64, description="clips `technogan run` renders to WAV per champion")
    demo_long_seconds: float = Field(30.0, ge=0.0, le=600.0, description="length (s) of the long-form piece of "
                                     "the champion `technogan run` writes beside its clips; 0 = none")
    listen: ListenConfig = Field(default_factory=ListenConfig)

    @field_validator("beat_bpm", "tempo_search_bpm")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1]:
            raise ValueError(f"must be (low, high) with 0 < low < high, got {v}")
        return v


# ----------------------------------------------------------------------------- run


class RunConfig(Section):
    """A whole run: every stage's section. Loaded from a preset in configs/."""

    name: str = "quickstart"
    out_dir: str = Field("out/quickstart", description="where `technogan run` writes everything")
    mel: MelConfig = Field(default_factory=MelConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    longform: LongformConfig = Field(default_factory=LongformConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_yaml())


def _format_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def _validate(cls, data: Any, where: str):
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, where)) from None


def read_yaml(path: str | os.PathLike, what: str = "file", hint: str = "") -> Any:
    """Parse a YAML (or JSON) file; a missing or malformed file is a ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found{hint}")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e


# The embedded defaults every command uses without --config: the quickstart preset,
# shipped inside the package (pipeline/presets/quickstart.yaml is configs/quickstart.yaml,
# linked), so an installed package without the repository checkout has the same defaults.
DEFAULT_PRESET = Path(__file__).resolve().parent / "presets" / "quickstart.yaml"


def preset_path(name: str) -> Path:
    """A preset by file path, or by the name of one packaged beside the embedded defaults."""
    p = Path(name)
    if p.is_file():
        return p
    packaged = DEFAULT_PRESET.parent / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(f.stem for f in DEFAULT_PRESET.parent.glob("*.yaml")))
    raise ConfigError(f"preset {name!r}: no such file, nor a packaged preset (packaged: {known})")


# what a recipe preset brings to a named run; the rest (mel, tracking, serving, where the
# data and outputs live) stays the running config's
_RECIPE_KEEPS = {"train": ("dataset", "out_dir", "progress", "runs", "prometheus_port", "pushgateway", "device")}


def named_run(config: RunConfig, name: str, where: str = "the config") -> RunConfig:
    """``config`` set up for its named run ``name`` (``train.runs``); ConfigError listing the known names."""
    runs = config.train.runs
    if name not in runs:
        raise ConfigError(f"{where}: no run {name!r} under train.runs (known: {', '.join(runs) or 'none'})")
    r = runs[name]
    data = config.model_dump(mode="json")
    if r.preset:
        recipe = load_config(preset_path(r.preset)).model_dump(mode="json")
        for section in ("model", "data", "train"):
            keep = {k: data[section][k] for k in _RECIPE_KEEPS.get(section, ())}
            data[section] = {**recipe[section], **keep}
    for section, key, value in (("model", "name", r.model), ("train", "epochs", r.epochs),
                                ("data", "max_samples", r.max_samples), ("train", "max_minutes", r.max_minutes)):
        if value is not None:
            data[section][key] = value
    return _validate(RunConfig, _apply(data, r.overrides, where), f"{where}: train.runs.{name}")


def add_config_argument(p: argparse.ArgumentParser, what: str = "") -> None:
    """The ``--config`` option of every command: one default for all of them."""
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"YAML preset{' ' + what if what else ''} (default: the embedded defaults, "
                        "identical to configs/quickstart.yaml)")


def config_from_args(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The config a command runs with: ``--config`` (else the embedded defaults) plus ``overrides``."""
    return load_config(getattr(args, "config", None), overrides)


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML preset (or the embedded defaults, the quickstart preset, when ``path`` is
    None), apply dotted-key ``overrides`` (``{"data.max_samples": 100}``) and validate everything."""
    where = str(path) if path is not None else "<defaults>"
    loaded = read_yaml(path if path is not None else DEFAULT_PRESET, "config file")
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(loaded).__name__}")
    return _validate(RunConfig, _apply(loaded, overrides, where), where)


def override(config: RunConfig, overrides: dict[str, Any], where: str = "<overrides>") -> RunConfig:
    """``config`` with dotted-key ``overrides`` applied (None values skipped), validated again."""
    return _validate(RunConfig, _apply(config.model_dump(mode="json"), overrides, where), where)


def _apply(data: dict[str, Any], overrides: dict[str, Any] | None, where: str) -> dict[str, Any]:
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key}: cannot override inside a non-mapping")
        node[parts[-1]] = value
    return data
