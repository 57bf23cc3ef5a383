import math

import numpy as np
import soundfile as sf

from pipeline.ffmpeg import ffmpeg_complaint, probe


def test_probe_reads_ffprobes_json(tmp_path):
    p = tmp_path / "six.wav"
    sf.write(p, np.zeros((48000 * 3, 6), np.float32), 48000, subtype="PCM_24")
    info = probe(p)
    assert info == {"codec": "pcm_s24le", "channels": 6, "sample_rate": 48000, "declared_seconds": 3.0}


def test_probe_of_something_that_is_not_audio_says_why(tmp_path):
    p = tmp_path / "notes.mp3"
    p.write_text("not an mp3\n" * 100)
    info = probe(p)
    assert info["sample_rate"] == 0 and math.isnan(info["declared_seconds"])
    assert info["error"] and "@ 0x" not in info["error"]


def test_complaint_is_the_line_that_says_what_is_wrong():
    stderr = ("[mp3 @ 0x55d0c0a1b2c0] Header missing\n"
              "[in#0 @ 0x55d0c0a1b2c0] Error opening input: Invalid data found when processing input\n"
              "Error opening input file x.mp3.\n")
    assert ffmpeg_complaint(stderr) == "Error opening input: Invalid data found when processing input"
    assert ffmpeg_complaint("") == "no message"
