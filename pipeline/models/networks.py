"""The generators and discriminators/critics of the study, layer for layer as its figures.

Every network is one ``nn.Sequential`` of leaf layers whose types, in order, are the
rows of its figure (``Conv2d-1``, ``LeakyReLU-2``, ...); ``FIGURES`` holds those rows
and the tests compare against them. Widths, dropout rates and the latent size are
config (``ModelConfig``). The model resolution R (a power of two, 32..256) changes
only the kernel of the first generator layer and of the last critic layer:

* the generator's first ConvTranspose2d turns the latent [B, Z, 1, 1] into an
  [R/2^k, R/2^k] map (kernel R/2^k, stride 1), then k stride-2 layers double it to R;
* the critic's first convolutions halve R k times and its last Conv2d has kernel
  R/2^k, stride 1, so it sees the whole remaining map and outputs one number.

k is 4 for DCGAN1 (five generator/critic convolutions) and 3 for the others.

Interfaces: a generator takes z of shape [B, latent_dim] (canonical) or
[B, latent_dim, 1, 1] and returns [B, 1, R, R] in [-1, 1] (Tanh). A critic takes
[B, 1, R, R] and returns [B]: a probability for the DCGANs (Sigmoid), an unbounded
score for the WGANs.

Options (off by default, so the figures hold) sit around ``net``, never inside it:
spectral normalisation reparametrises the critic's convolutions in place
(``apply_spectral_norm``), per-bin normalisation adds a fixed affine layer at the
critic's input (``BinStandardize``) and at the generator's output (``BinDenormalize``),
and the time branches (``TimeCritic``, ``TimeGenerator``) add a second path beside ``net``
whose output is summed with the figure's before its last activation.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

# the supported resolutions are stated once, in the config (re-exported here for callers)
from pipeline.config import MAX_RESOLUTION, MIN_RESOLUTION, ModelConfig, resolution_problem  # noqa: F401
from pipeline.errors import UserError

# The figures of the study, row by row (layer type names without the index).
FIGURES: dict[str, list[str]] = {
    "figure1": ["Conv2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Dropout", "Conv2d", "BatchNorm2d",
                "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d", "Sigmoid"],
    "figure2": ["ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "BatchNorm2d", "ReLU",
                "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "BatchNorm2d", "ReLU",
                "ConvTranspose2d", "Tanh"],
    "figure3": ["Conv2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Dropout", "Conv2d", "BatchNorm2d",
                "LeakyReLU", "Dropout", "Conv2d", "Sigmoid"],
    "figure4": ["ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "BatchNorm2d", "ReLU", "Dropout",
                "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "Tanh"],
    "figure5": ["Conv2d", "LeakyReLU", "Conv2d", "InstanceNorm2d", "LeakyReLU", "Dropout", "Conv2d",
                "InstanceNorm2d", "LeakyReLU", "Dropout", "Conv2d"],
    "figure6": ["ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "BatchNorm2d", "ReLU", "Dropout",
                "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "Tanh"],
}


def check_resolution(resolution: int, halvings: int = 4) -> int:
    """The bottleneck side R / 2^halvings; raises UserError for an unsupported R."""
    r = int(resolution)
    problem = resolution_problem(r)
    if problem:
        raise UserError(f"model resolution {problem}")
    return r >> halvings


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    # kernel 4, stride 2, padding 1 doubles the side exactly: (H-1)*2 - 2 + 4 = 2H
    return nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)


def _down(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    # kernel 4, stride 2, padding 1 halves the side exactly
    return nn.Conv2d(cin, cout, 4, 2, 1, bias=bias)


# per_bin normalisation maps the generator's Tanh output y in [-1, 1] to mean + SCALE_STDS * std * y:
# three standard deviations cover about 99.7% of a normally spread bin's real values
SCALE_STDS = 3.0
MIN_SCALE = 1e-2  # a (nearly) constant row, e.g. always silent, still gets a usable range


class _BinAffine(nn.Module):
    """A fixed (non-trainable) per-row affine map of mels [B, 1, R, R]; rows are mel bins."""

    mean: torch.Tensor  # [R] buffer
    scale: torch.Tensor  # [R] buffer

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        mean, scale = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
        if mean.dim() != 1 or mean.shape != scale.shape:
            raise ValueError(f"per-bin mean and scale must be two vectors of one length, got "
                             f"{list(mean.shape)} and {list(scale.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("per-bin mean must be finite and scale finite and positive")
        self.register_buffer("mean", mean.clone())  # [R]
        self.register_buffer("scale", scale.clone())  # [R]

    def _rows(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.to(x.dtype).reshape(1, 1, -1, 1)  # [R] -> [1, 1, R, 1], broadcast over frames


class BinStandardize(_BinAffine):
    """The critic's input layer: x -> (x - mean[row]) / scale[row]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._rows(self.mean, x)) / self._rows(self.scale, x)


