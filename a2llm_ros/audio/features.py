"""Torch-side audio front end: log-mel spectrogram of tensors, its inverse for the speech
codec, resampling and mono mixdown.

The recipe is in :mod:`a2llm_ros.audio.mel` (its docstring), which also holds the mel scale
and filterbank (one definition) and the NumPy log-mel that the engine backends use without
torch.  The torch log-mel here is what the model was trained with;
``test_audio_features.py`` checks that the two agree for every preset.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from a2llm_ros.audio import mel
from a2llm_ros.audio.mel import BAND_NORM_RANGE, hz_to_mel, mel_to_hz  # noqa: F401
from a2llm_ros.audio.signals import resample as resample_array
from a2llm_ros.model.configs import MelConfig

ArrayLike = Union[np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------- torch wrappers

def mel_filterbank(cfg: MelConfig) -> torch.Tensor:
    """:func:`a2llm_ros.audio.mel.mel_filterbank`, float32 ``[n_mels, n_fft // 2 + 1]``."""
    return torch.from_numpy(mel.mel_filterbank(cfg))


def hann_window(n_fft: int) -> torch.Tensor:
    """Periodic Hann window, float32 ``[n_fft]`` (``torch.hann_window``; the speech codec's
    Griffin-Lim and its exported graph use this one)."""
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32)


def power_spectrogram(wave: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """|STFT|^2 of ``[N]`` or ``[B, N]`` -> ``[F, T]`` or ``[B, F, T]``, ``T = N // hop``."""
    if wave.shape[-1] <= cfg.n_fft // 2:
        raise ValueError(f"wave too short for the STFT: {wave.shape[-1]} samples "
                         f"(need > {cfg.n_fft // 2})")
    spec = torch.stft(wave.float(), cfg.n_fft, cfg.hop, window=hann_window(cfg.n_fft),
                      center=True, pad_mode="reflect", return_complex=True)  # [.., F, T + 1]
    return spec[..., :-1].abs() ** 2  # [.., F, T]


def mel_power(wave: torch.Tensor, cfg: MelConfig,
              filters: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mel power spectrogram ``[.., n_mels, T]`` of a ``[N]`` / ``[B, N]`` wave."""
    filters = mel_filterbank(cfg) if filters is None else filters  # [M, F]
    return filters @ power_spectrogram(wave, cfg)  # [.., M, T]


def log_mel_spectrogram(wave: ArrayLike, cfg: Optional[MelConfig] = None,
                        filters: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalised log-mel of ``[N]`` or ``[B, N]`` -> ``[.., n_mels, (N + pad_samples) // hop]``.

    ``filters`` may pass a precomputed :func:`mel_filterbank` for speed.
    """
    cfg = cfg or MelConfig()
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if cfg.pad_samples:
        wave = torch.nn.functional.pad(wave, (0, cfg.pad_samples))
    log = torch.log10(mel_power(wave, cfg, filters).clamp_min(cfg.log_floor))  # [.., M, T]
    if cfg.dynamic_range > 0:
        peak = log.amax(dim=(-2, -1), keepdim=True)  # [.., 1, 1]
        log = torch.maximum(log, peak - cfg.dynamic_range)
    out = (log + cfg.offset) / cfg.scale
    if cfg.band_norm:
        out = out - speech_band_mean(log, out)
    return out


def speech_band_mean(log: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-band mean of ``values`` [.., M, T] over the speech frames of ``log`` -> [.., M, 1].

    Speech frames: mean log level over the bands within :data:`BAND_NORM_RANGE`
    of the loudest frame (always at least that frame).
    """
    level = log.mean(dim=-2)  # [.., T]
    speech = (level >= level.amax(dim=-1, keepdim=True) - BAND_NORM_RANGE).to(values.dtype)
    total = (values * speech.unsqueeze(-2)).sum(dim=-1, keepdim=True)  # [.., M, 1]
    return total / speech.sum(dim=-1)[..., None, None]


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
