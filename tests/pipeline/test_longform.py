"""Long-form pieces (pipeline/longform.py), their plot and their measures, on synthetic signals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.audio import MelRenderer
from pipeline.audio.quality import boundary_loudness, long_mel_db, seam_score, spectral_convergence, tempo_stability
from pipeline.cli import main as cli_main
from pipeline.config import ConfigError, LongformConfig, MelConfig, load_config
from pipeline.errors import UserError
from pipeline.generate import latents_for_seed
from pipeline.longform import (_windows, best_shift, generate_long, join_windows, path_latents, regenerate,
                               render_long, seconds_to_frames, slerp)
from pipeline.mel import db_to_normalised, normalised_to_db
from tests.tracking.eval_runs import make_checkpoint

CFG = MelConfig()
FRAME_S = CFG.hop_length / CFG.sample_rate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained tiny generator (resolution 32, latent size 16) and its meta."""
    from pipeline.checkpoint import load_generator

    path = make_checkpoint(tmp_path_factory.mktemp("longform") / "g.pt", resolution=32)
    generator, meta = load_generator(path)
    return path, generator, meta


def click_track(frames: int, period: float, seed: int = 0, phase: float = 3.0) -> np.ndarray:
    """A normalised mel [M, frames] of broadband clicks every ``period`` frames (uneven
    loudness, a decaying tail) over a quiet noise floor."""
    rng = np.random.default_rng(seed)
    db = -70.0 + 3.0 * rng.standard_normal((CFG.n_mels, frames))
    t = phase
    while t < frames:
        f = int(round(t))
        level = -rng.uniform(0.0, 12.0)
        for k, decay in enumerate((0.0, 8.0, 20.0, 35.0)):
            if f + k < frames:
                db[:, f + k] = np.maximum(db[:, f + k], level - decay)
        t += period
    return db_to_normalised(np.clip(db, -CFG.top_db, 0.0), CFG).astype(np.float32)


# ----------------------------------------------------------------------------- the latent path


