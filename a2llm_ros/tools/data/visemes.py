"""Phoneme -> viseme -> FLAME mouth parameters, with coarticulation.

espeak-ng reports IPA phonemes (see :mod:`a2llm_ros.tools.data.espeak`).  Each maps
to a viseme with four mouth targets: jaw opening (rad about the x axis),
mouth/lip opening, lip width and lip pucker (expression coefficients).
Diphthongs (``"eɪ"``, ``"aʊ"``) are split into two halves.  Coarticulation is a
dominance-weighted Gaussian blend (Cohen-Massaro style): bilabials and
labiodentals dominate their neighbours so lips really close on ``m/b/p``.

The meaning of the expression coefficients comes from the FLAME-format head
used by this project; change the ``EXPR_*`` indices below if it changes.
"""
from __future__ import annotations

import unicodedata
from typing import Dict, List, Sequence, Tuple

import numpy as np

from a2llm_ros.constants import FLAME_FPS

# Expression coefficient indices (first components of the project's head model).
EXPR_MOUTH_OPEN = 0
EXPR_LIP_WIDTH = 1
EXPR_LIP_PUCKER = 2
EXPR_BROW_RAISE = 3
EXPR_BROW_FURROW = 4
EXPR_EYELID_CLOSE = 5
EXPR_CHEEK_RAISE = 6
#: Jaw opening is a positive rotation about this axis of the jaw axis-angle.
JAW_OPEN_AXIS = 0

#: Columns of a mouth track.
MOUTH_CHANNELS = ("jaw", "open", "width", "pucker")
#: Internal rate of the coarticulation blend (Hz).
BLEND_RATE = 100
#: Standard deviation of the coarticulation kernel (s).
COARTICULATION_SIGMA = 0.025

#: viseme -> (jaw rad, mouth open, lip width, pucker, dominance)
VISEMES: Dict[str, Tuple[float, float, float, float, float]] = {
    "rest": (0.0, 0.0, 0.0, 0.0, 0.3),
    "bilabial": (0.0, -1.0, 0.0, 0.1, 4.0),      # m b p: lips pressed
    "labiodental": (0.04, -0.5, 0.2, 0.0, 4.0),  # f v: lower lip to teeth
    "dental": (0.07, 0.3, 0.2, 0.0, 1.5),        # θ ð
    "alveolar": (0.06, 0.15, 0.15, 0.0, 1.0),    # t d n l s z r
    "postalveolar": (0.06, 0.2, -0.2, 0.6, 2.0),  # ʃ ʒ tʃ dʒ: slightly rounded
    "velar": (0.10, 0.3, 0.0, 0.0, 0.8),         # k g ŋ h j
    "open": (0.30, 1.0, 0.1, 0.0, 1.2),          # ɑ a æ ʌ ɐ
    "mid": (0.20, 0.6, 0.3, 0.0, 1.0),           # e ɛ ə ɜ
    "wide": (0.08, 0.3, 0.8, -0.2, 1.0),         # i ɪ
    "rounded": (0.12, 0.4, -0.5, 1.0, 1.5),      # u ʊ o ɔ w ɒ
}

_SYMBOL_VISEME = {
    **dict.fromkeys("mbp", "bilabial"), **dict.fromkeys("fv", "labiodental"),
    **dict.fromkeys("θð", "dental"),
    **dict.fromkeys("tdnlszrɹɾɫ", "alveolar"), **dict.fromkeys("ʃʒ", "postalveolar"),
    **dict.fromkeys("kgɡŋhjxʔç", "velar"),
    **dict.fromkeys("ɑaæʌɐɶ", "open"), **dict.fromkeys("eɛəɜɚɝ", "mid"),
    **dict.fromkeys("iɪyɨ", "wide"), **dict.fromkeys("uʊoɔwɒɵʉ", "rounded"),
}
_WHOLE = {"tʃ": "postalveolar", "dʒ": "postalveolar", "_": "rest", "": "rest"}
_VOWELS = set("ɑaæʌɐɶeɛəɜɚɝiɪyɨuʊoɔɒɵʉ")
_DROP = set("ˈˌːˑ.'-")


def clean_phoneme(phoneme: str) -> str:
    """Strip stress/length marks and combining diacritics from an IPA phoneme."""
    out = [c for c in unicodedata.normalize("NFD", phoneme)
           if c not in _DROP and not unicodedata.combining(c)]
    return "".join(out)


def phoneme_visemes(phoneme: str) -> List[str]:
    """One viseme name, or two for a diphthong (first and second half)."""
    ph = clean_phoneme(phoneme)
    if ph in _WHOLE:
        return [_WHOLE[ph]]
    vowels = [c for c in ph if c in _VOWELS]
    if len(vowels) >= 2:
        return [_SYMBOL_VISEME[vowels[0]], _SYMBOL_VISEME[vowels[-1]]]
    for c in ph:
        if c in _SYMBOL_VISEME:
            return [_SYMBOL_VISEME[c]]
    return ["rest"]


def viseme_segments(phonemes: Sequence[Tuple[str, float, float]]
                    ) -> List[Tuple[str, float, float]]:
    """Phoneme spans -> viseme spans (diphthongs split at their midpoint)."""
    out = []
    for ph, start, end in phonemes:
        names = phoneme_visemes(ph)
        step = (end - start) / len(names)
        for i, name in enumerate(names):
            out.append((name, start + i * step, start + (i + 1) * step))
    return out


def _blend_targets(segments, n_steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-step targets [n_steps, 4] and dominance [n_steps] (rest where nothing)."""
    rest = VISEMES["rest"]
    targets = np.tile(np.asarray(rest[:4], np.float64), (n_steps, 1))  # [S, 4]
    weights = np.full(n_steps, rest[4], np.float64)  # [S]
    for name, start, end in segments:
        a = int(round(start * BLEND_RATE))
        b = max(a + 1, int(round(end * BLEND_RATE)))
        a, b = min(a, n_steps), min(b, n_steps)
        targets[a:b] = VISEMES[name][:4]
        weights[a:b] = VISEMES[name][4]
    return targets, weights


def _gaussian_kernel(sigma_s: float, rate: int) -> np.ndarray:
    sigma = max(sigma_s * rate, 1e-6)
    half = int(np.ceil(3 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def mouth_track(phonemes: Sequence[Tuple[str, float, float]], n_frames: int,
                fps: int = FLAME_FPS, sigma_s: float = COARTICULATION_SIGMA) -> np.ndarray:
    """Mouth parameters ``[n_frames, 4]`` (columns :data:`MOUTH_CHANNELS`).

    Targets are laid out at :data:`BLEND_RATE`, blended with a dominance-weighted
    Gaussian kernel and averaged over each FLAME frame.
    """
    steps_per_frame = BLEND_RATE // fps
    n_steps = n_frames * steps_per_frame
    targets, weights = _blend_targets(viseme_segments(phonemes), n_steps)
    kernel = _gaussian_kernel(sigma_s, BLEND_RATE)
    num = np.stack([np.convolve(targets[:, c] * weights, kernel, mode="same")
                    for c in range(targets.shape[1])], axis=1)  # [S, 4]
    den = np.convolve(weights, kernel, mode="same")[:, None]  # [S, 1]
    blended = num / np.maximum(den, 1e-9)
    return blended.reshape(n_frames, steps_per_frame, -1).mean(axis=1)  # [T, 4]
