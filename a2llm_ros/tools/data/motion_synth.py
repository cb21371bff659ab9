"""Speech-driven FLAME motion for the synthetic FLAME-QA answers.

:func:`synthesize_motion` turns an answer's waveform and phoneme timings into
``[T, 58]`` float32 frames at 25 fps with ``T = round(seconds * 25)``:

* mouth: visemes with coarticulation (:mod:`a2llm_ros.tools.data.visemes`), jaw
  scaled a little by loudness;
* head: nods on rising loudness plus slow seeded drift of yaw/roll;
* brows: short raises on the strongest loudness peaks (pitch is not used);
* blinks: seeded, every 3-5 s, 150-250 ms, on both eyelid values (0 open, 1 closed);
* emotion: a constant expression offset faded in over the first 0.3 s
  (stronger for ``intensity == "high"``);
* the other expression coefficients carry only a tiny smooth noise.

Everything random comes from ``numpy.random.default_rng(seed)``: same inputs
and seed give identical arrays.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
from a2llm_ros.tools.data import visemes as vz
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, FlameLayout

#: Emotion -> {expression index: offset}, plus "jaw" (rad) and "eyelids" (closure).
EMOTION_OFFSETS: Dict[str, Dict[object, float]] = {
    "neutral": {},
    "happy": {vz.EXPR_LIP_WIDTH: 0.8, vz.EXPR_CHEEK_RAISE: 0.7, vz.EXPR_BROW_RAISE: 0.15,
              "eyelids": 0.1},
    "sad": {vz.EXPR_BROW_RAISE: 0.35, vz.EXPR_BROW_FURROW: 0.45, vz.EXPR_LIP_WIDTH: -0.45,
            vz.EXPR_MOUTH_OPEN: -0.1, "eyelids": 0.2},
    "angry": {vz.EXPR_BROW_FURROW: 0.9, vz.EXPR_BROW_RAISE: -0.35, vz.EXPR_LIP_WIDTH: -0.2,
              vz.EXPR_LIP_PUCKER: 0.15, "eyelids": 0.15},
    "surprised": {vz.EXPR_BROW_RAISE: 1.0, vz.EXPR_MOUTH_OPEN: 0.3, "jaw": 0.06},
}
INTENSITY_GAIN = {"normal": 1.0, "high": 1.5}
EMOTION_FADE_S = 0.3
BLINK_INTERVAL_S = (3.0, 5.0)
BLINK_DURATION_S = (0.15, 0.25)
HEAD_NOD_GAIN = 0.25  # rad per unit of normalised loudness rise per frame
HEAD_DRIFT_RAD = (0.02, 0.04, 0.015)  # pitch, yaw, roll drift amplitudes
BROW_PEAK_GAIN = 2.2  # raise per unit of peak prominence (before smoothing)
BROW_PEAK_MIN_GAP_S = 0.8
GENERIC_NOISE = 0.01
LOUDNESS_JAW_MIX = 0.2


def frame_count(n_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """``round(seconds * 25)`` for ``n_samples`` of audio."""
    return int(np.floor(n_samples * FLAME_FPS / float(sample_rate) + 0.5))


def frame_loudness(audio: np.ndarray, n_frames: int,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS per FLAME frame, normalised to [0, 1] by its 95th percentile ``[T]``."""
    hop = sample_rate // FLAME_FPS
    padded = np.zeros(n_frames * hop, np.float64)
    n = min(len(audio), len(padded))
    padded[:n] = audio[:n]
    rms = np.sqrt(np.mean(padded.reshape(n_frames, hop) ** 2, axis=1))  # [T]
    ref = np.percentile(rms, 95) if n_frames else 0.0
    return np.clip(rms / ref, 0.0, 1.0) if ref > 1e-8 else np.zeros(n_frames)


