"""``listen.html``: one self-contained page to hear a generator next to the real music.

``evaluate`` logs it to the evaluated training run (``listen.html`` at the top of its
artifacts) and ``promote`` to the champion's run (``promotion/listen.html``, with the
comparison of all runs). The MLflow UI shows HTML artifacts inline, so comparing runs
by ear needs nothing but the UI; the file also opens on its own, offline, on a phone.

What is on it (settings: ``evaluate.listen``, ``ListenConfig``):

- the headline scores: every metric's mean ± standard deviation over evaluate's latent
  seeds next to what real data scores against itself (real half B vs half A), the
  seeds, and which way is better;
- ``clips`` generated clips (latents of ``seed``), each with its spectrogram;
- a long-form piece of ``long_seconds`` (``pipeline.longform``) with its spectrogram;
- ``real_clips`` clips of the training set, drawn with ``seed``, each with its
  spectrogram. They are taken at the generator's resolution and rendered by the same
  renderer, so what differs by ear is the generator, not the resolution or the
  Griffin-Lim round trip.

Everything is embedded as ``data:`` URIs (compressed audio, PNG pictures) and the page
has no script and no external asset. Its cost is the rendering (``iterations`` of
Griffin-Lim per clip); the real clips' section and a checkpoint's sounds are kept in
memory for the process, so a demo that pages every run renders each dataset's real
clips once and the champion's sounds once for evaluate and promote alike.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.audio.encode import CONTENT_TYPES
from pipeline.config import ListenConfig, MelConfig
from pipeline.fsutil import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

PAGE_NAME = "listen.html"
# the audio's type in its data: URI (the content type without parameters: a data URI's are plain)
MIME_TYPES = {fmt: ctype.split(";")[0] for fmt, ctype in CONTENT_TYPES.items()}


# ----------------------------------------------------------------------------- what the page holds


@dataclass
class Sound:
    """One piece of audio on the page and its spectrogram."""

    title: str
    audio: bytes  # encoded in ``mime``
    mime: str
    seconds: float  # its duration
    picture: bytes  # PNG
    note: str = ""


@dataclass
class MetricRow:
    key: str
    mean: float
    std: float | None  # over the latent seeds (None: one seed or not known)
    baseline: float | None  # real half B vs real half A
    baseline_std: float | None
    higher_is_better: bool


@dataclass
class Headline:
    """The run's scores as the page shows them."""

    rows: list[MetricRow]
    seeds: list[int] = field(default_factory=list)
    n_generated: int | None = None  # clips per draw
    lines: list[str] = field(default_factory=list)  # what was scored (checkpoint, encoder, ...)


@dataclass
class ListenPage:
    html: str
    sounds: dict[str, list[Sound]]  # section title -> its sounds
    seconds: float  # what building it cost

    @property
    def size(self) -> int:
        return len(self.html.encode("utf-8"))

    def write(self, path: str | Path) -> Path:
        atomic_write_text(path, self.html)
        return Path(path)


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def headline_from_report(report: Any) -> Headline:
    """The headline of an ``evaluate`` ``Report`` (or its JSON as a dict)."""
    from pipeline.evaluate.metrics import higher_is_better

    data = report if isinstance(report, Mapping) else report.__dict__
    metrics, std = data.get("metrics") or {}, data.get("metrics_std") or {}
    base, base_std = data.get("baseline") or {}, data.get("baseline_std") or {}
    info, per_seed = data.get("info") or {}, data.get("per_seed") or {}
    seeds = [int(s) for s in (per_seed.get("seeds") or info.get("seeds") or [])]
    several = len(seeds) > 1
    rows = [MetricRow(k, float(v), _finite(std.get(k)) if several else None, _finite(base.get(k)),
                      _finite(base_std.get(k)) if several else None, higher_is_better(k))
            for k, v in metrics.items() if _finite(v) is not None]
    # a line only where the report has every figure it names
    wanted = [("checkpoint {checkpoint} of {model} (epoch {epoch})", ("checkpoint", "model", "epoch")),
              ("dataset {dataset} (fingerprint {dataset_fingerprint}), {n_ref} reference and {n_held_out} "
               "held-out real clips", ("dataset", "dataset_fingerprint", "n_ref", "n_held_out")),
              ("encoder {encoder_id}, NDB/K on {ndb_clips} clips per side", ("encoder_id", "ndb_clips"))]
    lines = [text.format(**info) for text, keys in wanted if all(info.get(k) is not None for k in keys)]
    n = info.get("n_generated")
    return Headline(rows, seeds, int(n) if isinstance(n, (int, float)) else None, lines)