class BinDenormalize(_BinAffine):
    """The generator's output layer: y -> clamp(mean[row] + scale[row] * y, -1, 1), the dataset's space."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (self._rows(self.mean, y) + self._rows(self.scale, y) * y).clamp(-1.0, 1.0)


class Generator(nn.Module):
    """z [B, Z] or [B, Z, 1, 1] -> mel [B, 1, R, R] in [-1, 1]. ``net`` is the figure's sequence;
    ``time_branch`` (``TimeGenerator``, else None) adds its frames to ``net``'s before the Tanh;
    ``denorm`` (per_bin normalisation, else None) maps the output back to the dataset's space."""

    def __init__(self, net: nn.Sequential, latent_dim: int, resolution: int):
        super().__init__()
        self.net = net
        self.latent_dim = latent_dim
        self.resolution = resolution
        self.time_branch: TimeGenerator | None = None
        self.denorm: BinDenormalize | None = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]  # [B, Z] -> [B, Z, 1, 1]
        if self.time_branch is None:
            y = self.net(z)  # [B, 1, R, R]
        else:
            y = self.net[-1](self.net[:-1](z) + self.time_branch(z))  # the figure's Tanh over the sum
        return y if self.denorm is None else self.denorm(y)


class Critic(nn.Module):
    """mel [B, 1, R, R] -> [B] (probability for DCGANs, score for WGANs). ``net`` is the figure's
    sequence; ``standardize`` (per_bin normalisation, else None) comes before it; ``time_branch``
    (``TimeCritic``, else None) adds its score to ``net``'s, before the Sigmoid if there is one."""

    def __init__(self, net: nn.Sequential, resolution: int):
        super().__init__()
        self.net = net
        self.resolution = resolution
        self.standardize: BinStandardize | None = None
        self.time_branch: TimeCritic | None = None
        self.rhythm_branch: RhythmCritic | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize is not None:
            x = self.standardize(x)
        branches = [b for b in (self.time_branch, self.rhythm_branch) if b is not None]
        if not branches:
            return self.net(x).reshape(x.shape[0])  # [B, 1, 1, 1] -> [B]
        sigmoid = isinstance(self.net[-1], nn.Sigmoid)
        body = self.net[:-1] if sigmoid else self.net
        score = body(x).reshape(x.shape[0])  # [B]
        for branch in branches:
            score = score + branch(x)
        return torch.sigmoid(score) if sigmoid else score


