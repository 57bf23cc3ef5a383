"""The real batches a training run reads: fixed clips or random windows (``data.crop``)."""

import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.dataset import MelDataset, join_crop
from pipeline.train.data import BatchStream, RandomWindows


def _batches(stream, epoch=0, batch=0, epochs=2):
    return {(e, b): x for e, b, x in stream.iterate(epoch, batch, epochs)}


def test_random_windows_are_read_from_their_starts_and_change_every_epoch(small_dataset):
    ds = MelDataset(small_dataset, resolution=32)
    windows = RandomWindows(ds, seed=5)
    fixed = _batches(BatchStream(ds, 8, seed=1, progress=False))
    cut = _batches(BatchStream(windows, 8, seed=1, progress=False))
    assert fixed.keys() == cut.keys() and len(cut) == 8  # 36 clips: 4 full batches an epoch
    # the same items in the same order, each read from its window: start 0 is the stored clip
    order = BatchStream(ds, 8, seed=1, progress=False).epoch_batches(0)[0]
    starts = windows.starts(0)[order]
    assert (starts > 0).any() and (windows.starts(0)[windows.next < 0] == 0).all()
    for k, i in enumerate(order.tolist()):
        if starts[k] == 0:
            assert torch.equal(cut[0, 0][k], fixed[0, 0][k])
        else:
            assert not torch.allclose(cut[0, 0][k], fixed[0, 0][k], atol=1e-3)
            nxt = int(windows.next[i])
            want = join_crop(ds.stored(i)[None], ds.stored(nxt)[None], windows.peaks[i:i + 1],
                             windows.peaks[nxt:nxt + 1], starts[k:k + 1], ds.mel_config)
            assert torch.allclose(cut[0, 0][k], torch.nn.functional.interpolate(
                want[:, None], size=(32, 32), mode="bilinear", antialias=True)[0].clamp(-1, 1), atol=1e-5)
    assert not torch.equal(windows.starts(0), windows.starts(1))  # new windows every epoch
    assert torch.equal(windows.starts(1), RandomWindows(ds, seed=5).starts(1))  # a pure function of the epoch
    assert cut[1, 3].min() >= -1 and cut[1, 3].max() <= 1


def test_random_windows_resume_and_stream_as_they_cache(small_dataset):
    ds = MelDataset(small_dataset, resolution=32)
    cached = _batches(BatchStream(RandomWindows(ds, seed=2), 8, seed=0, progress=False))
    streamed = _batches(BatchStream(RandomWindows(ds, seed=2), 8, seed=0, cache=False, progress=False))
    resumed = _batches(BatchStream(RandomWindows(ds, seed=2), 8, seed=0, progress=False), epoch=1, batch=2)
    assert cached.keys() == streamed.keys()
    assert all(torch.equal(cached[k], streamed[k]) for k in cached)  # the shards give what the cache gives
    assert list(resumed) == [(1, 2), (1, 3)]
    assert all(torch.equal(resumed[k], cached[k]) for k in resumed)  # a resume reads the same windows


def test_the_crop_setting_is_checked_by_name(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {crop: random}\n")
    assert load_config(p).data.crop == "random"
    assert load_config(None).data.crop == "fixed"  # the study's cuts unless asked
    p.write_text("data: {crop: sometimes}\n")
    with pytest.raises(ConfigError, match=r"data\.crop"):
        load_config(p)
