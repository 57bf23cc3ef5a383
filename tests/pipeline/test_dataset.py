import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.dataset import MelDataset, read_index
from pipeline.errors import UserError


def test_items_at_model_resolution_in_range(small_dataset):
    ds = MelDataset(small_dataset)
    assert len(ds) == 36 and ds.n_tracks == 6
    x = ds[0]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32
    allx = torch.stack([ds[i] for i in range(len(ds))])
    assert allx.min() >= -1 and allx.max() <= 1
    assert allx.max() > 0.7 and allx.min() < -0.9  # the full range is used, not squashed
    assert ds.stored(0).max() == 1.0  # stored clips are normalised to their own peak


@pytest.mark.parametrize("res", [32, 128, 256])
def test_any_power_of_two(small_dataset, res):
    ds = MelDataset(small_dataset, resolution=res)
    assert ds[3].shape == (1, res, res)


def test_resize_preserves_content(small_dataset):
    ds = MelDataset(small_dataset, resolution=64)
    stored = ds.stored(5)  # [128, 216]
    small = ds[5][0]
    # coarse structure (mean over time per band group) matches the stored clip
    want = stored.reshape(64, 2, 216).mean(dim=(1, 2))
    got = small.mean(dim=1)
    assert torch.corrcoef(torch.stack([want, got]))[0, 1] > 0.98


def test_max_samples_is_a_deterministic_subset(small_dataset):
    a = MelDataset(small_dataset, max_samples=10, seed=1)
    b = MelDataset(small_dataset, max_samples=10, seed=1)
    c = MelDataset(small_dataset, max_samples=10, seed=2)
    assert len(a) == 10
    assert np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert torch.equal(a[0], b[0])
    assert len(MelDataset(small_dataset, max_samples=1000)) == 36  # capped at what exists


def test_labels_and_fingerprint(small_dataset):
    ds = MelDataset(small_dataset, with_labels=True)
    x, label = ds[7]
    assert x.shape == (1, 64, 64) and 0 <= label < 6
    assert sorted(set(ds.labels.tolist())) == list(range(6))
    rows = read_index(small_dataset)
    assert ds.track_ids[label] == rows[7]["track_id"]
    assert ds.fingerprint() == MelDataset(small_dataset).fingerprint()


def test_works_with_dataloader_workers(small_dataset):
    ds = MelDataset(small_dataset, resolution=32)
    batches = list(DataLoader(ds, batch_size=8, num_workers=2))
    assert torch.equal(torch.cat(batches), torch.stack([ds[i] for i in range(len(ds))]))


def test_not_a_dataset_or_bad_resolution(tmp_path, small_dataset):
    with pytest.raises(UserError, match="mel config not found"):
        MelDataset(tmp_path)
    with pytest.raises(UserError, match="power of two"):
        MelDataset(small_dataset, resolution=48)


def _copy(small_dataset, tmp_path):
    import shutil

    return Path(shutil.copytree(small_dataset, tmp_path / "ds"))


