"""Audio from mel spectrograms: ``MelRenderer`` (fast Griffin-Lim in torch) and WAV helpers."""

from pipeline.audio.render import MEL_INVERSES, MelRenderer, wav_bytes, write_wav

__all__ = ["MEL_INVERSES", "MelRenderer", "wav_bytes", "write_wav"]