def headline_from_metrics(metrics: Mapping[str, float], tags: Mapping[str, str] | None = None) -> Headline:
    """The headline from a run's logged ``eval.*`` metrics, for a run whose report is not at
    hand (the baseline's spread is not logged, so it shows as the mean alone)."""
    from pipeline.evaluate.evaluate import BASELINE_PREFIX, CEILING_PREFIX, PREFIX, STD_PREFIX
    from pipeline.evaluate.metrics import higher_is_better

    derived = (BASELINE_PREFIX, STD_PREFIX, CEILING_PREFIX)
    keys = sorted(k[len(PREFIX):] for k in metrics if k.startswith(PREFIX) and not k.startswith(derived))
    rows = [MetricRow(k, float(metrics[PREFIX + k]), _finite(metrics.get(STD_PREFIX + k)),
                      _finite(metrics.get(BASELINE_PREFIX + k)), None, higher_is_better(k))
            for k in keys if _finite(metrics[PREFIX + k]) is not None]
    tags = tags or {}
    n, seeds = tags.get("technogan.eval.n"), tags.get("technogan.eval.seeds")
    lines = [f"{seeds} latent draws (scores from the run's logged metrics)"] if seeds else []
    return Headline(rows, [], int(n) if n and n.isdigit() else None, lines)


# ----------------------------------------------------------------------------- the page


_CSS = """
:root { color-scheme: light dark; --fg: #1b1b1f; --bg: #fafafa; --card: #fff; --muted: #666; --line: #ddd; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #eee; --bg: #141418; --card: #1e1e24; --muted: #aaa; --line: #333; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 1rem; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 72rem; margin: 0 auto; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .3rem; }
p, li { color: var(--muted); margin: .2rem 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 19rem), 1fr)); gap: .8rem; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: .5rem; padding: .6rem; margin: 0; }
.card.wide { grid-column: 1 / -1; }
.card img { display: block; width: 100%; height: auto; border-radius: .25rem; }
.card audio { display: block; width: 100%; margin-top: .4rem; }
figcaption { font-weight: 600; margin-bottom: .4rem; }
figcaption small { font-weight: 400; color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; min-width: 100%; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
"""


