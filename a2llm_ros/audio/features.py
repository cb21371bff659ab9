"""Torch-side audio front end: the log-mel of :mod:`a2llm_ros.audio.mel` as tensors, its
inverse for the speech codec, resampling and mono mixdown.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from a2llm_ros.audio import mel
from a2llm_ros.audio.mel import hz_to_mel, mel_to_hz  # noqa: F401 (re-exported)
from a2llm_ros.audio.signals import resample as resample_array
from a2llm_ros.model.configs import MelConfig

ArrayLike = Union[np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------- torch wrappers

def mel_filterbank(cfg: MelConfig) -> torch.Tensor:
    """:func:`a2llm_ros.audio.mel.mel_filterbank`, float32 ``[n_mels, n_fft // 2 + 1]``."""
    return torch.from_numpy(mel.mel_filterbank(cfg))


def hann_window(n_fft: int) -> torch.Tensor:
    """:func:`a2llm_ros.audio.mel.hann_window` (periodic), float32 ``[n_fft]``."""
    return torch.from_numpy(mel.hann_window(n_fft))


def _array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, np.float32)


def mel_power(wave: ArrayLike, cfg: MelConfig,
              filters: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`a2llm_ros.audio.mel.mel_power` of a ``[N]`` / ``[B, N]`` wave, as a tensor."""
    return torch.from_numpy(mel.mel_power(_array(wave), cfg,
                                          None if filters is None else _array(filters)))


def log_mel_spectrogram(wave: ArrayLike, cfg: Optional[MelConfig] = None,
                        filters: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`a2llm_ros.audio.mel.log_mel` of ``[N]`` or ``[B, N]``, as a float32 tensor
    ``[.., n_mels, (N + pad_samples) // hop]``."""
    return torch.from_numpy(mel.log_mel(_array(wave), cfg,
                                        None if filters is None else _array(filters)))


def mel_power_from_log_mel(log_mel: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Invert the normalisation: ``[.., M, T]`` log-mel -> mel power (floor removed).

    Exact only for ``cfg.dynamic_range == 0``; values at the floor map to 0.
    """
    power = 10.0 ** (log_mel * cfg.scale - cfg.offset)  # [.., M, T]
    return (power - cfg.log_floor).clamp_min(0.0)


# ----------------------------------------------------------------------------- resampling

def resample(wave: ArrayLike, from_rate: int, to_rate: int) -> ArrayLike:
    """:func:`a2llm_ros.audio.signals.resample` for numpy arrays or torch tensors
    (``[N]`` or ``[B, N]``); returns the input's type (float32)."""
    if isinstance(wave, torch.Tensor):
        return torch.from_numpy(resample_array(wave.detach().cpu().numpy(), from_rate, to_rate))
    return resample_array(wave, from_rate, to_rate)


def to_mono(wave: ArrayLike) -> ArrayLike:
    """Mix ``[N, C]`` (soundfile layout: frames x channels) down to ``[N]``.

    A 1-D ``[N]`` input is returned unchanged (as float32).
    """
    if wave.ndim == 1:
        return wave.float() if isinstance(wave, torch.Tensor) else wave.astype(np.float32)
    if wave.ndim != 2:
        raise ValueError(f"to_mono expects [N] or [N, C], got shape {tuple(wave.shape)}")
    if isinstance(wave, torch.Tensor):
        return wave.float().mean(dim=1)
    return np.asarray(wave, dtype=np.float32).mean(axis=1)
