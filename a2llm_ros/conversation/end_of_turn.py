"""End-of-turn head: is the question complete at this pause?

A logistic regression on the LLM's hidden state at the last prompt position
(after ``<tts_start>``), which the generator's prefill computes anyway: a
speculative answer started at a pause (:mod:`a2llm_ros.conversation.session`)
yields it for free.  ``p >= threshold`` commits the answer at once instead of
waiting for ``min_silence_ms``.  Trained by ``python -m
a2llm_ros.tools.training.end_of_turn`` and stored as :data:`HEAD_FILE` in the
checkpoint directory (JSON: standardisation, weights, bias, threshold, what it
was trained and measured on).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

#: File of the head in a checkpoint directory.
HEAD_FILE = "end_of_turn.json"


@dataclass
class EndOfTurnHead:
    """``p(end) = sigmoid(w . (h - mean) / std + bias)`` over a hidden state ``h`` [H]."""

    mean: np.ndarray   # [H]
    std: np.ndarray    # [H]
    weight: np.ndarray  # [H]
    bias: float
    #: Probability at or above which a pause is taken as the end of the turn.
    threshold: float
    #: ``vad.speech_pad_ms`` the head was trained with (None: not recorded); its
    #: features depend on the silence padding the utterance.
    pad_ms: Optional[float] = None

    def probability(self, hidden) -> float:
        """p(the question is complete) for a prompt's last hidden state [H]."""
        h = np.asarray(hidden, np.float64).reshape(-1)  # [H]
        if h.shape != self.weight.shape:
            raise ValueError(f"end-of-turn head expects a hidden state of {self.weight.size} "
                             f"values, got {h.size}")
        z = float(((h - self.mean) / self.std) @ self.weight + self.bias)
        return float(1.0 / (1.0 + np.exp(-z))) if np.isfinite(z) else 0.0

    def to_dict(self) -> dict:
        out = {"mean": self.mean.tolist(), "std": self.std.tolist(),
               "weight": self.weight.tolist(), "bias": self.bias, "threshold": self.threshold}
        return out if self.pad_ms is None else {**out, "pad_ms": self.pad_ms}

    @classmethod
    def from_dict(cls, data: dict, path: str = HEAD_FILE) -> "EndOfTurnHead":
        try:
            arrays = [np.asarray(data[k], np.float64).reshape(-1)
                      for k in ("mean", "std", "weight")]
            bias, threshold = float(data["bias"]), float(data["threshold"])
            pad_ms = None if data.get("pad_ms") is None else float(data["pad_ms"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not an end-of-turn head ({err})") from err
        if len({a.size for a in arrays}) != 1 or not all(np.isfinite(a).all() for a in arrays) \
                or (arrays[1] <= 0).any() or not 0.0 < threshold < 1.0 \
                or (pad_ms is not None and not (np.isfinite(pad_ms) and pad_ms >= 0.0)):
            raise ValueError(f"{path}: end-of-turn head with mismatched, non-finite or "
                             f"non-positive values, a threshold outside (0, 1) or a "
                             f"negative pad_ms")
        return cls(*arrays, bias=bias, threshold=threshold, pad_ms=pad_ms)


def load_end_of_turn(checkpoint_dir: Optional[str]) -> Optional[EndOfTurnHead]:
    """The head stored in ``checkpoint_dir`` (None when there is none)."""
    if not checkpoint_dir:
        return None
    path = os.path.join(checkpoint_dir, HEAD_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return EndOfTurnHead.from_dict(json.load(f), path)