def _num(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "-"
    text = f"{v:.4g}"
    return text if std is None else f"{text} ± {std:.2g}"


def _attr(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _metrics_table(h: Headline) -> str:
    e = html.escape
    if not h.rows:
        return "<p>No scores for this run.</p>"
    rows = []
    for r in h.rows:
        rows.append(
            f'<tr data-metric="{e(r.key)}"><td>{e(r.key)}</td>'
            f'<td class="generated" data-mean="{_attr(r.mean)}" data-std="{_attr(r.std)}">{e(_num(r.mean, r.std))}</td>'
            f'<td class="baseline" data-mean="{_attr(r.baseline)}" data-std="{_attr(r.baseline_std)}">'
            f'{e(_num(r.baseline, r.baseline_std))}</td>'
            f'<td>{"higher" if r.higher_is_better else "lower"}</td></tr>')
    seeds = ", ".join(str(s) for s in h.seeds) or "-"
    draws = (f"{len(h.seeds)} latent draws (seeds {seeds}) of {h.n_generated or '?'} clips each: "
             "mean ± sample standard deviation over the draws" if len(h.seeds) > 1
             else f"one latent draw (seed {seeds}) of {h.n_generated or '?'} clips")
    return (f'<p id="seeds" data-seeds="{e(seeds)}">{e(draws)}; the real baseline scores the held-out half of the '
            'real clips against the reference half (what real music itself scores).</p>'
            '<div class="scroll"><table id="metrics"><thead><tr><th>metric</th><th>generated</th>'
            '<th>real vs real</th><th>better</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>"
            + "".join(f"<p>{e(line)}</p>" for line in h.lines))


def _card(sound: Sound, wide: bool = False) -> str:
    e = html.escape
    note = f" <small>{e(sound.note)}</small>" if sound.note else ""
    return (f'<figure class="card{" wide" if wide else ""}"><figcaption>{e(sound.title)}{note}</figcaption>'
            f'<img src="{data_uri("image/png", sound.picture)}" alt="{e("spectrogram of " + sound.title)}">'
            f'<audio controls preload="metadata" data-seconds="{sound.seconds:.3f}" '
            f'src="{data_uri(sound.mime, sound.audio)}"></audio></figure>')


def page_html(title: str, lines: Sequence[str], headline: Headline | None,
              sections: Sequence[tuple[str, str, list[Sound]]], extra_html: str = "", footer: str = "") -> str:
    """The page: ``title``, a few ``lines`` about the run, the ``headline`` scores,
    then each section (title, one-line description, sounds) as cards, ``extra_html``
    (already escaped) after the scores. Valid HTML5 with no script and no external asset."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<main>",
             f"<h1>{e(title)}</h1>"]
    parts += [f"<p>{e(line)}</p>" for line in lines]
    if headline is not None:
        parts += ["<h2>Scores</h2>", _metrics_table(headline)]
    if extra_html:
        parts.append(extra_html)
    for name, description, sounds in sections:
        if not sounds:
            continue
        parts += [f"<section><h2>{e(name)}</h2>", f"<p>{e(description)}</p>" if description else "",
                  '<div class="cards">' + "".join(_card(s, wide=s.seconds > 10) for s in sounds) + "</div></section>"]
    if footer:
        parts.append(f"<footer><p>{e(footer)}</p></footer>")
    parts += ["</main>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- sounds


def _sounds(mels: np.ndarray, audio: np.ndarray, mel_config: MelConfig, cfg: ListenConfig, titles: Sequence[str],
            notes: Sequence[str] | None = None) -> list[Sound]:
    from pipeline.audio.encode import encode_audio
    from pipeline.plot import plot_mel_grid

    out = []
    for i, (mel, clip) in enumerate(zip(mels, audio)):
        picture = plot_mel_grid(mel[None], mel_config)
        assert picture is not None
        picture = compact_png(picture)
        out.append(Sound(titles[i], encode_audio(clip, mel_config.sample_rate, cfg.format), MIME_TYPES[cfg.format],
                         len(clip) / mel_config.sample_rate, picture, notes[i] if notes else ""))
    return out


PNG_COLOURS = 128  # a spectrogram in one colour map and a few greys: a palette loses nothing visible


def compact_png(png: bytes) -> bytes:
    """A PNG redrawn with a palette of ``PNG_COLOURS``: less than half the bytes of
    matplotlib's RGBA for the same picture (measured on the demo's spectrograms: 873 -> 380 KB)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        small = im.convert("RGB").quantize(PNG_COLOURS)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    return buf.getvalue() if buf.tell() < len(png) else png


def _render(mels: np.ndarray, mel_config: MelConfig, cfg: ListenConfig) -> np.ndarray:
    import torch

    from pipeline.audio import MelRenderer

    if mels.ndim != 3:
        raise ValueError(f"clips must be [N, R, R], got shape {mels.shape}")
    renderer = MelRenderer(mel_config, n_iter=cfg.iterations, seed=cfg.seed)
    return renderer.render(torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32))).numpy()


# sounds kept for the process: (kind, key) -> list[Sound]; each entry is ~0.1-0.3 MB, and a demo
# of five runs needs 11 (clips and long piece per run, real clips once) for the champion to be a hit
_MEMO: collections.OrderedDict[tuple, list[Sound]] = collections.OrderedDict()
_MEMO_SIZE = 32


def _memo(key: tuple, make: Callable[[], list[Sound]]) -> list[Sound]:
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    value = make()
    _MEMO[key] = value
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return value


def _settings(cfg: ListenConfig) -> tuple:
    return (cfg.clips, cfg.real_clips, cfg.long_seconds, cfg.iterations, cfg.format, cfg.seed)


def generated_sounds(generator, meta: dict, cfg: ListenConfig) -> list[Sound]:
    """``cfg.clips`` clips of the generator from the latents of ``cfg.seed``."""
    from pipeline.generate import generate_mels

    if not cfg.clips:
        return []
    mel_config = MelConfig.from_dict(meta["mel_config"])
    mels = generate_mels(generator, cfg.clips, int(meta["latent_dim"]), seed=cfg.seed)  # [N, R, R]
    return _sounds(mels, _render(mels, mel_config, cfg), mel_config, cfg,
                   [f"generated {i + 1}" for i in range(len(mels))],
                   [f"seed {cfg.seed}, latent {i}" for i in range(len(mels))])


