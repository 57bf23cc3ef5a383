"""`technogan generate` (no server) and the evaluate/promote steps of the main job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.cli import main as cli_main
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.generate import generate_files, parse_formats
from tests.serving.crafted import CRAFTED, tamper
from tests.tracking.eval_runs import make_checkpoint, make_run, store_uri


def test_generate_writes_png_wav_npy(tmp_path, mel_config):
    ckpt = make_checkpoint(tmp_path / "g.pt", resolution=32)
    out = tmp_path / "gen"
    made = generate_files(ckpt, out, n=3, formats=parse_formats("png,wav,npy"), seed=7, render_iterations=4)
    names = sorted(p.name for p in made.files)
    assert names == sorted(["mels.npy", "mels.png", "clip-000.wav", "clip-001.wav", "clip-002.wav", "all.wav",
                            "generate.json"])
    mels = np.load(out / "mels.npy")
    assert mels.shape == (3, 32, 32) and mels.dtype == np.float32 and np.abs(mels).max() <= 1.0
    assert (out / "mels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = sf.info(str(out / "clip-001.wav"))
    assert info.samplerate == mel_config.sample_rate and info.frames == mel_config.clip_samples
    assert sf.info(str(out / "all.wav")).frames == 3 * mel_config.clip_samples + 2 * mel_config.sample_rate // 2
    # the seed fixes the latents: the same seed gives the same mels, another seed others
    again = generate_files(ckpt, tmp_path / "again", n=3, formats=["npy"], seed=7)
    other = generate_files(ckpt, tmp_path / "other", n=3, formats=["npy"], seed=8)
    assert np.array_equal(again.mels, mels) and not np.allclose(other.mels, mels)
    assert json.loads((out / "generate.json").read_text())["seed"] == 7


def test_generate_cli_writes_mp3_and_ogg_of_the_same_audio_as_the_wav(tmp_path, mel_config, capsys):
    from pipeline.audio.encode import MP3_DELAY_SAMPLES
    from pipeline.decode import open_audio

    ckpt = make_checkpoint(tmp_path / "g.pt", resolution=32)
    out = tmp_path / "gen"
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--n", "2", "--format", "wav,MP3, ogg", "--seed", "3",
                     "--iterations", "2", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["generate.json", *(f"{stem}.{ext}" for stem in ("clip-000", "clip-001", "all")
                                                for ext in ("wav", "mp3", "ogg"))])
    assert sorted(capsys.readouterr().out.split()) == sorted(str(out / n) for n in names)
    n, gap = mel_config.clip_samples, mel_config.sample_rate // 2

    def decoded(name):
        _, blocks = open_audio(out / name, mel_config.sample_rate)
        return np.concatenate(list(blocks.blocks))

    wav = decoded("all.wav")
    assert len(wav) == 2 * n + gap
    ogg, mp3 = decoded("all.ogg"), decoded("all.mp3")[MP3_DELAY_SAMPLES:]
    assert len(ogg) == len(wav) and len(wav) <= len(mp3) < len(wav) + 576
    for y in (ogg, mp3):  # the same rendering (one Griffin-Lim pass for every format): same loudness per clip
        for k in range(2):
            a, b = y[k * (n + gap):k * (n + gap) + n], wav[k * (n + gap):k * (n + gap) + n]
            assert abs(np.sqrt(np.mean(a ** 2)) - np.sqrt(np.mean(b ** 2))) < 0.2 * np.sqrt(np.mean(b ** 2))
    assert (out / "clip-001.ogg").read_bytes()[:4] == b"OggS"
    assert (out / "all.mp3").stat().st_size < (out / "all.wav").stat().st_size / 4
    assert json.loads((out / "generate.json").read_text())["files"][-1] == "all.ogg"


def test_generate_with_a_failing_ffmpeg_is_a_user_error(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"[out#0 @ 0x55] Unknown encoder 'libvorbis'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    ckpt = make_checkpoint(tmp_path / "g.pt", resolution=32)
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--n", "1", "--format", "ogg", "--iterations", "1",
                     "--out", str(tmp_path / "o")]) == 2
    assert "--format ogg: cannot encode ogg: ffmpeg exited with 1: Unknown encoder 'libvorbis'" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*.ogg"))


def test_a_seed_means_the_same_clips_offline_and_on_the_server(tmp_path):
    """generate, evaluate and the TorchServe engine draw latents the same way."""
    import torch

    from pipeline.checkpoint import load_generator
    from pipeline.generate import generate_mels
    from pipeline.config import ServeConfig
    from serving.engine import Engine
    from serving.request import GenerationRequest

    ckpt = make_checkpoint(tmp_path / "g.pt", resolution=32)
    generator, meta = load_generator(ckpt)
    offline = generate_mels(generator, 5, meta["latent_dim"], batch_size=256, seed=11)
    # batching changes only rounding (other conv kernels), never which latents a clip gets
    np.testing.assert_allclose(generate_mels(generator, 5, meta["latent_dim"], batch_size=2, seed=11), offline,
                               atol=1e-6)
    engine = Engine(generator, meta, ServeConfig())
    z, seed = engine.latents(GenerationRequest(n=5, format="npy", seed=11))
    assert seed == 11
    with torch.no_grad():
        served = generator(z)[:, 0].numpy()  # the engine's forward, before resizing for the answer
    np.testing.assert_allclose(served, offline, atol=1e-6)


def test_generate_cli_from_a_run_and_bad_formats(tmp_path, monkeypatch, capsys):
    uri = store_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rid = make_run(uri, "gen", tmp_path)
    assert cli_main(["generate", "--run-id", rid, "--n", "2", "--format", "npy,wav", "--out",
                     str(tmp_path / "o"), "--iterations", "2"]) == 0
    assert (tmp_path / "o" / "clip-001.wav").is_file() and not (tmp_path / "o" / "mels.png").exists()
    assert cli_main(["generate", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    with pytest.raises(UserError, match="mp4; choose from png, wav, mp3, ogg, npy"):
        parse_formats("png,mp4")


def test_the_summary_says_whether_the_champion_was_trained_by_this_run(tmp_path):
    from pipeline.run import RunContext, champion_origin, run_label

    ctx = RunContext(config=load_config(None), out=tmp_path)
    assert run_label(ctx, "r2") is None  # nothing trained yet
    ctx.state["train_runs"] = {"dcgan1": "r1", "laptop": "r2"}
    assert (run_label(ctx, "r2"), run_label(ctx, "r0"), run_label(ctx, None)) == ("laptop", None, None)
    assert champion_origin(run_label(ctx, "r2")) == "trained by this run: laptop"
    assert "earlier run" in champion_origin(run_label(ctx, "r0"))


def test_run_steps_evaluate_promote_and_render_the_champion(tmp_path, small_dataset, monkeypatch):
    from pipeline.run import RunContext, step_evaluate, step_promote
    from tracking.runs import get_client

    uri = store_uri(tmp_path)
    config = load_config(None, {
        "tracking.uri": uri, "tracking.experiment": "demo",
        "evaluate.n": 48, "evaluate.encoder_steps": 20, "evaluate.kmeans_k": 4, "evaluate.kid_subsets": 3,
        "evaluate.kid_subset_size": 16, "evaluate.demo_wavs": 2, "evaluate.render_iterations": 2,
        "evaluate.encoder_dir": str(tmp_path / "enc"), "evaluate.demo_long_seconds": 12.0,
        "evaluate.listen.clips": 1, "evaluate.listen.real_clips": 1, "evaluate.listen.long_seconds": 6.0,
        "evaluate.listen.iterations": 2,
    })
    runs = {m: make_run(uri, "demo", tmp_path, model=m, dataset=small_dataset) for m in ("dcgan1", "wgan-gp")}
    ctx = RunContext(config=config, out=tmp_path / "out")
    ctx.out.mkdir()
    ctx.dataset_dir.symlink_to(small_dataset)  # where the main job's segment step puts it
    ctx.state["train_runs"] = runs
    step_evaluate(ctx)
    step_promote(ctx)
    champion = ctx.state["champion"]
    client = get_client(uri)
    fds = {m: client.get_run(r).data.metrics["eval.fd_learned"] for m, r in runs.items()}
    assert champion["run_id"] == runs[min(fds, key=fds.get)]
    assert champion["name"] == "technogan-generator" and champion["version"] == "1"
    assert ctx.outputs["champion"].endswith(f"trained by this run: {champion['model']})")
    out = Path(ctx.out)
    assert (out / "evaluation" / "comparison.md").is_file()
    assert sorted(p.name for p in (out / "champion").glob("clip-*.wav")) == ["clip-000.wav", "clip-001.wav"]
    assert {"comparison table", "champion", "champion audio", "dcgan1 evaluation", "champion quality"} <= set(ctx.outputs)
    # the summary's quality line: the champion as evaluate scored it, against the same network untrained
    quality = json.loads((out / "champion" / "quality.json").read_text())
    assert quality["fd_learned"] == pytest.approx(fds[champion["model"]], rel=1e-6)
    assert quality["fd_learned_untrained"] != pytest.approx(quality["fd_learned"])
    assert quality["fd_learned_ratio"] == pytest.approx(quality["fd_learned"] / quality["fd_learned_untrained"])
    assert quality["learned"] == (quality["beat_share"] > 0 and quality["fd_learned_ratio"] <= 1 / 3)
    # listen.html: on every evaluated run, and the champion's (with the comparison) on its run
    from tests.pipeline.test_listen import parse
    from tests.tracking.eval_runs import artifacts

    for m, rid in runs.items():
        assert "listen.html" in artifacts(client, rid), m
        assert len(parse((out / "evaluation" / m / "listen.html").read_text()).findall(".//audio")) == 3
    assert "promotion/listen.html" in artifacts(client, champion["run_id"], "promotion")
    page = parse((out / "evaluation" / "listen.html").read_text())
    assert page.find(".//table[@id='comparison']") is not None and len(page.findall(".//audio")) == 3
    # the champion's page plays the checkpoint evaluate scored: the same clips, piece and real clips
    scored = parse((out / "evaluation" / champion["model"] / "listen.html").read_text())
    assert [a.get("src") for a in page.findall(".//audio")] == [a.get("src") for a in scored.findall(".//audio")]
    # the champion's long piece: audio of the asked length, its picture and its latent path
    assert sf.info(str(out / "champion" / "long-piece.wav")).duration == pytest.approx(12.0, abs=0.05)
    assert (out / "champion" / "long-piece.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "champion" / "long-piece.json").read_text())["seconds"] == 12.0
    assert "champion long piece" in ctx.outputs and "listen page" in ctx.outputs
    # a second pass scores nothing again and keeps the champion
    before = len(client.get_metric_history(runs["dcgan1"], "eval.fd_learned"))
    step_evaluate(ctx)
    assert len(client.get_metric_history(runs["dcgan1"], "eval.fd_learned")) == before


# ----------------------------------------------------------------------------- crafted checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("good") / "g.pt", resolution=32)


@pytest.mark.parametrize("case", list(CRAFTED), ids=list(CRAFTED))
def test_a_checkpoint_whose_meta_lies_is_a_user_error_in_generate(case, good_checkpoint, tmp_path, capsys):
    from pipeline.checkpoint import load_generator

    bad = tamper(good_checkpoint, tmp_path / f"{case}.pt", **CRAFTED[case])
    with pytest.raises(UserError) as info:
        load_generator(bad)
    assert str(bad) in str(info.value)
    out = tmp_path / "out"
    assert cli_main(["generate", "--checkpoint", str(bad), "--n", "1", "--format", "npy", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_the_untampered_checkpoint_still_loads(good_checkpoint, tmp_path):
    from pipeline.checkpoint import load_generator

    copy = tamper(good_checkpoint, tmp_path / "same.pt")  # the same meta, rewritten: the control case
    generator, meta = load_generator(copy)
    assert meta["resolution"] == 32 and meta["latent_dim"] == 16


@pytest.mark.parametrize("args,message", [
    (["--iterations", "-1"], "--iterations -1"),
    (["--n", "100000000"], "--n must be between 1 and 10000"),
    (["--n", "0"], "--n must be between 1 and 10000"),
    (["--n", "-5"], "--n must be between 1 and 10000"),
    (["--seed", "-1"], "--seed must be between 0"),
    (["--seed", str(2**64)], "--seed must be between 0"),
    (["--iterations", "100000"], "--iterations 100000"),
])
def test_generate_bounds_its_arguments(args, message, good_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["generate", "--checkpoint", str(good_checkpoint), "--format", "wav", "--out", str(out), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_generate_bounds_the_memory_of_mels_by_resolution(tmp_path):
    ckpt = make_checkpoint(tmp_path / "g256.pt", resolution=256)  # 256 KiB of mels per clip
    with pytest.raises(UserError, match=r"--n 5000 at resolution 256 would hold 1\.2 GiB"):
        generate_files(ckpt, tmp_path / "o", n=5000, formats=["npy"])
