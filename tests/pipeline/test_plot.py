import io

import matplotlib.image as mpimg
import numpy as np
import torch

from pipeline.cli import main as cli_main
from pipeline.config import MelConfig
from pipeline.plot import plot_mel_grid


def _png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(data), format="png")


def test_grid_of_model_resolution_mels_is_a_png():
    cfg = MelConfig()
    mels = torch.rand(6, 1, 64, 64) * 2 - 1
    img = _png(plot_mel_grid(mels, cfg, title="generated"))
    one = _png(plot_mel_grid(mels[:1], cfg))
    assert img.shape[1] > one.shape[1]  # a wider grid for more clips
    assert img.std() > 0.05  # something was drawn


def test_plot_command_writes_the_file(small_dataset, tmp_path, capsys):
    out = tmp_path / "plots" / "real.png"
    assert cli_main(["plot", "--dataset", str(small_dataset), "--out", str(out), "--n", "4"]) == 0
    assert _png(out.read_bytes()).shape[0] > 100
    assert str(out) in capsys.readouterr().out
