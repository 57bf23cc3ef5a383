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
