"""Decode any audio file to mono float32 at one sample rate, in bounded blocks.

Three decoders, tried in this order unless one is asked for by name:

- ``soundfile``: libsndfile (WAV, FLAC, OGG, MP3) with soxr for the rate change, in
  process. The fastest here (mp3: ~1.4x PyAV's CPU time per audio second, measured),
  so it goes first. Mono and stereo only, mixed down with FFmpeg's stereo->mono
  weights; its samples differ from FFmpeg's resampler by ~0.3 % RMS (another
  anti-alias filter), which the mels absorb within the tolerance that
  ``tests/pipeline/test_decode.py`` states.
- ``pyav``: FFmpeg's own libraries in process (PyAV bundles them), for every other
  format and for surround. Its resampler and downmix are the ones the ffmpeg command
  line uses, so its samples are the command line's, bit for bit.
- ``ffmpeg``: the ``ffmpeg`` command through a pipe, the fallback for whatever the
  other two cannot open.

A decoder that cannot *open* a file hands it to the next; an error after audio has
come out ends the stream there (what decoded is kept and the error reported), since
switching decoders mid-file could shift the clips.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.config import MelConfig
from pipeline.ffmpeg import empty_info, ffmpeg_binary, ffmpeg_complaint, probe

DECODERS = ("soundfile", "pyav", "ffmpeg")
BLOCK_FRAMES = 1 << 16  # input frames per read for soundfile: ~1.5 s at 44.1 kHz
# FFmpeg's stereo->mono downmix: each side at -3 dB, not normalised
STEREO_TO_MONO = np.float32(np.sqrt(0.5))
# give up on a file after this many packets in a row that fail to decode
MAX_BAD_PACKETS = 64
PYAV_BLOCK = 1 << 14  # output samples per block from PyAV's resampler


class OpenFailed(Exception):
    """This decoder cannot read this file at all; the next one may."""


def _utf8_name(path: Path) -> bool:
    try:
        os.fspath(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class Blocks:
    """What an opened decoder gives: the input's description and an iterator over
    mono float32 blocks at the target rate. ``error`` is set if decoding stopped early."""

    def __init__(self, info: dict, blocks: Iterator[np.ndarray]):
        self.info = info
        self.blocks = blocks
        self.error = ""


# ----------------------------------------------------------------------------- PyAV


def _open_pyav(path: Path, sr: int) -> Blocks:
    import av

    # libav* are handed a file object when the name is not UTF-8: PyAV encodes str names as UTF-8
    src = path if _utf8_name(path) else open(path, "rb")
    try:
        container = av.open(src if not isinstance(src, Path) else os.fspath(src), mode="r")
    except (av.FFmpegError, UnicodeError, ValueError) as e:
        if not isinstance(src, Path):
            src.close()
        if isinstance(e, av.FFmpegError) and isinstance(e, FileNotFoundError):
            raise FileNotFoundError(path) from None
        raise OpenFailed(_av_message(e)) from None
    if not container.streams.audio:
        container.close()
        raise OpenFailed("no audio stream")
    stream = container.streams.audio[0]
    cc = stream.codec_context
    if not cc.sample_rate or not cc.channels:
        container.close()
        raise OpenFailed(f"no decodable audio ({cc.codec.name} stream without a sample rate or channels)")
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    elif container.duration:
        declared = container.duration / 1e6
    else:
        declared = float("nan")
    info = {"codec": stream.codec_context.codec.name, "channels": int(cc.channels),
            "sample_rate": int(cc.sample_rate), "declared_seconds": declared}
    out = Blocks(info, iter(()))
    out.blocks = _pyav_blocks(container, stream, sr, out, None if isinstance(src, Path) else src)
    return out


def _av_message(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _pyav_blocks(container, stream, sr: int, out: Blocks, fileobj) -> Iterator[np.ndarray]:
    import av

    # whole blocks out of the resampler's FIFO: fewer, larger arrays (~10 % less CPU, measured)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sr, frame_size=PYAV_BLOCK)
    bad = 0
    try:
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:
                    # as the command line does: skip a corrupt packet, give up after many
                    bad += 1
                    out.error = f"pyav: {_av_message(e)}"
                    if bad >= MAX_BAD_PACKETS:
                        return
                    continue
                bad = 0
                for frame in frames:
                    for o in resampler.resample(frame):
                        yield o.to_ndarray()[0]
        except av.FFmpegError as e:
            out.error = f"pyav: {_av_message(e)}"
        for o in resampler.resample(None):
            yield o.to_ndarray()[0]
    finally:
        container.close()
        if fileobj is not None:
            fileobj.close()


# ----------------------------------------------------------------------------- libsndfile + soxr


def _open_soundfile(path: Path, sr: int) -> Blocks:
    import soundfile as sf

    fileobj = None if _utf8_name(path) else open(path, "rb")
    try:
        f = sf.SoundFile(fileobj if fileobj is not None else os.fspath(path))
    except sf.LibsndfileError as e:
        if fileobj is not None:
            fileobj.close()
        if not path.exists():
            raise FileNotFoundError(path) from None
        raise OpenFailed(str(e)) from None
    if f.channels > 2:
        f.close()
        if fileobj is not None:
            fileobj.close()
        # FFmpeg's surround downmix weighs each speaker; left to pyav/ffmpeg to stay identical
        raise OpenFailed(f"{f.channels} channels: left to FFmpeg's downmix")
    declared = f.frames / f.samplerate if f.frames > 0 and f.seekable() else float("nan")
    info = {"codec": {"FLAC": "flac", "MPEG": "mp3"}.get(f.format, f.subtype.lower()), "channels": f.channels,
            "sample_rate": f.samplerate, "declared_seconds": declared}
    out = Blocks(info, iter(()))
    out.blocks = _soundfile_blocks(path, f, sr, out, fileobj)
    return out


def _soundfile_blocks(path: Path, f, sr: int, out: Blocks, fileobj) -> Iterator[np.ndarray]:
    import soundfile as sf
    import soxr

    rs = soxr.ResampleStream(f.samplerate, sr, 1, dtype="float32", quality="HQ") if f.samplerate != sr else None
    done = 0
    try:
        while True:
            try:
                x = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
            except sf.LibsndfileError as e:
                # a read that hits damage returns nothing: go back and keep what small reads still give
                out.error = f"soundfile: {e}"
                x = _salvage(path, done, f.channels)
            done += len(x)
            last = len(x) < BLOCK_FRAMES
            mono = x[:, 0] if f.channels == 1 else (x[:, 0] + x[:, 1]) * STEREO_TO_MONO
            if rs is not None:
                mono = rs.resample_chunk(np.ascontiguousarray(mono), last=last)
            if len(mono):
                yield mono
            if last:
                return
    finally:
        f.close()
        if fileobj is not None:
            fileobj.close()


def _salvage(path: Path, start: int, channels: int, step: int = 1024) -> np.ndarray:
    """The frames from ``start`` up to the first damaged read, ``step`` frames at a time,
    from a fresh handle (libsndfile's is unusable after a failed read)."""
    import soundfile as sf

    got = []
    try:
        with open(path, "rb") as fh, sf.SoundFile(fh) as f:
            f.seek(start)
            while len(x := f.read(step, dtype="float32", always_2d=True)):
                got.append(x)
                if len(x) < step:
                    break
    except (sf.LibsndfileError, RuntimeError, OSError):
        pass
    return np.concatenate(got) if got else np.zeros((0, channels), np.float32)


# ----------------------------------------------------------------------------- the ffmpeg command line


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: ffmpeg blocks, and both sides switch, 16x less often."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default still works


def _open_ffmpeg(path: Path, sr: int) -> Blocks:
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    info = probe(path)
    info.pop("error", None)  # ffmpeg itself says what is wrong, below
    out = Blocks(info, iter(()))
    out.blocks = _ffmpeg_blocks(path, sr, out)
    return out


def _ffmpeg_blocks(path: Path, sr: int, out: Blocks) -> Iterator[np.ndarray]:
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-nostats", "-v", "error", "-i", os.fspath(path),
           "-map", "0:a:0", "-ac", "1", "-ar", str(sr), "-f", "f32le", "-"]
    # stderr to a file, not a pipe: a file full of errors must not block ffmpeg
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        stdout = proc.stdout
        assert stdout is not None  # stdout=PIPE
        _grow_pipe(stdout.fileno())
        try:
            carry = b""
            while chunk := stdout.read(1 << 20):
                chunk = carry + chunk
                whole = len(chunk) // 4 * 4
                carry = chunk[whole:]
                if whole:
                    yield np.frombuffer(chunk[:whole], dtype="<f4")
        finally:
            stdout.close()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            out.error = f"ffmpeg exited with {rc}: {ffmpeg_complaint(err.read().decode('utf-8', 'replace'))}"