def long_sounds(generator, meta: dict, cfg: ListenConfig) -> list[Sound]:
    """The long-form piece of ``cfg.long_seconds`` (none when 0) from the latent walk of
    ``cfg.seed``, with the default ``LongformConfig``, its window joins marked in the picture."""
    if not cfg.long_seconds:
        return []
    from pipeline.audio.encode import encode_audio
    from pipeline.longform import generate_long, render_long
    from pipeline.plot import plot_long_mel

    piece = generate_long(generator, meta, cfg.long_seconds, seed=cfg.seed)
    audio = render_long(piece, n_iter=cfg.iterations, seed=cfg.seed)
    picture = plot_long_mel(piece.mel, piece.mel_config, boundaries_s=piece.boundaries_s)
    assert picture is not None
    picture = compact_png(picture)
    tempo = f", about {piece.tempo_bpm:.0f} BPM" if piece.tempo_bpm else ""
    return [Sound(f"{piece.seconds:.0f} s piece", encode_audio(audio, piece.sample_rate, cfg.format),
                  MIME_TYPES[cfg.format], len(audio) / piece.sample_rate, picture,
                  f"seed {cfg.seed}, {len(piece.path['windows'])} windows{tempo}; dashed lines: window joins")]


def real_sounds(dataset: str | Path, resolution: int, cfg: ListenConfig) -> list[Sound]:
    """``cfg.real_clips`` clips of ``dataset`` (drawn with ``cfg.seed``) at the generator's
    ``resolution``, rendered like the generated ones; kept for the process."""
    from pipeline.dataset import MelDataset

    if not cfg.real_clips:
        return []
    ds = MelDataset(dataset, resolution=resolution)
    key = ("real", str(Path(dataset).resolve()), ds.fingerprint(), resolution, _settings(cfg))

    def make() -> list[Sound]:
        rng = np.random.default_rng([cfg.seed, 11])
        picks = np.sort(rng.choice(len(ds), size=min(cfg.real_clips, len(ds)), replace=False))
        mels = np.stack([ds[int(i)][0].numpy() for i in picks])  # [K, R, R]: each item is [1, R, R]
        return _sounds(mels, _render(mels, ds.mel_config, cfg), ds.mel_config, cfg,
                       [f"real {k + 1}" for k in range(len(picks))], [f"clip {int(i)}" for i in picks])

    return _memo(key, make)


def build_page(checkpoint: str | Path, dataset: str | Path | None, cfg: ListenConfig, headline: Headline | None,
               title: str, lines: Sequence[str] = (), extra_html: str = "") -> ListenPage:
    """``listen.html`` for the generator at ``checkpoint``: its clips and long piece, real
    clips of ``dataset`` (left out, with a line saying so, when it is None or not here),
    the ``headline`` scores."""
    from pipeline.checkpoint import load_generator

    t0 = time.perf_counter()
    checkpoint = Path(checkpoint)
    generator, meta = load_generator(checkpoint)
    resolution = int(meta["resolution"])
    key = (sha256_file(checkpoint), _settings(cfg))
    generated = _memo(("generated", *key), lambda: generated_sounds(generator, meta, cfg))
    long = _memo(("long", *key), lambda: long_sounds(generator, meta, cfg))
    lines = list(lines)
    real: list[Sound] = []
    if cfg.real_clips:
        if dataset is not None and (Path(dataset) / "mel_config.json").is_file():
            real = real_sounds(dataset, resolution, cfg)
        else:
            lines.append(f"No real clips: the dataset {dataset} is not on this machine.")
    sections = [
        ("Generated clips", f"{meta.get('model')} at {resolution}x{resolution}, latents of seed {cfg.seed}.",
         generated),
        ("Long-form piece", "One continuous piece: a walk through latent space, one window per step, "
         "consecutive windows blended and beat-aligned.", long),
        ("Real clips", f"From the training set, at the generator's resolution ({resolution}x{resolution}) and "
         "through the same renderer: what the generator imitates.", real),
    ]
    footer = (f"Audio: mel spectrograms through fast Griffin-Lim ({cfg.iterations} iterations), {cfg.format}. "
              f"Built by technogan in {time.perf_counter() - t0:.1f} s.")
    text = page_html(title, lines, headline, sections, extra_html, footer)
    return ListenPage(text, {name: sounds for name, _, sounds in sections}, time.perf_counter() - t0)
