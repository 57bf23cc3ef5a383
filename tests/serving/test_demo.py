"""The main job's serving step: champion -> archive -> TorchServe -> JSON, PNG, WAV on disk."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline.config import MelConfig
from serving.demo import serve_demo


def test_serve_demo_saves_three_formats_and_is_idempotent(serve_run_config, champion_version, tmp_path):
    outputs = serve_demo(serve_run_config, tmp_path, expected_run_id=champion_version.run_id)
    mel = MelConfig()
    served = tmp_path / "served"
    doc = json.loads((served / "mels.json").read_text())
    assert doc["shape"] == [4, *mel.shape] and doc["seed"] == 0
    assert np.asarray(doc["mels"]).shape == (4, *mel.shape)
    assert Image.open(served / "mels.png").format == "PNG"
    audio, sr = sf.read(served / "clips.wav")
    gap = int(round(serve_run_config.serve.wav_gap_seconds * sr))
    assert sr == mel.sample_rate and len(audio) == 2 * mel.clip_samples + gap
    record = json.loads((served / "served.json").read_text())
    assert record["run_id"] == champion_version.run_id and record["version"] == str(champion_version.version)
    assert set(outputs) == {"model archive", "served json", "served png", "served wav"}
    assert (tmp_path / "model-store" / "technogan.mar").is_file()

    # a second run finds everything up to date and starts no server
    before = {p: p.stat().st_mtime_ns for p in served.glob("*.*")}
    serve_demo(serve_run_config, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in served.glob("*.*")} == before
