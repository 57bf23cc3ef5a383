"""Audio clips -> the bytes of a WAV, MP3 or Ogg (Opus) file, for files and HTTP answers.

``encode_audio(audio, sample_rate, fmt)`` joins the clips the way ``wav_bytes`` does
(one after another, ``gap_seconds`` of silence between) and returns one file's bytes:

- ``wav``: ``wav_bytes`` itself (16-bit PCM, no ffmpeg needed);
- ``mp3``: LAME (ffmpeg's ``libmp3lame``), constant bitrate ``MP3_BITRATE``;
- ``ogg``: Opus in Ogg (ffmpeg's ``libopus``), ``OPUS_BITRATE``, resampled to 48 kHz.

The compressed formats go through the ``ffmpeg`` command over pipes: float32 PCM on
its stdin, the file on its stdout, nothing on disk. Reading and writing happen in one
loop (``selectors``), so neither side can block the other, the answer is bounded
(``MAX_OUTPUT_RATIO`` of the PCM: a compressed file is never bigger than its input),
ffmpeg's stderr keeps only its last ``STDERR_TAIL`` bytes, and a run past its time limit
is killed. Every failure (no ffmpeg, an encoder missing from the build, a timeout)
raises ``EncodeError`` naming what ffmpeg said.

Why Opus rather than Vorbis for ``ogg``: on a minute of rendered techno at 22.05 kHz
(``benchmarks/bench_audio.py --formats``), Opus at 48 kbps is 0.37 MB with a mel-domain
error of 0.41 dB against the WAV, Vorbis needs 0.46 MB (q 2, ~60 kbps; the lowest
qualities of libvorbis at 22.05 kHz mono do not go below ~45 kbps) for 0.43 dB; Opus
is the newer codec every current browser plays, and its Ogg pre-skip and end
granule make the decoded length exact (tested), which MP3 cannot say over a pipe.

Why these bitrates: the mel config keeps nothing above ``fmax`` (11.025 kHz at
22.05 kHz), the audio is mono and Griffin-Lim's own error (spectral convergence
~0.27, ``pipeline.audio.render``) dwarfs a codec's at these rates; 64 kbps MP3 and
48 kbps Opus keep the codec's mel error under half a dB (measured as above) while a
minute is ~0.5 MB and ~0.36 MB instead of WAV's 2.6 MB. Constant bitrate for MP3:
over a pipe ffmpeg cannot go back to write the Xing/LAME header, and without it a
browser estimates a VBR file's duration from its first frame, wrongly; a CBR file's
duration is its size over its bitrate.

MP3's one wart: without that header nothing tells a decoder to drop LAME's encoder
delay, so a decoded MP3 starts with ``MP3_DELAY_SAMPLES`` of silence (50 ms at
22.05 kHz) and ends padded to a whole frame. WAV and Ogg Opus decode to the exact length.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time

import numpy as np

from pipeline.ffmpeg import ffmpeg_binary, ffmpeg_complaint

AUDIO_FORMATS = ("wav", "mp3", "ogg")
# what browsers expect in Content-Type (and <audio type=...>)
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg; codecs=opus",
}
EXTENSIONS: dict[str, str] = {"wav": ".wav", "mp3": ".mp3", "ogg": ".ogg"}

MP3_BITRATE = "64k"
OPUS_BITRATE = "48k"
# the rates LAME encodes; any other input rate is resampled to the next one up
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATE = 48000  # Opus's native rate: decoders give 48 kHz whatever went in
# LAME's encoder delay (576) plus the MP3 decoder's (529), in samples at the file's rate
MP3_DELAY_SAMPLES = 1105

MAX_OUTPUT_RATIO = 1.0  # compressed bytes per byte of float32 PCM in, at most (+ 1 MiB of headroom)
STDERR_TAIL = 1 << 16
CHUNK = 1 << 16


class EncodeError(RuntimeError):
    """The audio could not be encoded: ffmpeg missing, failing or too slow; the message says which."""


def mp3_rate(sample_rate: int) -> int:
    """The rate an MP3 of audio at ``sample_rate`` is written at: the same when LAME takes it."""
    return next((r for r in MP3_RATES if r >= sample_rate), MP3_RATES[-1])


def _codec_args(fmt: str, sample_rate: int) -> list[str]:
    if fmt == "mp3":
        # -write_xing 0: over a pipe the header could not be completed anyway
        return ["-ar", str(mp3_rate(sample_rate)), "-c:a", "libmp3lame", "-b:a", MP3_BITRATE,
                "-write_xing", "0", "-f", "mp3"]
    if fmt == "ogg":
        # explicit resampling with FFmpeg's soxr-quality default (swr); libopus would refuse 22.05 kHz
        return ["-ar", str(OPUS_RATE), "-c:a", "libopus", "-b:a", OPUS_BITRATE, "-application", "audio",
                "-f", "ogg"]
    raise ValueError(f"format {fmt!r} unknown; choose one of {', '.join(AUDIO_FORMATS)}")


def encode_audio(audio, sample_rate: int, fmt: str, gap_seconds: float = 0.5, *,
                 ffmpeg: str | None = None, timeout_s: float | None = None) -> bytes:
    """Clips [B, samples] or [samples] (tensor or array, in [-1, 1]) -> one mono file's bytes in
    ``fmt`` (``wav``, ``mp3`` or ``ogg``), clips joined with ``gap_seconds`` of silence.

    ``ffmpeg`` is the command to run (default: the one on PATH); ``timeout_s`` the limit
    for it (default: 10 s plus the audio's duration, a hundred times what encoding takes).
    Raises ``ValueError`` for an unknown format, ``EncodeError`` when ffmpeg fails."""
    from pipeline.audio.render import joined_clips, wav_bytes

    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if fmt == "wav":
        return wav_bytes(audio, sample_rate, gap_seconds)
    args = _codec_args(fmt, int(sample_rate))
    signal = joined_clips(audio, sample_rate, gap_seconds)  # float32 [samples] in [-1, 1]
    if timeout_s is None:
        timeout_s = 10.0 + len(signal) / float(sample_rate)
    cmd = [ffmpeg or ffmpeg_binary(), "-nostdin", "-hide_banner", "-nostats", "-v", "error",
           "-f", "f32le", "-ar", str(int(sample_rate)), "-ac", "1", "-i", "pipe:0",
           "-map_metadata", "-1", *args, "pipe:1"]
    return _run(cmd, signal.astype("<f4", copy=False).tobytes(), fmt, timeout_s)


def _run(cmd: list[str], pcm: bytes, fmt: str, timeout_s: float) -> bytes:
    """Run ``cmd`` with ``pcm`` on stdin; its stdout, or EncodeError with its complaint."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:  # not found, not executable
        raise EncodeError(f"cannot encode {fmt}: cannot run {cmd[0]!r} ({e.strerror or e}); "
                          "install ffmpeg (Debian: apt-get install ffmpeg)") from None
    limit = int(len(pcm) * MAX_OUTPUT_RATIO) + (1 << 20)
    out, err = bytearray(), bytearray()
    view, sent = memoryview(pcm), 0
    deadline = time.monotonic() + timeout_s
    why = ""
    assert proc.stdin and proc.stdout and proc.stderr  # all three are pipes
    with selectors.DefaultSelector() as sel:
        for f in (proc.stdout, proc.stderr):
            os.set_blocking(f.fileno(), False)
            sel.register(f, selectors.EVENT_READ)
        if pcm:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"ffmpeg did not finish within {timeout_s:g} s"
                break
            for key, _ in sel.select(left):
                f = key.fileobj
                if f is proc.stdin:
                    try:
                        sent += os.write(f.fileno(), view[sent:sent + CHUNK])
                    except BrokenPipeError:  # ffmpeg gave up reading: its stderr says why
                        sent = len(pcm)
                    if sent >= len(pcm):
                        sel.unregister(f)
                        f.close()
                    continue
                chunk = os.read(f.fileno(), CHUNK)
                if not chunk:
                    sel.unregister(f)
                elif f is proc.stdout:
                    out += chunk
                else:
                    err += chunk
                    del err[:-STDERR_TAIL]
            if len(out) > limit:
                why = f"ffmpeg wrote more than {limit} bytes for {len(pcm)} bytes of PCM"
                break
    if why:
        proc.kill()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if not f.closed:
            f.close()
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - killed, yet still there
        proc.kill()
        rc = proc.wait()
    stderr = err.decode("utf-8", "replace")
    if why:
        raise EncodeError(f"cannot encode {fmt}: {why}" + (f" ({ffmpeg_complaint(stderr)})" if stderr.strip() else ""))
    if rc != 0:
        raise EncodeError(f"cannot encode {fmt}: {os.path.basename(cmd[0])} exited with {rc}: "
                          f"{ffmpeg_complaint(stderr)}")
    if not out:
        raise EncodeError(f"cannot encode {fmt}: ffmpeg wrote nothing ({ffmpeg_complaint(stderr)})")
    return bytes(out)


def write_audio(path: str | os.PathLike, audio, sample_rate: int, fmt: str, gap_seconds: float = 0.5) -> None:
    """Write ``encode_audio(audio, sample_rate, fmt, gap_seconds)`` to ``path`` atomically."""
    from pipeline.fsutil import atomic_write_bytes

    atomic_write_bytes(path, encode_audio(audio, sample_rate, fmt, gap_seconds))