OPENERS: dict[str, Callable[[Path, int], Blocks]] = {
    "pyav": _open_pyav, "soundfile": _open_soundfile, "ffmpeg": _open_ffmpeg}


def open_audio(path: Path, sr: int, decoder: str = "auto") -> tuple[str, Blocks]:
    """The first decoder (``auto``: soundfile, pyav, ffmpeg) that opens ``path``, and its blocks.
    Raises OpenFailed with every decoder's reason when none can."""
    names = DECODERS if decoder == "auto" else (decoder,)
    if decoder != "auto" and decoder not in OPENERS:
        raise ValueError(f"decoder must be auto or one of {', '.join(DECODERS)}, got {decoder!r}")
    reasons = []
    for name in names:
        try:
            return name, OPENERS[name](path, sr)
        except OpenFailed as e:
            reasons.append(f"{name}: {e}")
    raise OpenFailed("; ".join(reasons))


class ClipStream:
    """Decode a file to mono float32 at ``cfg.sample_rate`` and iterate over batches of whole clips
    [K, clip_samples]; the trailing partial clip is dropped. A batch is a view of a
    reused buffer: use it before asking for the next one.

    After iteration: ``samples`` decoded in total, ``decoder`` (which one read it),
    ``info`` (codec, channels, sample_rate, declared_seconds of the input) and
    ``error`` (why decoding failed or stopped early, else "").
    """

    def __init__(self, path: Path, cfg: MelConfig, batch_clips: int, decoder: str = "auto"):
        self.path, self.sr, self.n = Path(path), cfg.sample_rate, cfg.clip_samples
        self.batch_clips, self.want = batch_clips, decoder
        self.samples = 0
        self.error = ""
        self.decoder = ""
        self.info: dict = empty_info()

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            self.decoder, src = open_audio(self.path, self.sr, self.want)
        except OpenFailed as e:
            self.error = str(e)
            return
        self.info = src.info
        n, k = self.n, self.batch_clips
        buf = np.empty(n * k, np.float32)
        filled = 0
        try:
            for block in src.blocks:
                self.samples += len(block)
                pos = 0
                while pos < len(block):
                    take = min(len(buf) - filled, len(block) - pos)
                    buf[filled:filled + take] = block[pos:pos + take]
                    filled += take
                    pos += take
                    if filled == len(buf):
                        yield buf.reshape(k, n)
                        filled = 0
        finally:
            close = getattr(src.blocks, "close", None)  # a generator: runs its clean-up now
            if close is not None:
                close()
        self.error = src.error
        whole = filled // n
        if whole:
            yield buf[:whole * n].reshape(whole, n)
