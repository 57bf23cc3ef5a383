"""Audio from mel spectrograms: ``MelRenderer`` (fast Griffin-Lim in torch), and files of it:
WAV (``wav_bytes``), MP3 and Ogg Vorbis (``encode_audio``, through ffmpeg)."""

from pipeline.audio.encode import (AUDIO_FORMATS, CONTENT_TYPES, EXTENSIONS, EncodeError, encode_audio,
                                   write_audio)
from pipeline.audio.render import MEL_INVERSES, MelRenderer, joined_clips, wav_bytes, write_wav

__all__ = ["AUDIO_FORMATS", "CONTENT_TYPES", "EXTENSIONS", "EncodeError", "MEL_INVERSES", "MelRenderer",
           "encode_audio", "joined_clips", "wav_bytes", "write_audio", "write_wav"]
