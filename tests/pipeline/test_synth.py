import json

import librosa
import numpy as np
import pytest
import soundfile as sf

from pipeline.config import MelConfig
from pipeline.decode import ClipStream
from pipeline.errors import UserError
from pipeline.synth import synthesize


def test_same_seed_same_audio_different_seed_different(tmp_path):
    a = synthesize(tmp_path / "a", tracks=2, seconds=8, seed=3, progress=False)
    b = synthesize(tmp_path / "b", tracks=2, seconds=8, seed=3, progress=False)
    c = synthesize(tmp_path / "c", tracks=2, seconds=8, seed=4, progress=False)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    assert a[0].read_bytes() != a[1].read_bytes()  # tracks differ from each other


def test_track_i_does_not_depend_on_track_count(tmp_path):
    few = synthesize(tmp_path / "few", tracks=1, seconds=6, seed=0, progress=False)
    many = synthesize(tmp_path / "many", tracks=3, seconds=6, seed=0, progress=False)
    assert few[0].read_bytes() == many[0].read_bytes()


def test_tempo_in_range_and_audible_beat_at_that_tempo(tmp_path):
    paths = synthesize(tmp_path, tracks=4, seconds=20, seed=1, progress=False)
    infos = json.loads((tmp_path / "tracks.json").read_text())
    assert len(infos) == 4 and len({round(i["bpm"], 3) for i in infos}) == 4
    for path, info in zip(paths, infos):
        assert 120 <= info["bpm"] <= 140
        y, sr = sf.read(path, dtype="float32")
        assert y.shape == (20 * 44100, 2) and sr == 44100
        assert 0.5 < np.abs(y).max() <= 0.9  # mastered near -1 dBFS, no clipping
        mono = librosa.resample(y.mean(axis=1), orig_sr=sr, target_sr=22050)
        tempo = float(np.atleast_1d(librosa.beat.beat_track(y=mono, sr=22050, start_bpm=130)[0])[0])
        ratio = tempo / info["bpm"]
        assert min(abs(ratio - 1), abs(ratio - 2), abs(ratio - 0.5)) < 0.04, (tempo, info["bpm"])


def test_tracks_differ_more_than_clips_within_a_track(small_dataset):
    from pipeline.dataset import MelDataset

    ds = MelDataset(small_dataset, with_labels=True)
    profiles = np.stack([ds.stored(i).mean(dim=1).numpy() for i in range(len(ds))])  # [N, n_mels]
    labels = ds.labels
    within, between = [], []
    for i in range(len(ds)):
        for j in range(i + 1, len(ds)):
            d = np.linalg.norm(profiles[i] - profiles[j])
            (within if labels[i] == labels[j] else between).append(d)
    # each track has its own sound, so a GAN has modes to learn and metrics something to tell apart
    assert np.median(between) > 1.5 * np.median(within)


@pytest.mark.parametrize("fmt", ["mp3", "flac", "ogg"])
def test_compressed_formats_decode_with_the_right_length(tmp_path, fmt):
    [path] = synthesize(tmp_path, tracks=1, seconds=7, seed=0, fmt=fmt, progress=False)
    assert path.suffix == f".{fmt}"
    stream = ClipStream(path, MelConfig(), batch_clips=1)
    assert sum(len(b) for b in stream) == 1  # 7 s: one whole 5 s clip
    assert stream.info["declared_seconds"] == pytest.approx(7.0, abs=0.1)
    assert stream.samples / 22050 == pytest.approx(7.0, abs=0.1)
    assert (stream.info["channels"], stream.info["sample_rate"], stream.error) == (2, 44100, "")


def test_rerun_keeps_existing_tracks(tmp_path):
    [p] = synthesize(tmp_path, tracks=1, seconds=5, seed=0, progress=False)
    mtime = p.stat().st_mtime_ns
    first = (tmp_path / "tracks.json").read_text()
    synthesize(tmp_path, tracks=1, seconds=5, seed=0, progress=False)
    assert p.stat().st_mtime_ns == mtime
    assert (tmp_path / "tracks.json").read_text() == first


def test_bad_arguments():
    with pytest.raises(UserError, match="format"):
        synthesize("/tmp/never", tracks=1, seconds=1, fmt="aiff")
    with pytest.raises(UserError, match="tracks"):
        synthesize("/tmp/never", tracks=0, seconds=1)


@pytest.mark.parametrize("args,field", [
    (["--sample-rate", "0"], "sample_rate"), (["--sample-rate", "-44100"], "sample_rate"),
    (["--sample-rate", "10000000"], "sample_rate"), (["--tracks", "-1"], "tracks"),
    (["--tracks", "10000000"], "tracks"), (["--seconds", "nan"], "seconds"), (["--seconds", "inf"], "seconds"),
    (["--seconds", "0"], "seconds"), (["--seconds", "1e9"], "seconds"),
])
def test_absurd_arguments_are_refused_before_any_work(tmp_path, capsys, args, field):
    from pipeline.cli import main as cli_main

    assert cli_main(["synth", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    from pipeline.cli import main as cli_main

    (tmp_path / "f").write_text("x")
    assert cli_main(["synth", "--out", str(tmp_path / "f"), "--tracks", "1", "--seconds", "1"]) == 2
    assert "is a file" in capsys.readouterr().err
