"""Deterministic test signals (no files, no randomness beyond a seed) and trimming."""
from __future__ import annotations

import numpy as np

from a2llm_ros.constants import SAMPLE_RATE

__all__ = ["synthetic_question", "trim_silence"]


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