@pytest.mark.parametrize("damage", ["deleted", "truncated", "one byte short", "outside"])
def test_a_deleted_or_truncated_shard_is_a_clear_error(small_dataset, tmp_path, damage):
    ds = _copy(small_dataset, tmp_path)
    rows = read_index(ds)
    shard = ds / rows[-1]["shard"]
    if damage == "deleted":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "one byte short":
        shard.write_bytes(shard.read_bytes()[:-1])
    else:
        lines = (ds / "index.jsonl").read_text().splitlines()
        row = json.loads(lines[-1])
        row["shard"] = "../../etc/passwd"
        (ds / "index.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(row)]) + "\n")
        shard = row["shard"]
    with pytest.raises(UserError, match=re.escape(str(shard))):
        MelDataset(ds)


@pytest.mark.parametrize("line", ["{garbage", "[1, 2]", '{"track_id": "x"}', "\udcff"])
def test_a_garbage_line_in_the_index_names_the_file_and_line(small_dataset, tmp_path, line):
    ds = _copy(small_dataset, tmp_path)
    with open(ds / "index.jsonl", "ab") as f:
        f.write(line.encode("utf-8", "surrogateescape") + b"\n")
    with pytest.raises(UserError, match=r"index\.jsonl line 37 .*segment --merge"):
        read_index(ds)
    with pytest.raises(UserError, match="line 37"):
        MelDataset(ds)


def test_successors_are_the_next_clip_of_the_same_track(small_dataset):
    ds = MelDataset(small_dataset)
    rows = read_index(small_dataset)
    nxt = ds.successors()
    for i, j in enumerate(nxt):
        if j >= 0:
            assert rows[j]["track_id"] == rows[i]["track_id"] and rows[j]["clip"] == rows[i]["clip"] + 1
        else:  # only a track's last clip has none
            assert rows[i]["clip"] == max(r["clip"] for r in rows if r["track_id"] == rows[i]["track_id"])
    assert (nxt < 0).sum() == 6  # six tracks
    assert ds.peaks_db is not None and ds.peaks_db.shape == (36,)
    # a subset only follows into clips it holds (items are renumbered)
    sub = MelDataset(small_dataset, max_samples=20, seed=3)
    held = {(rows[j]["track_id"], rows[j]["clip"]) for j in sub.indices}
    for i, j in enumerate(sub.successors()):
        r = rows[sub.indices[i]]
        assert (j >= 0) == ((r["track_id"], r["clip"] + 1) in held)
        if j >= 0:
            assert rows[sub.indices[j]]["clip"] == r["clip"] + 1


def test_a_window_across_two_clips_is_the_mel_of_the_audio_there(tmp_path, mel_config):
    """The window at start s is the mel of the audio s hops into the first clip: a loud
    440 Hz clip then a 12 dB quieter 880 Hz one, joined at their levels."""
    from pipeline.dataset import join_crop
    from pipeline.mel import log_mel, normalised_to_db
    from pipeline.segment import segment
    from pipeline.config import SegmentConfig
    from tests.audio_utils import sine, write

    cfg, sr = mel_config, mel_config.sample_rate
    audio = np.concatenate([sine(440, cfg.clip_seconds, sr, amp=0.5), sine(880, cfg.clip_seconds, sr, amp=0.125)])
    write(tmp_path / "in" / "two.wav", audio, sr, subtype="FLOAT")
    segment(tmp_path / "in", tmp_path / "ds", cfg, SegmentConfig(workers=1), progress=False)
    ds = MelDataset(tmp_path / "ds")
    assert ds.successors().tolist() == [1, -1]
    first, second = ds.stored(0)[None], ds.stored(1)[None]
    peaks = torch.from_numpy(ds.peaks_db)
    # the two stored clips are each relative to their own peak: 0 dB at the top of both
    assert float(first.max()) == 1.0 and float(second.max()) == 1.0
    start = 100
    got = join_crop(first, second, peaks[:1], peaks[1:], torch.tensor([start]), cfg)[0]  # [M, T]
    want = torch.from_numpy(log_mel(audio[start * cfg.hop_length:][:cfg.clip_samples][None], cfg)[0])
    t, cut = cfg.n_frames, cfg.n_frames - start  # the second clip starts at frame ``cut`` of the window
    away = [j for j in range(2, t - 2) if abs(j - cut) > 3]  # the clips' and the window's edge frames differ
    gap = (normalised_to_db(got, cfg) - normalised_to_db(want, cfg))[:, away].abs()
    assert float(gap.max()) < 0.1  # dB, float16 storage included
    # the quieter half is 12 dB down, as in the audio, where a join ignoring levels would put both at 0 dB
    quiet = normalised_to_db(got[:, cut + 4:t - 2], cfg).max()
    assert float(quiet) == pytest.approx(float(normalised_to_db(want[:, cut + 4:t - 2], cfg).max()), abs=0.1)
    assert -14.0 < float(quiet) < -10.0
    # start 0 is the first clip itself
    assert torch.equal(join_crop(first, second, peaks[:1], peaks[1:], torch.tensor([0]), cfg), first)


def test_windows_without_recorded_peaks_are_a_clear_error(small_dataset, tmp_path):
    from pipeline.train.data import RandomWindows

    ds = _copy(small_dataset, tmp_path)
    rows = [json.loads(line) for line in (ds / "index.jsonl").read_text().splitlines()]
    (ds / "index.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "peak_db"}) + "\n"
                                            for r in rows))
    old = MelDataset(ds)
    assert old.peaks_db is None and len(old) == 36  # the dataset itself still works
    with pytest.raises(UserError, match=r"data\.crop: random needs .*run technogan segment again"):
        RandomWindows(old, seed=0)
