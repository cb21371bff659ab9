"""WAV reading and writing (soundfile) with clear errors.

:func:`read_wav` always returns mono float32 ``[N]`` in [-1, 1]; a file at a
different rate is resampled to the requested rate when ``resample=True``
(default) and rejected otherwise.  Empty files and files containing NaN/Inf
raise :class:`ValueError` naming the file.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import numpy as np
import soundfile

from a2llm_ros.audio.signals import resample as resample_wave
from a2llm_ros.constants import SAMPLE_RATE

PathLike = Union[str, os.PathLike]


def read_wav(path: PathLike, sample_rate: Optional[int] = SAMPLE_RATE,
             resample: bool = True) -> np.ndarray:
    """Read an audio file as mono float32 ``[N]`` at ``sample_rate``.

    ``sample_rate=None`` keeps the file's rate (see :func:`read_wav_with_rate`).
    Raises FileNotFoundError, or ValueError for unreadable/empty/non-finite
    audio or (with ``resample=False``) a rate mismatch.
    """
    wave, rate = read_wav_with_rate(path)
    if sample_rate is None or rate == sample_rate:
        return wave
    if not resample:
        raise ValueError(f"{os.fspath(path)}: sample rate {rate} Hz, expected "
                         f"{sample_rate} Hz (pass resample=True to convert)")
    return resample_wave(wave, rate, sample_rate)


def read_wav_with_rate(path: PathLike) -> Tuple[np.ndarray, int]:
    """Read an audio file as (mono float32 ``[N]``, its sample rate)."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"audio file not found: {name}")
    try:
        data, rate = soundfile.read(name, dtype="float32", always_2d=True)  # [N, C]
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise ValueError(f"{name}: cannot read audio ({exc})") from exc
    if data.shape[0] == 0:
        raise ValueError(f"{name}: audio file is empty (0 samples)")
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: audio contains NaN or Inf samples")
    return data.mean(axis=1).astype(np.float32), int(rate)


def write_wav(path: PathLike, wave, sample_rate: int = SAMPLE_RATE,
              subtype: str = "PCM_16") -> None:
    """Write mono ``[N]`` (or ``[N, C]``) float audio; values are clipped to [-1, 1].

    Accepts numpy arrays or torch tensors.  Raises ValueError for empty or
    non-finite audio, naming the file.
    """
    name = os.fspath(path)
    if hasattr(wave, "detach"):
        wave = wave.detach().cpu().numpy()
    data = np.asarray(wave, dtype=np.float32)
    if data.size == 0:
        raise ValueError(f"{name}: refusing to write empty audio")
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: audio to write contains NaN or Inf samples")
    if data.ndim not in (1, 2):
        raise ValueError(f"{name}: expected [N] or [N, C] audio, got shape {data.shape}")
    soundfile.write(name, np.clip(data, -1.0, 1.0), int(sample_rate), subtype=subtype)
