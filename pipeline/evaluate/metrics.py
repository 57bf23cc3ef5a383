"""Metrics between a reference set of real clips and a candidate set (generated clips,
or the other half of the real data for the real-vs-real baseline), registered by name.

Every metric is a function ``(ref: ClipSet, cand: ClipSet, ctx: MetricContext) ->
{key: number}``. ``evaluate`` calls each twice, with the generated clips and with the
held-out real half, so each number comes with the value real data itself reaches:

* ``fd_hand``, ``fd_learned``: Fréchet distance between Gaussians fitted to the
  hand-made features (standardised by the reference's mean and spread) and to the
  in-project encoder's embeddings. Lower is better.
* ``kid_hand``, ``kid_learned`` (+ ``_std``): kernel inception distance, the unbiased
  MMD^2 estimate with the cubic polynomial kernel ``(x.y / d + 1)^3``, averaged over
  random subsets (Binkowski et al. 2018). Near 0 for equal distributions.
* ``inception_score``: ``exp E_x KL(p(y|x) || p(y))`` from the encoder's track
  classifier: high when clips are each clearly one track and all tracks appear.
* ``ndb_k``, ``ndb_js``: Richardson & Weiss (2018): k-means bins on the reference's
  mels; NDB/K is the share of bins whose candidate proportion differs significantly
  (two-proportion z-test) from the reference's; JS divergence (base 2) of the two bin
  histograms. A collapsed generator fills one bin and leaves the rest empty. The test's
  power grows with the clips counted (the same weights read 0.32 at 1,024 generated
  clips and 0.60 at 2,048), so both sides are counted on a fixed number of clips
  (``MetricContext.ndb_clips``, drawn with the context's seed); bins are fitted on the
  whole reference.
* ``memo_nn_ratio``, ``memo_copy_share``: distance (RMS over pixels) of each candidate
  clip to its nearest reference ("training") clip, as the ratio of medians against the
  held-out real clips' own nearest distances, and the share of candidates nearer than
  the held-out clips' 5th percentile. Ratio well below 1 suggests copying.
* ``beat_share``, ``tempo_median``, ``tempo_js``: share of clips with a clear beat at
  a techno tempo (see ``pipeline.evaluate.features.beat_analysis``), their median tempo,
  and the JS divergence of the tempo histograms (5 BPM bins) against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import stats

from pipeline.config import EvaluateConfig, MelConfig

# ----------------------------------------------------------------------------- data


@dataclass
class ClipSet:
    """One set of clips and everything computed from them once."""

    name: str
    mels: np.ndarray  # [N, R, R] normalised, float32
    hand: np.ndarray  # [N, D_h] hand-made features (raw; metrics standardise them)
    embed: np.ndarray  # [N, D_e] encoder embeddings
    probs: np.ndarray  # [N, C] encoder class probabilities
    tempo: np.ndarray  # [N] BPM
    clarity: np.ndarray  # [N] beat clarity

    def __len__(self) -> int:
        return len(self.mels)


@dataclass
class MetricContext:
    """What metrics share: settings, the held-out real half, seeds, and a cache of
    reference-side work (k-means centres, feature scaling) reused across candidates."""

    config: EvaluateConfig
    mel_config: MelConfig
    held_out: ClipSet
    seed: int = 0
    cache: dict = field(default_factory=dict)
    ndb_clips: int | None = None  # clips per side NDB counts; None: config.ndb_clips capped at the held-out half

    def ndb_count(self, ref: ClipSet, cand: ClipSet) -> int:
        """Clips NDB/K counts on each side: fixed, so figures compare across set sizes."""
        m = self.ndb_clips if self.ndb_clips is not None else min(self.config.ndb_clips, len(self.held_out))
        return max(1, min(m, len(ref), len(cand)))

    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[ClipSet, ClipSet, MetricContext], dict[str, float]]
    higher_is_better: frozenset[str]  # result keys where more is better (the rest: less)
    description: str


METRICS: dict[str, Metric] = {}


def register(name: str, higher_is_better: tuple[str, ...] = (), description: str = ""):
    """Decorator: add a metric function to ``METRICS`` under ``name``."""

    def wrap(fn):
        METRICS[name] = Metric(name, fn, frozenset(higher_is_better), description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def higher_is_better(key: str) -> bool:
    """Direction of a result key (``fd_learned``, or ``eval.fd_learned``)."""
    bare = key.split(".")[-1]
    return any(bare in m.higher_is_better for m in METRICS.values())


def compute_all(ref: ClipSet, cand: ClipSet, ctx: MetricContext, names: list[str] | None = None) -> dict[str, float]:
    """Every registered metric (or ``names``) of ``cand`` against ``ref``, merged."""
    out: dict[str, float] = {}
    for name in names or list(METRICS):
        out.update({k: float(v) for k, v in METRICS[name].fn(ref, cand, ctx).items()})
    return out


# ----------------------------------------------------------------------------- Fréchet distance


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, the Fréchet (2-Wasserstein)
    distance between two Gaussians. ``Tr (S1 S2)^(1/2)`` is computed as the sum of
    square roots of the eigenvalues of ``S1^(1/2) S2 S1^(1/2)`` (symmetric PSD), which
    is stable where ``scipy.linalg.sqrtm(S1 @ S2)`` returns complex noise."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(s1).astype(np.float64), np.atleast_2d(s2).astype(np.float64)
    r1 = _sqrt_psd(s1)
    middle = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt, 0.0))


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of samples [N, D]."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to samples ``x`` [N, D] and ``y`` [M, D]."""
    return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))


