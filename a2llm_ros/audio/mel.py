"""Log-mel spectrogram and mel filterbank in NumPy (torch-free): the one definition.


Conventions (shared with the speech codec; :mod:`a2llm_ros.audio.features` wraps
these for torch tensors):

* Input waves are float32 in [-1, 1] at :data:`SAMPLE_RATE` (16 kHz), shaped
  ``[N]`` or ``[B, N]``.
* STFT: Hann window of ``n_fft = MEL_WINDOW = 400`` samples, hop
  ``MEL_HOP = 160`` (10 ms, 100 Hz), centred frames with reflect padding, and
  the last frame dropped as in Whisper, so ``N`` samples give exactly
  ``N // MEL_HOP`` frames; frame ``t`` is centred on sample ``t * MEL_HOP``.
* Power spectrum ``|X|^2`` -> mel filterbank -> ``log10(max(mel, log_floor))``.
  When ``dynamic_range`` > 0 the log values are also clamped from below to
  ``max - dynamic_range`` per utterance (Whisper uses 8.0, i.e. 80 dB).
  The result is normalised as ``(log + offset) / scale`` (Whisper: 4, 4).
  With ``dynamic_range == 0`` the map is invertible above the floor
  (:func:`mel_power_from_log_mel`), which the speech codec relies on.
* ``band_norm`` (off by default; on in the ``tiny`` model preset): per-utterance
  mean normalisation of every mel band, the mean taken over the speech frames
  only (mean log level within :data:`BAND_NORM_RANGE` of the loudest frame),
  so that silence padding does not move it.  It removes the average spectral
  envelope of the speaker and the channel (cepstral mean normalisation in the
  mel domain).  It makes the map non-invertible; the speech codec never
  sets it.
* Mel filterbank: ``mel_scale="slaney"`` (linear below 1 kHz, logarithmic
  above, each triangle area-normalised: Slaney's Auditory Toolbox, the
  librosa/Whisper default) or ``"htk"`` (``2595 log10(1 + f / 700)``, peak 1).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np

from a2llm_ros.model.configs import MelConfig

#: Slaney mel scale: linear part slope (Hz per mel) and log part start.
_SLANEY_F_SP = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_LOG_STEP = math.log(6.4) / 27.0
#: band_norm: frames whose mean log10 mel level is within this of the loudest
#: frame's count as speech (3.0 = 30 dB).
BAND_NORM_RANGE = 3.0


# ----------------------------------------------------------------------------- mel scale

def hz_to_mel(hz: np.ndarray, mel_scale: str = "slaney") -> np.ndarray:
    """Frequency (Hz) -> mel, elementwise."""
    hz = np.asarray(hz, dtype=np.float64)
    if mel_scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    linear = hz / _SLANEY_F_SP
    logpart = min_log_mel + np.log(np.maximum(hz, 1e-12) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_MIN_LOG_HZ, logpart, linear)


def mel_to_hz(mel: np.ndarray, mel_scale: str = "slaney") -> np.ndarray:
    """Mel -> frequency (Hz), elementwise (inverse of :func:`hz_to_mel`)."""
    mel = np.asarray(mel, dtype=np.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    linear = mel * _SLANEY_F_SP
    logpart = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOG_STEP * (mel - min_log_mel))
    return np.where(mel >= min_log_mel, logpart, linear)


def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """Triangular mel filterbank, float32 ``[n_mels, n_fft // 2 + 1]``.

    Slaney filters are area-normalised (``2 / bandwidth_hz``); HTK filters
    peak at 1.
    """
    fft_hz = np.linspace(0.0, cfg.sample_rate / 2.0, cfg.n_freqs)  # [F]
    lo, hi = hz_to_mel(cfg.fmin, cfg.mel_scale), hz_to_mel(cfg.upper_hz, cfg.mel_scale)
    edges_hz = mel_to_hz(np.linspace(lo, hi, cfg.n_mels + 2), cfg.mel_scale)  # [M + 2]
    left, centre, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - left) / (centre - left)  # [M, F]
    falling = (right - fft_hz[None, :]) / (right - centre)  # [M, F]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [M, F]
    if cfg.mel_scale == "slaney":
        weights *= (2.0 / (right - left))
    empty = int((weights.max(axis=1) <= 0).sum())
    if empty:
        warnings.warn(f"mel_filterbank: {empty} empty mel filters (n_mels={cfg.n_mels} too "
                      f"many for n_fft={cfg.n_fft}, scale {cfg.mel_scale})")
    return weights.astype(np.float32)


# ----------------------------------------------------------------------------- spectra

def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window, float32 ``[n_fft]`` (as ``torch.hann_window``)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def power_spectrogram(wave: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """|STFT|^2 of ``[N]`` or ``[B, N]`` -> ``[F, T]`` or ``[B, F, T]``, ``T = N // hop``.

    Centred frames with reflect padding of ``n_fft // 2`` on both sides; the last
    frame is dropped.
    """
    wave = np.asarray(wave, np.float32)
    if wave.shape[-1] <= cfg.n_fft // 2:
        raise ValueError(f"wave too short for the STFT: {wave.shape[-1]} samples "
                         f"(need > {cfg.n_fft // 2})")
    pad = cfg.n_fft // 2
    x = np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(pad, pad)], mode="reflect")
    n_frames = wave.shape[-1] // cfg.hop  # T (the frame centred on sample N is dropped)
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft, axis=-1)
    frames = frames[..., ::cfg.hop, :][..., :n_frames, :]  # [.., T, W]
    spec = np.fft.rfft(frames * hann_window(cfg.n_fft), axis=-1)  # [.., T, F]
    power = spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2
    return np.swapaxes(power, -1, -2)  # [.., F, T]


def mel_power(wave: np.ndarray, cfg: MelConfig,
              filters: Optional[np.ndarray] = None) -> np.ndarray:
    """Mel power spectrogram ``[.., n_mels, T]`` of a ``[N]`` / ``[B, N]`` wave."""
    filters = mel_filterbank(cfg) if filters is None else np.asarray(filters, np.float32)
    return filters @ power_spectrogram(wave, cfg)  # [.., M, T]


def log_mel(wave: np.ndarray, cfg: Optional[MelConfig] = None,
            filters: Optional[np.ndarray] = None) -> np.ndarray:
    """Normalised log-mel of ``[N]`` or ``[B, N]`` -> float32
    ``[.., n_mels, (N + pad_samples) // hop]`` (module docstring for the recipe).

    ``filters`` may pass a precomputed :func:`mel_filterbank` for speed.
    """
    cfg = cfg or MelConfig()
    wave = np.asarray(wave, np.float32)
    if cfg.pad_samples:
        wave = np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, cfg.pad_samples)])
    log = np.log10(np.maximum(mel_power(wave, cfg, filters), cfg.log_floor))  # [.., M, T]
    if cfg.dynamic_range > 0:
        peak = log.max(axis=(-2, -1), keepdims=True)  # [.., 1, 1]
        log = np.maximum(log, peak - cfg.dynamic_range)
    out = (log + cfg.offset) / cfg.scale
    if cfg.band_norm:
        out = out - speech_band_mean(log, out)
    return out.astype(np.float32)


def speech_band_mean(log: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-band mean of ``values`` [.., M, T] over the speech frames of ``log`` -> [.., M, 1].

    Speech frames: mean log level over the bands within :data:`BAND_NORM_RANGE`
    of the loudest frame (always at least that frame).
    """
    level = log.mean(axis=-2)  # [.., T]
    speech = (level >= level.max(axis=-1, keepdims=True) - BAND_NORM_RANGE).astype(values.dtype)
    total = (values * speech[..., None, :]).sum(axis=-1, keepdims=True)  # [.., M, 1]
    return total / speech.sum(axis=-1)[..., None, None]
