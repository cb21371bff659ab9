"""Deterministic test signals (no files, no randomness beyond a seed), trimming and
resampling of NumPy waves (torch-free)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import scipy.signal

from a2llm_ros.constants import SAMPLE_RATE

__all__ = ["synthetic_question", "trim_silence", "resample"]


def synthetic_question(seconds: float, seed: int = 0) -> np.ndarray:
    """A deterministic voiced-like test signal (harmonics + noise), float32 [N]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    x = sum(np.sin(h * phase) / h for h in range(1, 10)) + 0.05 * rng.standard_normal(t.size)
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def trim_silence(wave: np.ndarray, level: float) -> np.ndarray:
    """``wave`` [N] from its first to its last sample above ``level`` in magnitude
    (empty when none is)."""
    loud = np.flatnonzero(np.abs(wave) > level)
    return wave[loud[0]:loud[-1] + 1] if len(loud) else wave[:0]


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (``scipy.signal.resample_poly``):
    float32 ``[N]`` or ``[B, N]`` -> ``ceil(N * to_rate / from_rate)`` samples."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    data = np.asarray(wave)
    if from_rate == to_rate:
        return data.astype(np.float32, copy=True)
    ratio = Fraction(int(to_rate), int(from_rate))
    return scipy.signal.resample_poly(data.astype(np.float64), ratio.numerator,
                                      ratio.denominator, axis=-1).astype(np.float32)