def test_the_path_is_a_slerp_walk_through_the_seeds_anchors():
    z, positions = path_latents(9, 16, seed=5, step=0.25)
    anchors = latents_for_seed(5, 4, 16)
    assert positions == [0.25 * k for k in range(9)]
    for k in (0, 4, 8):  # whole positions are the anchors themselves
        assert torch.allclose(z[k], anchors[k // 4])
    # in between: on the great circle between the two anchors, not on the straight line
    mid = slerp(anchors[0], anchors[1], 0.5)
    assert torch.allclose(z[2], mid)
    assert not torch.allclose(mid, (anchors[0] + anchors[1]) / 2)
    assert abs(float(mid.norm()) - float((anchors[0].norm() + anchors[1].norm()) / 2)) < 0.5
    # a longer walk starts the same; step 0 stays on the first anchor; step 1 visits one per window
    longer, _ = path_latents(20, 16, seed=5, step=0.25)
    assert torch.equal(longer[:9], z)
    assert torch.equal(path_latents(3, 16, seed=5, step=0.0)[0], anchors[:1].repeat(3, 1))
    assert torch.allclose(path_latents(3, 16, seed=5, step=1.0)[0], anchors[:3])
    # explicit anchors are walked in order and loop
    given = np.eye(3, 16, dtype=np.float32)
    walk, _ = path_latents(4, 16, step=1.0, anchors=given)
    assert np.allclose(walk.numpy(), given[[0, 1, 2, 0]])


@pytest.mark.parametrize("kwargs,message", [
    ({"step": 1.5}, "step must be between 0 and 1"),
    ({"anchors": np.zeros((2, 15), np.float32)}, "anchors must be a list of latents of length 16"),
    ({"anchors": np.full((2, 16), np.nan, np.float32)}, "anchors must be finite"),
])
def test_bad_path_inputs_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        path_latents(4, 16, **{"step": 0.5, **kwargs})


# ----------------------------------------------------------------------------- beat alignment


@pytest.mark.parametrize("d", [-8, -3, 0, 5, 9])
def test_beat_alignment_recovers_a_known_shift_of_a_click_track(d):
    settings = LongformConfig(overlap_seconds=1.0, max_shift_seconds=0.25)
    width, overlap = CFG.n_frames, int(round(1.0 / FRAME_S))
    period = 20.3  # 127 BPM: half a beat is 10 frames, the bound on the shift
    track = click_track(3 * width, period, seed=1)
    start = width - overlap + d  # where the second window's content really belongs
    windows = np.stack([track[:, :width], track[:, start:start + width]])
    mel, starts, shifts, tempi = join_windows(windows, CFG, settings)
    assert shifts == [0, d] and starts == [0, start]
    assert abs(tempi[0] - 60.0 / (period * FRAME_S)) < 2.0
    # both windows are cuts of one track: put back where they belong, the join is the track itself
    assert np.allclose(mel, track[:, :start + width], atol=1e-4)


def test_best_shift_prefers_no_move_without_a_beat():
    flat = np.ones(40)
    assert best_shift(flat, flat[:30], 8) == 0


# ----------------------------------------------------------------------------- whole pieces


def test_a_piece_is_deterministic_and_its_path_makes_it_again(tiny):
    _, generator, meta = tiny
    piece = generate_long(generator, meta, 20.0, seed=3)
    assert piece.mel.shape == (CFG.n_mels, seconds_to_frames(20.0, CFG)) and piece.mel.dtype == np.float32
    assert np.abs(piece.mel).max() <= 1.0
    assert abs(piece.seconds - 20.0) < FRAME_S
    windows = piece.path["windows"]
    assert len(piece.boundaries_s) == len(windows) - 1 >= 4
    assert all(0 < a < b for a, b in zip(piece.boundaries_s, piece.boundaries_s[1:]))
    # the same seed and settings: the same piece; another seed: another
    again = generate_long(generator, meta, 20.0, seed=3)
    assert np.array_equal(again.mel, piece.mel) and again.path == piece.path
    assert not np.allclose(generate_long(generator, meta, 20.0, seed=4).mel, piece.mel)
    # the path survives JSON and makes the same piece again
    saved = json.loads(json.dumps(piece.path))
    remade = regenerate(generator, meta, saved)
    assert np.array_equal(remade.mel, piece.mel) and remade.boundaries_s == piece.boundaries_s
    a = render_long(piece, n_iter=2, seed=3)
    assert np.array_equal(a, render_long(remade, n_iter=2, seed=3))
    # a longer piece on the same seed starts the same way, up to the last join of the shorter
    longer = generate_long(generator, meta, 30.0, seed=3)
    last_start = windows[-1]["start_frame"]
    assert np.array_equal(longer.mel[:, :last_start], piece.mel[:, :last_start])


def test_a_windows_bits_do_not_depend_on_how_many_windows_the_piece_has(tiny):
    # oneDNN rounds a batch of 3, 5 or 17 differently from one of 16 on some CPUs
    _, generator, meta = tiny
    cfg = MelConfig.from_dict(meta["mel_config"])
    z = torch.randn(40, meta["latent_dim"], generator=torch.Generator().manual_seed(0))
    every = _windows(generator, z, cfg, "cpu")  # [40, M, W]
    for n in (1, 3, 5, 17, 33):
        assert np.array_equal(_windows(generator, z[:n], cfg, "cpu"), every[:n]), n


def test_a_piece_of_explicit_anchors_records_them(tiny):
    _, generator, meta = tiny
    anchors = latents_for_seed(11, 2, 16).numpy()
    piece = generate_long(generator, meta, 12.0, step=0.5, anchors=anchors)
    assert np.allclose(piece.path["anchors"], anchors)
    assert np.allclose(piece.path["windows"][0]["latent"], anchors[0])
    assert np.allclose(piece.path["windows"][2]["latent"], anchors[1], atol=1e-6)
    assert np.array_equal(regenerate(generator, meta, json.loads(json.dumps(piece.path))).mel, piece.mel)


@pytest.mark.parametrize("seconds", [4.9, 601, float("nan"), "ten"])
def test_a_piece_length_out_of_bounds_is_a_user_error(tiny, seconds):
    _, generator, meta = tiny
    with pytest.raises(UserError, match="--seconds must be"):
        generate_long(generator, meta, seconds)


def test_a_path_that_is_not_one_is_refused(tiny):
    _, generator, meta = tiny
    with pytest.raises(UserError, match="not a long-form path"):
        regenerate(generator, meta, {"windows": "x"})
    path = generate_long(generator, meta, 12.0, seed=1).path
    broken = json.loads(json.dumps(path))
    broken["windows"][1]["start_frame"] = 10_000
    with pytest.raises(UserError, match="window 1 starts at frame 10000, which does not join"):
        regenerate(generator, meta, broken)
    broken["windows"][1]["latent"] = [0.0] * 3
    with pytest.raises(UserError, match="each needs a latent of length 16"):
        regenerate(generator, meta, broken)


def test_longform_settings_are_validated():
    with pytest.raises(ConfigError, match="longform.*max_shift_seconds 1.5 must be below overlap_seconds"):
        load_config(None, {"longform.max_shift_seconds": 1.5})
    with pytest.raises(ConfigError, match="longform.step"):
        load_config(None, {"longform.step": 2.0})
    with pytest.raises(ConfigError, match="serve.max_seconds"):
        load_config(None, {"serve.max_seconds": 3})


# ----------------------------------------------------------------------------- chunked rendering


def _tone_mel(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(normalised long mel, audio) of a steady chord: any click in a rendering stands out."""
    t = np.arange(int(seconds * CFG.sample_rate)) / CFG.sample_rate
    audio = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate((110.0, 220.0, 330.0))).astype(np.float32)
    audio *= 0.3
    return db_to_normalised(long_mel_db(audio, CFG), CFG), audio


def _roughness(audio: np.ndarray, block: int = 256) -> np.ndarray:
    """Per block of samples, the largest second difference: a steady low chord is smooth,
    a phase jump or click is not."""
    d2 = np.abs(np.diff(audio / np.abs(audio).max(), 2))
    n = len(d2) // block
    return d2[:n * block].reshape(n, block).max(axis=1)


def _naive_chunks(mel: np.ndarray, chunk: int) -> np.ndarray:
    """Chunks rendered independently and butted together: the phase jumps render_long avoids."""
    r = MelRenderer(CFG, n_iter=8)
    parts = []
    for a in range(0, mel.shape[1] - 1, chunk):
        part = torch.from_numpy(mel[None, :, a:a + chunk + 1])
        parts.append(r.griffin_lim(r.stored_magnitude(part), torch.Generator().manual_seed(a),
                                   length=(part.shape[-1] - 1) * CFG.hop_length)[0].numpy())
    return np.concatenate(parts)


def test_chunked_rendering_has_no_clicks_and_matches_the_one_shot_rendering():
    mel, audio = _tone_mel(6.0)
    chunk = 64
    chunked = render_long(mel, CFG, n_iter=8, chunk_frames=chunk, overlap_frames=16)
    one_shot = render_long(mel, CFG, n_iter=8, chunk_frames=mel.shape[1] + 1)
    assert chunked.shape == one_shot.shape == ((mel.shape[1] - 1) * CFG.hop_length,)
    assert np.abs(chunked).max() == pytest.approx(0.89)
    # as close to the original's spectrum as the one-shot rendering
    n = len(chunked)
    sc_chunked = spectral_convergence(audio[:n], chunked, CFG)[0]
    sc_one = spectral_convergence(audio[:n], one_shot, CFG)[0]
    assert sc_chunked < sc_one + 0.05, (sc_chunked, sc_one)
    # no click or phase jump where chunks meet: as smooth there as elsewhere ...
    joins = [a * CFG.hop_length for a in range(chunk - 16, mel.shape[1], chunk - 16)]

    def worst_join(x: np.ndarray, at: list[int]) -> float:
        """The roughest block where chunks meet (and just around) against the median block."""
        r = _roughness(x)
        near = np.zeros(len(r), bool)
        for sample in at:
            near[max(0, sample // 256 - 8):sample // 256 + 40] = True
        near[:16] = near[-16:] = False  # the chord starts and stops abruptly at the very ends
        return float(r[near].max() / np.median(r))

    assert worst_join(chunked, joins) < 2.5
    # ... while chunks rendered on their own click where they meet (the measure can fail)
    naive = _naive_chunks(mel, chunk)
    assert worst_join(naive, list(range(chunk * CFG.hop_length, len(naive), chunk * CFG.hop_length))) > 5.0


def test_render_long_refuses_a_mel_of_the_wrong_shape():
    with pytest.raises(ValueError, match="n_mels=128"):
        render_long(np.zeros((64, 100), np.float32), CFG)


# ----------------------------------------------------------------------------- measures


def test_seam_score_sees_clicks_at_the_joins_and_not_in_steady_music():
    mel = click_track(1300, 20.3, seed=2)
    db = normalised_to_db(mel, CFG)
    bounds = [5.0, 10.0, 15.0, 20.0, 25.0]
    clean = seam_score(db, bounds, CFG)
    assert 0.8 < clean < 1.25
    # a join whose beats do not line up: for the crossfade's second, two kicks per beat
    offbeat = normalised_to_db(click_track(1300, 20.3, seed=2, phase=13.0), CFG)
    doubled = db.copy()
    for b in bounds:
        f = int(round(b / FRAME_S))
        doubled[:, f - 21:f + 21] = np.maximum(db[:, f - 21:f + 21], offbeat[:, f - 21:f + 21])
    assert seam_score(doubled, bounds, CFG) > 1.5 * clean
    # and a click on every join shows too, if less (one frame of the second around it)
    clicked = db.copy()
    for b in bounds:
        clicked[:, int(round(b / FRAME_S))] = 0.0
    assert seam_score(clicked, bounds, CFG) > 1.15 * clean


def test_boundary_loudness_finds_a_loud_join():
    db = np.full((CFG.n_mels, 900), -30.0, np.float32)
    bounds = [5.0, 12.0]
    f = int(round(12.0 / FRAME_S))
    db[:, f - 5:f + 5] += 6.0
    excess = boundary_loudness(db, bounds, CFG)
    assert abs(excess[0]) < 0.1 and 3.0 < excess[1] < 6.5


def test_tempo_stability_is_tight_for_a_steady_beat_and_wide_for_a_change():
    steady = normalised_to_db(click_track(1300, 20.3, seed=3), CFG)
    s = tempo_stability(steady, CFG)
    assert s["clear_share"] > 0.9 and s["spread_bpm"] < 1.0
    assert abs(s["median_bpm"] - 60.0 / (20.3 * FRAME_S)) < 2.0
    change = np.concatenate([steady[:, :650], normalised_to_db(click_track(650, 17.0, seed=4), CFG)], axis=1)
    assert tempo_stability(change, CFG)["spread_bpm"] > 5.0


# ----------------------------------------------------------------------------- plot


def test_long_plot_has_rows_and_marks_boundaries():
    from PIL import Image
    import io

    from pipeline.plot import plot_long_mel

    short = plot_long_mel(click_track(seconds_to_frames(20, CFG), 20.3), CFG)
    long = plot_long_mel(click_track(seconds_to_frames(70, CFG), 20.3), CFG, row_seconds=30.0)
    h_short = Image.open(io.BytesIO(short)).size[1]
    h_long = Image.open(io.BytesIO(long)).size[1]
    assert h_long > 2.5 * h_short * 0.8  # three rows against one
    marked = plot_long_mel(click_track(seconds_to_frames(20, CFG), 20.3), CFG, boundaries_s=[5.0, 9.0])
    assert marked != short


# ----------------------------------------------------------------------------- CLI


def test_generate_seconds_writes_one_piece_and_its_path_remakes_it(tiny, tmp_path, capsys):
    ckpt, _, _ = tiny
    out = tmp_path / "piece"
    code = cli_main(["generate", "--checkpoint", str(ckpt), "--seconds", "7.5", "--seed", "2", "--step", "0.5",
                     "--iterations", "2", "--format", "wav,png,npy", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["piece.json", "piece.npy", "piece.png", "piece.wav"]
    frames = seconds_to_frames(7.5, CFG)
    info = sf.info(str(out / "piece.wav"))
    assert info.samplerate == CFG.sample_rate and info.frames == (frames - 1) * CFG.hop_length
    mel = np.load(out / "piece.npy")
    path = json.loads((out / "piece.json").read_text())
    assert mel.shape == (CFG.n_mels, frames) and path["seed"] == 2 and path["step"] == 0.5
    again = tmp_path / "again"
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--from-path", str(out / "piece.json"),
                     "--format", "npy", "--out", str(again)]) == 0
    assert np.array_equal(np.load(again / "piece.npy"), mel)


def test_generate_seconds_writes_the_piece_in_each_audio_format(tiny, tmp_path):
    from pipeline.audio.encode import MP3_DELAY_SAMPLES
    from pipeline.decode import open_audio

    ckpt, _, _ = tiny
    out = tmp_path / "piece"
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--seconds", "6", "--seed", "2", "--iterations", "2",
                     "--format", "wav,mp3,ogg", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["piece.json", "piece.mp3", "piece.ogg", "piece.wav"]

    def samples(name):
        _, blocks = open_audio(out / name, CFG.sample_rate)
        return sum(len(b) for b in blocks.blocks)

    wav = samples("piece.wav")
    assert samples("piece.ogg") == wav  # Ogg Vorbis: the exact length
    assert wav + MP3_DELAY_SAMPLES <= samples("piece.mp3") < wav + MP3_DELAY_SAMPLES + 576  # LAME's delay, a frame
    assert (out / "piece.mp3").stat().st_size < (out / "piece.wav").stat().st_size / 4


@pytest.mark.parametrize("args,message", [
    (["--seconds", "2"], "--seconds must be between 5 and 600"),
    (["--seconds", "601"], "--seconds must be between 5 and 600"),
    (["--seconds", "10", "--n", "3"], "cannot be combined with --n 3"),
    (["--seconds", "10", "--step", "2"], "--step must be between 0 and 1"),
    (["--step", "0.5"], "--step and --anchors are for long-form pieces"),
    (["--seconds", "10", "--anchors", "missing.npy"], "--anchors missing.npy: no such file"),
])
def test_generate_seconds_bad_values_are_clear_errors(args, message, tiny, tmp_path, capsys, monkeypatch):
    ckpt, _, _ = tiny
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--format", "npy", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_generate_seconds_anchors_of_the_wrong_size(tiny, tmp_path, capsys):
    ckpt, _, _ = tiny
    np.save(tmp_path / "a.npy", np.zeros((2, 7), np.float32))
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--seconds", "6", "--anchors", str(tmp_path / "a.npy"),
                     "--format", "npy", "--out", str(tmp_path / "o")]) == 2
    assert "latents of length 7; the model's latent size is 16" in capsys.readouterr().err