# ----------------------------------------------------------------------------- KID


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (diagonals left out)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(x: np.ndarray, y: np.ndarray, subsets: int, subset_size: int,
                              rng: np.random.Generator) -> tuple[float, float]:
    """(mean, std) of unbiased MMD^2 over ``subsets`` random subsets of each set."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    size = max(2, min(subset_size, len(x), len(y)))
    values = [mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------- k-means / NDB


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding: centres [k, D] of samples [N, D]."""
    x = np.asarray(x, np.float64)
    k = min(k, len(x))
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
        centres.append(x[rng.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(axis=1))
    c = np.stack(centres)
    for _ in range(iters):
        labels = assign(x, c)
        new = np.stack([x[labels == j].mean(axis=0) if np.any(labels == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for each row of ``x``."""
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(1)[None, :]
    return d2.argmin(axis=1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms (normalised here)."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return 1.0 if p.sum() != q.sum() else 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0

    def kl(a, b):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def ndb(ref_counts: np.ndarray, cand_counts: np.ndarray, alpha: float) -> tuple[float, float]:
    """(NDB/K, JS) from per-bin counts: a pooled two-proportion z-test per bin."""
    n1, n2 = ref_counts.sum(), cand_counts.sum()
    p1, p2 = ref_counts / n1, cand_counts / n2
    pooled = (ref_counts + cand_counts) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = np.divide(np.abs(p1 - p2), se, out=np.zeros_like(se, dtype=np.float64), where=se > 0)
    p_values = 2.0 * stats.norm.sf(z)
    different = (p_values < alpha) & (se > 0)
    return float(different.mean()), js_divergence(ref_counts, cand_counts)


# ----------------------------------------------------------------------------- registered metrics


def _flat(mels: np.ndarray) -> np.ndarray:
    return np.asarray(mels, np.float64).reshape(len(mels), -1)


def _standardise(ref: ClipSet, cand: ClipSet, ctx: MetricContext) -> tuple[np.ndarray, np.ndarray]:
    # hand features mix units (dB levels, ratios, BPM/200): scale each by the
    # reference's spread so no single column dominates the distances
    key = ("hand_scale", id(ref))
    if key not in ctx.cache:
        mu, sd = ref.hand.mean(axis=0), ref.hand.std(axis=0)
        ctx.cache[key] = (mu, np.where(sd > 1e-8, sd, 1.0))
    mu, sd = ctx.cache[key]
    return (ref.hand - mu) / sd, (cand.hand - mu) / sd


@register("fd_hand", description="Fréchet distance on standardised hand-made features")
def _fd_hand(ref, cand, ctx):
    a, b = _standardise(ref, cand, ctx)
    return {"fd_hand": frechet_distance(a, b)}


@register("fd_learned", description="Fréchet distance on the in-project encoder's embeddings")
def _fd_learned(ref, cand, ctx):
    return {"fd_learned": frechet_distance(ref.embed, cand.embed)}


@register("kid_hand", description="KID (unbiased, cubic polynomial kernel) on standardised hand-made features")
def _kid_hand(ref, cand, ctx):
    a, b = _standardise(ref, cand, ctx)
    mean, std = kernel_inception_distance(a, b, ctx.config.kid_subsets, ctx.config.kid_subset_size, ctx.rng(1))
    return {"kid_hand": mean, "kid_hand_std": std}


@register("kid_learned", description="KID (unbiased, cubic polynomial kernel) on encoder embeddings")
def _kid_learned(ref, cand, ctx):
    mean, std = kernel_inception_distance(ref.embed, cand.embed, ctx.config.kid_subsets,
                                          ctx.config.kid_subset_size, ctx.rng(2))
    return {"kid_learned": mean, "kid_learned_std": std}


def inception_score(probs: np.ndarray) -> float:
    """``exp(mean_x KL(p(y|x) || p(y)))`` of class probabilities [N, C]."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(marginal))).sum(axis=1).mean()))


@register("inception_score", higher_is_better=("inception_score",),
          description="Inception-Score-style figure from the encoder's track classifier")
def _is(ref, cand, ctx):
    return {"inception_score": inception_score(cand.probs)}


@register("ndb", description="NDB/K and JS divergence over k-means bins of the reference mels")
def _ndb(ref, cand, ctx):
    cfg = ctx.config
    key = ("kmeans", id(ref), cfg.kmeans_k, cfg.kmeans_iters, cfg.seed)
    if key not in ctx.cache:
        # the bins belong to the reference, not to a draw: seeded by the config's seed alone
        flat = _flat(ref.mels)
        centres = kmeans(flat, cfg.kmeans_k, cfg.kmeans_iters, np.random.default_rng([cfg.seed, 3]))
        ctx.cache[key] = (centres, assign(flat, centres))
    centres, ref_bins = ctx.cache[key]
    m = ctx.ndb_count(ref, cand)
    # the same m clips of each side whatever the set sizes; the reference's draw depends
    # on the seed alone, so every candidate of one seed meets the same reference counts
    ref_pick = ctx.rng(4).choice(len(ref), m, replace=False)
    cand_pick = ctx.rng(5).choice(len(cand), m, replace=False)
    ref_counts = np.bincount(ref_bins[ref_pick], minlength=len(centres))
    cand_counts = np.bincount(assign(_flat(cand.mels[cand_pick]), centres), minlength=len(centres))
    ndb_k, js = ndb(ref_counts, cand_counts, ctx.config.ndb_alpha)
    return {"ndb_k": ndb_k, "ndb_js": js}


def nearest_distances(x: np.ndarray, train: np.ndarray, chunk: int = 512) -> np.ndarray:
    """RMS-per-pixel distance of each clip in ``x`` to its nearest clip in ``train``."""
    a, b = _flat(x), _flat(train)
    bb = (b * b).sum(1)[None, :]
    out = []
    for s in range(0, len(a), chunk):
        part = a[s:s + chunk]
        d2 = (part * part).sum(1)[:, None] - 2.0 * part @ b.T + bb
        out.append(np.sqrt(np.clip(d2.min(axis=1), 0.0, None) / a.shape[1]))
    return np.concatenate(out) if out else np.zeros(0)


@register("memorisation", description="nearest-training-clip distances against held-out real clips'")
def _memorisation(ref, cand, ctx):
    key = ("held_nn", id(ref), id(ctx.held_out))
    if key not in ctx.cache:
        ctx.cache[key] = nearest_distances(ctx.held_out.mels, ref.mels)
    held = ctx.cache[key]
    mine = held if cand is ctx.held_out else nearest_distances(cand.mels, ref.mels)
    return {
        "memo_nn_median": float(np.median(mine)),
        "memo_nn_ratio": float(np.median(mine) / max(np.median(held), 1e-12)),
        "memo_copy_share": float((mine < np.quantile(held, 0.05)).mean()),
    }


def tempo_histogram(tempo: np.ndarray, clarity: np.ndarray, cfg: EvaluateConfig,
                    width: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(counts, bin edges) of the tempi of clips with a clear beat, ``width`` BPM bins."""
    lo, hi = cfg.tempo_search_bpm
    edges = np.arange(lo, hi + width, width)
    clear = clarity >= cfg.beat_clarity
    counts, _ = np.histogram(tempo[clear], bins=edges)
    return counts, edges


def has_beat(tempo: np.ndarray, clarity: np.ndarray, cfg: EvaluateConfig) -> np.ndarray:
    """Clips with a clear periodic beat inside ``cfg.beat_bpm``."""
    lo, hi = cfg.beat_bpm
    return (clarity >= cfg.beat_clarity) & (tempo >= lo) & (tempo <= hi)


@register("rhythm", higher_is_better=("beat_share",),
          description="share of clips with a clear 120-150 BPM beat, tempo histogram divergence")
def _rhythm(ref, cand, ctx):
    cfg = ctx.config
    beat = has_beat(cand.tempo, cand.clarity, cfg)
    ref_counts, _ = tempo_histogram(ref.tempo, ref.clarity, cfg)
    cand_counts, _ = tempo_histogram(cand.tempo, cand.clarity, cfg)
    return {
        "beat_share": float(beat.mean()),
        "tempo_median": float(np.median(cand.tempo[beat])) if beat.any() else 0.0,
        "tempo_js": js_divergence(ref_counts, cand_counts),
    }