def _smooth_noise(rng, n_frames: int, n_dims: int, sigma_frames: float) -> np.ndarray:
    """Gaussian-smoothed white noise ``[T, D]`` with unit expected std.

    Normalised by the filter's gain (sqrt of the summed squared kernel), not by
    the sample std, so short clips keep small values.
    """
    noise = rng.standard_normal((n_frames, n_dims))
    smooth = gaussian_filter1d(noise, sigma_frames, axis=0, mode="reflect")
    impulse = np.zeros(8 * int(np.ceil(sigma_frames)) + 1)
    impulse[impulse.size // 2] = 1.0
    gain = np.sqrt(np.sum(gaussian_filter1d(impulse, sigma_frames) ** 2))
    return smooth / gain  # [T, D]


def blink_track(rng, n_frames: int) -> np.ndarray:
    """Eyelid closure ``[T]`` in 0..1 with seeded blinks every 3-5 s."""
    out = np.zeros(n_frames)
    t = rng.uniform(0.5, BLINK_INTERVAL_S[1])
    times = np.arange(n_frames) / FLAME_FPS
    while t < n_frames / FLAME_FPS:
        dur = rng.uniform(*BLINK_DURATION_S)
        phase = (times - t) / dur
        inside = (phase >= 0) & (phase <= 1)
        out[inside] = np.maximum(out[inside], np.sin(np.pi * phase[inside]))
        t += dur + rng.uniform(*BLINK_INTERVAL_S)
    return out


def head_track(rng, loudness: np.ndarray) -> np.ndarray:
    """Head rotation ``[T, 3]`` (rad): loudness-driven nods + slow drift."""
    n = len(loudness)
    drift = _smooth_noise(rng, n, 3, sigma_frames=12.0) * np.asarray(HEAD_DRIFT_RAD)
    rise = np.clip(np.diff(gaussian_filter1d(loudness, 2.0), prepend=0.0), 0.0, None)
    nod = gaussian_filter1d(rise, 2.5) * HEAD_NOD_GAIN
    drift[:, 0] += nod
    return drift


def brow_track(loudness: np.ndarray) -> np.ndarray:
    """Brow raise ``[T]``: smooth bumps on the strongest loudness peaks."""
    out = np.zeros(len(loudness))
    if len(loudness) < 3:
        return out
    smooth = gaussian_filter1d(loudness, 1.5)
    peaks, props = find_peaks(smooth, prominence=0.25,
                              distance=int(BROW_PEAK_MIN_GAP_S * FLAME_FPS))
    for p, prom in zip(peaks, props["prominences"]):
        out[p] = prom
    return gaussian_filter1d(out, 2.0) * BROW_PEAK_GAIN


def emotion_offsets(emotion: str, intensity: str, n_frames: int,
                    layout: FlameLayout) -> np.ndarray:
    """Constant emotion expression ``[T, dim]`` faded in over the first 0.3 s."""
    if emotion not in EMOTION_OFFSETS:
        raise ValueError(f"unknown emotion {emotion!r}; known: {', '.join(EMOTION_OFFSETS)}")
    gain = INTENSITY_GAIN.get(intensity, 1.0)
    frame = np.zeros(layout.dim)
    for key, value in EMOTION_OFFSETS[emotion].items():
        if key == "jaw":
            frame[layout.jaw.start + vz.JAW_OPEN_AXIS] = value
        elif key == "eyelids":
            frame[layout.eyelids] = value
        else:
            frame[layout.expr.start + key] = value
    fade = np.clip(np.arange(n_frames) / (EMOTION_FADE_S * FLAME_FPS), 0.0, 1.0)
    return fade[:, None] * frame[None, :] * gain  # [T, dim]


def synthesize_motion(audio: np.ndarray, phonemes: Sequence[Tuple[str, float, float]],
                      emotion: str = "neutral", seed: int = 0, intensity: str = "normal",
                      sample_rate: int = SAMPLE_RATE,
                      layout: FlameLayout = DEFAULT_LAYOUT) -> np.ndarray:
    """FLAME frames ``[round(seconds * 25), dim]`` float32 driven by the speech."""
    rng = np.random.default_rng(seed)
    n_frames = frame_count(len(audio), sample_rate)
    loud = frame_loudness(audio, n_frames, sample_rate)  # [T]
    mouth = vz.mouth_track(phonemes, n_frames)  # [T, 4] jaw, open, width, pucker
    out = emotion_offsets(emotion, intensity, n_frames, layout)  # [T, dim]
    expr = layout.expr.start
    jaw_gain = (1.0 - LOUDNESS_JAW_MIX) + LOUDNESS_JAW_MIX * gaussian_filter1d(loud, 1.0)
    out[:, layout.jaw.start + vz.JAW_OPEN_AXIS] += mouth[:, 0] * jaw_gain
    out[:, expr + vz.EXPR_MOUTH_OPEN] += mouth[:, 1]
    out[:, expr + vz.EXPR_LIP_WIDTH] += mouth[:, 2]
    out[:, expr + vz.EXPR_LIP_PUCKER] += mouth[:, 3]
    out[:, expr + vz.EXPR_BROW_RAISE] += brow_track(loud)
    out[:, layout.head] += head_track(rng, loud)
    generic = slice(expr + vz.EXPR_CHEEK_RAISE + 1, layout.expr.stop)
    out[:, generic] += GENERIC_NOISE * _smooth_noise(
        rng, n_frames, generic.stop - generic.start, sigma_frames=6.0)
    blinks = blink_track(rng, n_frames)
    lids = out[:, layout.eyelids] + blinks[:, None]
    out[:, layout.eyelids] = np.clip(lids, 0.0, 1.0)
    return out.astype(np.float32)