class TimeCritic(nn.Module):
    """[B, 1, R, R] -> [B]: a critic path that reads each frame's whole spectrum at once.

    The figures' critics see 4x4 patches and combine distant frames only linearly, in
    their last layer; a beat is a relation between frames (an onset across most bands,
    repeated every ~5.5 frames at 64 frames per clip). Here mel bins are the channels of
    1D convolutions along time, so every feature spans all bands and the deepest ones
    compare about two beats (a receptive field of 12 frames) before the last layer
    weighs them over the clip."""

    def __init__(self, resolution: int, width: int, slope: float):
        super().__init__()
        r, c = resolution, width
        self.net = nn.Sequential(
            nn.Conv1d(r, c, 3, 1, 1, bias=True), nn.LeakyReLU(slope, inplace=True),   # [B, c, T]
            nn.Conv1d(c, c, 4, 2, 1, bias=True), nn.LeakyReLU(slope, inplace=True),   # [B, c, T/2]
            nn.Conv1d(c, c, 4, 2, 1, bias=True), nn.LeakyReLU(slope, inplace=True),   # [B, c, T/4]
            nn.Conv1d(c, 1, r // 4, 1, 0, bias=False),                                # [B, 1, 1]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, 0]).reshape(x.shape[0])  # [B, 1, M, T] -> [B, M, T] -> [B]


class RhythmCritic(nn.Module):
    """[B, 1, R, R] -> [B]: a critic path that scores the clip's rhythm from a fixed description of it.

    Convolutions see a beat only as a pattern at some position; its periodicity (onsets
    every ~6 frames wherever the bar starts) is what techno has and noise lacks. Here the
    onsets (each frame's rise over the previous one, averaged over ``bands`` equal groups of
    mel rows, low to high, so a kick and a hi-hat count apart; ``onset_envelope`` of the
    evaluation is the same rise, in dB and over all rows at once) are reduced to their autocorrelation at every lag up to
    half the clip, normalised by lag 0 and so blind to where the beats fall and to their
    loudness (given beside it, as a log). Three layers score that; the gradient reaches the
    generator through the same arithmetic, so it is told how regular its onsets are."""

    def __init__(self, resolution: int, width: int, slope: float, bands: int = 4):
        super().__init__()
        if resolution % bands:
            raise ValueError(f"the rhythm branch needs mel rows divisible by {bands}, got {resolution}")
        self.bands, lags = bands, resolution // 2
        # 1-wide convolutions are dense layers that the DCGAN initialisation and spectral norm already cover
        self.net = nn.Sequential(
            nn.Conv1d(bands, width, lags + 1, 1, 0, bias=True), nn.LeakyReLU(slope, inplace=True),  # [B, c, 1]
            nn.Conv1d(width, width, 1, 1, 0, bias=True), nn.LeakyReLU(slope, inplace=True),       # [B, c, 1]
            nn.Conv1d(width, 1, 1, 1, 0, bias=False),                                              # [B, 1, 1]
        )

    def describe(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, M, T] -> [B, bands, T/2 + 1] (``rhythm_description``)."""
        return rhythm_description(x, self.bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.describe(x)).reshape(x.shape[0])  # [B, K, T/2+1] -> [B]


def rhythm_description(x: torch.Tensor, bands: int = 4) -> torch.Tensor:
    """[B, 1, M, T] -> [B, bands, T/2 + 1]: per band of mel rows, the log onset energy, then the
    onsets' autocorrelation at lags 1 .. T/2 normalised by lag 0 (``RhythmCritic`` says why)."""
    m = x[:, 0].float()  # [B, M, T]; the FFT and the ratio in float32 under any autocast
    b, rows, t = m.shape
    rise = torch.relu(m[:, :, 1:] - m[:, :, :-1])  # [B, M, T-1]
    env = rise.reshape(b, bands, rows // bands, t - 1).mean(2)  # [B, K, T-1]
    env = env - env.mean(-1, keepdim=True)
    n = 2 * (t - 1)  # zero-padded: lags do not wrap around the clip
    spec = torch.fft.rfft(env, n=n)
    acf = torch.fft.irfft(spec.real.square() + spec.imag.square(), n=n)[..., : t // 2 + 1]  # [B, K, T/2+1]
    energy = acf[..., :1]  # [B, K, 1]
    return torch.cat([torch.log(energy / (t - 1) + 1e-4), acf[..., 1:] / (energy + 1e-2)], dim=-1)


class TimeGenerator(nn.Module):
    """z [B, Z, 1, 1] -> [B, 1, R, R], added to the figure generator's output before its Tanh:
    a path that makes whole frames (mel bins as the channels of 1D transposed convolutions
    along time), so an onset across all bands is one feature rather than R/8 cells of the
    2D map agreeing."""

    def __init__(self, latent_dim: int, resolution: int, width: int):
        super().__init__()
        r, c = resolution, width
        self.net = nn.Sequential(
            nn.ConvTranspose1d(latent_dim, c, r // 8, 1, 0, bias=False), nn.BatchNorm1d(c), nn.ReLU(True),  # [B, c, T/8]
            nn.ConvTranspose1d(c, c, 4, 2, 1, bias=False), nn.BatchNorm1d(c), nn.ReLU(True),  # [B, c, T/4]
            nn.ConvTranspose1d(c, c, 4, 2, 1, bias=False), nn.BatchNorm1d(c), nn.ReLU(True),  # [B, c, T/2]
            nn.ConvTranspose1d(c, c, 4, 2, 1, bias=False), nn.BatchNorm1d(c), nn.ReLU(True),  # [B, c, T]
            nn.Conv1d(c, r, 1, 1, 0, bias=False),                                            # [B, M, T]
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[..., 0])[:, None]  # [B, Z, 1, 1] -> [B, Z, 1] -> [B, M, T] -> [B, 1, M, T]


def add_time_branch(module: Generator | Critic, width: int, slope: float = 0.2) -> None:
    """Give a generator a ``TimeGenerator`` or a critic a ``TimeCritic`` of ``width`` channels
    (before initialisation and spectral normalisation, which then cover it)."""
    if isinstance(module, Generator):
        module.time_branch = TimeGenerator(module.latent_dim, module.resolution, width)
    else:
        module.time_branch = TimeCritic(module.resolution, width, slope)


def add_rhythm_branch(critic: Critic, width: int, slope: float = 0.2) -> None:
    """Give a critic a ``RhythmCritic`` of ``width`` channels (before initialisation and
    spectral normalisation, which then cover it)."""
    critic.rhythm_branch = RhythmCritic(critic.resolution, width, slope)


def bin_scale(std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """The per_bin scale of each row from its standard deviation: SCALE_STDS std, at least MIN_SCALE."""
    return (SCALE_STDS * torch.as_tensor(std, dtype=torch.float32)).clamp(min=MIN_SCALE)


def add_bin_normalization(module: Generator | Critic, mean: Sequence[float] | torch.Tensor,
                          scale: Sequence[float] | torch.Tensor) -> None:
    """Attach per_bin normalisation (fixed buffers ``mean``, ``scale`` of length R) to a generator
    (output layer) or critic (input layer)."""
    n = len(mean)
    if n != module.resolution:
        raise ValueError(f"per-bin statistics have {n} rows, the network works at resolution {module.resolution}")
    if isinstance(module, Generator):
        module.denorm = BinDenormalize(torch.as_tensor(mean), torch.as_tensor(scale))
    else:
        module.standardize = BinStandardize(torch.as_tensor(mean), torch.as_tensor(scale))


def normalization_meta(generator: nn.Module) -> dict[str, Any]:
    """The checkpoint meta's ``normalization`` of a (possibly DDP-wrapped) generator:
    {"kind": "none"} or {"kind": "per_bin", "mean": [R floats], "scale": [R floats]}."""
    g = getattr(generator, "module", generator)
    denorm = getattr(g, "denorm", None)
    if denorm is None:
        return {"kind": "none"}
    return {"kind": "per_bin", "mean": [float(v) for v in denorm.mean.cpu()],
            "scale": [float(v) for v in denorm.scale.cpu()]}


def apply_spectral_norm(critic: nn.Module) -> int:
    """Spectral normalisation (Miyato et al. 2018) on every convolution of ``critic`` (the time
    branch's too); returns how many."""
    convs = [m for m in critic.modules() if isinstance(m, (nn.Conv2d, nn.Conv1d))]
    for m in convs:
        nn.utils.parametrizations.spectral_norm(m)
    return len(convs)


class MinibatchStd(nn.Module):
    """Appends one channel: the standard deviation of the features across a group of clips
    of the batch, averaged to one number per group (ProGAN's minibatch standard deviation).
    Groups of ``group`` clips when the batch divides into them, else the whole batch."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.group if b % self.group == 0 else b
        if g < 2:  # a single clip has no spread: a zero channel keeps the shape
            return torch.cat([x, x.new_zeros(b, 1, h, w)], dim=1)
        y = x.reshape(g, b // g, c, h, w)  # [G, B/G, C, H, W]: clip i of each group is i, i + B/G, ...
        spread = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [B/G]
        return torch.cat([x, spread.repeat(g).reshape(b, 1, 1, 1).expand(b, 1, h, w)], dim=1)  # [B, C+1, H, W]


def add_minibatch_std(critic: Critic, group: int = 4) -> None:
    """Give ``critic``'s last convolution the minibatch spread as one more input channel
    (before initialisation and spectral normalisation, which then cover it)."""
    layers = list(critic.net)
    i = max(j for j, m in enumerate(layers) if isinstance(m, nn.Conv2d))
    last = layers[i]
    assert isinstance(last, nn.Conv2d)
    wider = nn.Conv2d(last.in_channels + 1, last.out_channels, last.kernel_size,  # type: ignore[arg-type]
                      last.stride, last.padding, bias=last.bias is not None)  # type: ignore[arg-type]
    critic.net = nn.Sequential(*layers[:i], MinibatchStd(group), wider, *layers[i + 1:])


class ResizeConv(nn.Sequential):
    """[B, cin, H, W] -> [B, cout, 2H, 2W] like the figures' stride-2 ConvTranspose2d, as
    nearest-neighbour upsampling then a 3x3 convolution: every output pixel gets the same
    number of kernel taps, so there is no checkerboard to unlearn (Odena et al. 2016)."""

    def __init__(self, cin: int, cout: int, bias: bool = False):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1, bias=bias))


def use_resize_convolutions(generator: Generator) -> int:
    """Replace each stride-2 ConvTranspose2d of ``generator.net`` by a ``ResizeConv`` with the
    same channels (before initialisation); the first, latent-to-map layer stays. Returns how many."""
    layers, n = list(generator.net), 0
    for i, m in enumerate(layers):
        if isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2):
            layers[i] = ResizeConv(m.in_channels, m.out_channels, bias=m.bias is not None)
            n += 1
    generator.net = nn.Sequential(*layers)
    return n


def _finite_vector(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def normalization_problem(norm: Any, resolution: int) -> str | None:
    """Why a checkpoint's ``normalization`` meta cannot be rebuilt (None when it can)."""
    if not isinstance(norm, dict) or norm.get("kind") not in ("none", "per_bin"):
        return f"must be {{'kind': 'none'}} or {{'kind': 'per_bin', 'mean': [...], 'scale': [...]}}, got {norm!r}"
    if norm["kind"] == "none":
        return None if set(norm) == {"kind"} else f"kind none takes no other keys, got {sorted(norm)}"
    if set(norm) != {"kind", "mean", "scale"}:
        return f"kind per_bin needs exactly kind, mean and scale, got {sorted(norm)}"
    for key in ("mean", "scale"):
        if not _finite_vector(norm[key], resolution):
            return f"{key} must be a list of {resolution} finite numbers (one per row at resolution {resolution})"
    if min(norm["scale"]) <= 0:
        return "scale must be positive"
    return None


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al.): conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv1d, nn.ConvTranspose1d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.BatchNorm1d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- DCGAN1 (Figures 1, 2)


def dcgan1_discriminator(cfg: ModelConfig, resolution: int) -> Critic:
    """Figure 1: four stride-2 convolutions (R -> R/16), a last conv over the R/16 map, Sigmoid."""
    k = check_resolution(resolution, 4)
    w, s = cfg.d_width, cfg.leaky_slope
    net = nn.Sequential(
        _down(1, w, bias=True), nn.LeakyReLU(s, inplace=True),                               # [B, w, R/2, R/2]
        _down(w, 2 * w), nn.BatchNorm2d(2 * w), nn.LeakyReLU(s, inplace=True),
        nn.Dropout(cfg.d_dropout),                                                           # [B, 2w, R/4, R/4]
        _down(2 * w, 4 * w), nn.BatchNorm2d(4 * w), nn.LeakyReLU(s, inplace=True),           # [B, 4w, R/8, R/8]
        _down(4 * w, 8 * w), nn.BatchNorm2d(8 * w), nn.LeakyReLU(s, inplace=True),           # [B, 8w, R/16, R/16]
        nn.Conv2d(8 * w, 1, k, 1, 0, bias=False), nn.Sigmoid(),                               # [B, 1, 1, 1]
    )
    return Critic(net, resolution)


def dcgan1_generator(cfg: ModelConfig, resolution: int) -> Generator:
    """Figure 2: latent -> R/16 map, four stride-2 transposed convolutions up to R, Tanh."""
    k = check_resolution(resolution, 4)
    w, z = cfg.g_width, cfg.latent_dim
    net = nn.Sequential(
        nn.ConvTranspose2d(z, 8 * w, k, 1, 0, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU(True),  # [B, 8w, R/16, R/16]
        _up(8 * w, 4 * w), nn.BatchNorm2d(4 * w), nn.ReLU(True),                                 # [B, 4w, R/8, R/8]
        _up(4 * w, 2 * w), nn.BatchNorm2d(2 * w), nn.ReLU(True),                                 # [B, 2w, R/4, R/4]
        _up(2 * w, w), nn.BatchNorm2d(w), nn.ReLU(True),                                         # [B, w, R/2, R/2]
        _up(w, 1), nn.Tanh(),                                                                    # [B, 1, R, R]
    )
    return Generator(net, z, resolution)


# ----------------------------------------------------------------------------- DCGAN2 (Figures 3, 4), WGANs (5, 6)


def _three_block_critic(cfg: ModelConfig, resolution: int, norm: type[nn.Module], sigmoid: bool) -> Critic:
    """Figures 3 and 5: three stride-2 convolutions (R -> R/8), a last conv over the R/8 map."""
    k = check_resolution(resolution, 3)
    w, s = cfg.d_width, cfg.leaky_slope

    def _norm(c: int) -> nn.Module:
        # the WGAN-GP critic must not mix samples of a batch (the penalty is per sample),
        # hence InstanceNorm there; affine so it has the same capacity as BatchNorm
        return norm(c, affine=True) if norm is nn.InstanceNorm2d else norm(c)

    layers: list[nn.Module] = [
        _down(1, w, bias=True), nn.LeakyReLU(s, inplace=True),                               # [B, w, R/2, R/2]
        _down(w, 2 * w), _norm(2 * w), nn.LeakyReLU(s, inplace=True), nn.Dropout(cfg.d_dropout),  # [B, 2w, R/4, R/4]
        _down(2 * w, 4 * w), _norm(4 * w), nn.LeakyReLU(s, inplace=True), nn.Dropout(cfg.d_dropout),  # [B, 4w, R/8, R/8]
        # no bias: it cancels in E f(x) - E f(G(z)), so a WGAN critic could never learn it
        nn.Conv2d(4 * w, 1, k, 1, 0, bias=False),                                              # [B, 1, 1, 1]
    ]
    if sigmoid:
        layers.append(nn.Sigmoid())
    return Critic(nn.Sequential(*layers), resolution)


def _three_block_generator(cfg: ModelConfig, resolution: int) -> Generator:
    """Figures 4 and 6: latent -> R/8 map, three stride-2 transposed convolutions up to R, Tanh."""
    k = check_resolution(resolution, 3)
    w, z = cfg.g_width, cfg.latent_dim
    net = nn.Sequential(
        nn.ConvTranspose2d(z, 4 * w, k, 1, 0, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(True),  # [B, 4w, R/8, R/8]
        _up(4 * w, 2 * w), nn.BatchNorm2d(2 * w), nn.ReLU(True), nn.Dropout(cfg.g_dropout),      # [B, 2w, R/4, R/4]
        _up(2 * w, w), nn.BatchNorm2d(w), nn.ReLU(True),                                         # [B, w, R/2, R/2]
        _up(w, 1), nn.Tanh(),                                                                    # [B, 1, R, R]
    )
    return Generator(net, z, resolution)


def dcgan2_discriminator(cfg: ModelConfig, resolution: int) -> Critic:
    """Figure 3 (BatchNorm, Sigmoid)."""
    return _three_block_critic(cfg, resolution, nn.BatchNorm2d, sigmoid=True)


def dcgan2_generator(cfg: ModelConfig, resolution: int) -> Generator:
    """Figure 4."""
    return _three_block_generator(cfg, resolution)


def wgan_critic(cfg: ModelConfig, resolution: int) -> Critic:
    """Figure 5 (InstanceNorm, no Sigmoid: the critic outputs an unbounded score)."""
    return _three_block_critic(cfg, resolution, nn.InstanceNorm2d, sigmoid=False)


def wgan_generator(cfg: ModelConfig, resolution: int) -> Generator:
    """Figure 6 (the same sequence as Figure 4)."""
    return _three_block_generator(cfg, resolution)


def layer_name(m: nn.Module) -> str:
    """A layer's type name as the figures write it (a spectrally normalised Conv2d is a Conv2d)."""
    cls = type(m)
    if parametrize.is_parametrized(m):
        cls = cls.__mro__[1]  # torch subclasses the layer's class as Parametrized<Name>
    return cls.__name__


def leaf_layers(module: nn.Module) -> list[nn.Module]:
    """The layers of ``module.net`` (or ``module``) in forward order, a parametrised layer counting as one."""
    net: nn.Module = getattr(module, "net", module)
    leaves: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if parametrize.is_parametrized(m) or not list(m.children()):
            leaves.append(m)
            return
        for child in m.children():
            walk(child)

    walk(net)
    return leaves


def layer_types(module: nn.Module) -> list[str]:
    """Type names of the leaf layers in forward order, as the figures list them."""
    return [layer_name(m) for m in leaf_layers(module)]
