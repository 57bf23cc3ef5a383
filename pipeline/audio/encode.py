"""Audio clips -> the bytes of a WAV, MP3 or Ogg Vorbis file, for files and HTTP answers.

``encode_audio(audio, sample_rate, fmt)`` joins the clips the way ``wav_bytes`` does
(one after another, ``gap_seconds`` of silence between) and returns one file's bytes:

- ``wav``: ``wav_bytes`` itself (16-bit PCM, no ffmpeg needed);
- ``mp3``: LAME (ffmpeg's ``libmp3lame``), constant bitrate ``MP3_BITRATE``;
- ``ogg``: Vorbis in Ogg (ffmpeg's ``libvorbis``), variable bitrate at ``VORBIS_QUALITY``.

The compressed formats go through the ``ffmpeg`` command over pipes: float32 PCM on
its stdin, the file on its stdout, nothing on disk. Reading and writing happen in one
loop (``selectors``), so neither side can block the other, the answer is bounded
(``MAX_OUTPUT_RATIO`` of the PCM: a compressed file is never bigger than its input),
ffmpeg's stderr keeps only its last ``STDERR_TAIL`` bytes, and a run past its time limit
is killed. Every failure (no ffmpeg, an encoder missing from the build, a timeout)
raises ``EncodeError`` naming what ffmpeg said.

Measured on a minute of rendered techno at 22.05 kHz (what ``generate`` and the server
encode), the codec's error as the mean absolute difference of the project's log-mel
(dB, cell by cell; Griffin-Lim's own error on this measure is ~1 dB, 16-bit WAV's
0.003 dB), size for the minute (WAV: 2646 kB):

    MP3 (CBR)      48 kbps 360 kB 1.11 dB | 64 kbps 480 kB 0.75 dB | 96 kbps 721 kB 0.47 dB
    Opus (48 kHz)  32 kbps 278 kB 1.87 dB | 48 kbps 405 kB 1.30 dB | 64 kbps 552 kB 0.68 dB
    Vorbis         q2      309 kB 1.19 dB | q3      348 kB 1.00 dB | q4      389 kB 0.82 dB

Why Vorbis rather than Opus for ``ogg``: at the error of 64 kbps MP3, Vorbis q4 is
389 kB where Opus needs ~550 kB (its VBR overshoots the asked bitrate on this
material: 48k gave 54 kbps), Vorbis encodes at the mel config's rate (Opus runs at
48 kHz only: a resampling each way) and was the faster encoder here. Both keep the exact
length (Ogg's granule positions: tested). Why these settings: they keep the codec's
error under Griffin-Lim's own, so what a listener hears is the generator, not the
codec; the mel config keeps nothing above ``fmax`` and the audio is mono, which is why
~50-64 kbps suffices. Constant bitrate for MP3: over a pipe ffmpeg cannot go back to
write the Xing/LAME header, and without it a browser estimates a VBR file's duration
from its first frame, wrongly; a CBR file's duration is its size over its bitrate.

MP3's one wart: without that header nothing tells a decoder to drop LAME's encoder
delay, so a decoded MP3 starts with ``MP3_DELAY_SAMPLES`` of silence (50 ms at
22.05 kHz) and ends padded to a whole frame. WAV and Ogg Vorbis decode to the exact length.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time

from pipeline.ffmpeg import ffmpeg_binary, ffmpeg_complaint

AUDIO_FORMATS = ("wav", "mp3", "ogg")
# what browsers expect in Content-Type (and <audio type=...>)
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg; codecs=vorbis",
}
EXTENSIONS: dict[str, str] = {"wav": ".wav", "mp3": ".mp3", "ogg": ".ogg"}

MP3_BITRATE = "64k"
VORBIS_QUALITY = "4"  # libvorbis -q (0..10): ~52 kbps for mono 22.05 kHz techno
# the rates LAME encodes; any other input rate is resampled to the next one up
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
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
        return ["-c:a", "libvorbis", "-q:a", VORBIS_QUALITY, "-f", "ogg"]
    raise ValueError(f"format {fmt!r} unknown; choose one of {', '.join(AUDIO_FORMATS)}")


def encode_audio(audio, sample_rate: int, fmt: str, gap_seconds: float = 0.5, *,
                 ffmpeg: str | None = None, timeout_s: float | None = None) -> bytes:
    """Clips [B, samples] or [samples] (tensor or array, in [-1, 1]) -> one mono file's bytes in
    ``fmt`` (``wav``, ``mp3`` or ``ogg``), clips joined with ``gap_seconds`` of silence.

    ``ffmpeg`` is the command to run (default: the one on PATH); ``timeout_s`` the limit
    for it (default: 10 s plus the audio's duration, ~70 times what encoding took here).
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
    fd_in, fd_out, fd_err = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
    with selectors.DefaultSelector() as sel:
        for fd in (fd_out, fd_err):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if pcm:
            os.set_blocking(fd_in, False)
            sel.register(fd_in, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"ffmpeg did not finish within {timeout_s:g} s"
                break
            for key, _ in sel.select(left):
                fd = key.fd
                if fd == fd_in:
                    try:
                        sent += os.write(fd, view[sent:sent + CHUNK])
                    except BrokenPipeError:  # ffmpeg gave up reading: its stderr says why
                        sent = len(pcm)
                    if sent >= len(pcm):
                        sel.unregister(fd)
                        proc.stdin.close()  # end of input: ffmpeg flushes and exits
                    continue
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    sel.unregister(fd)
                elif fd == fd_out:
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

