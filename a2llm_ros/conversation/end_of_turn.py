"""End-of-turn head: is the question complete at this pause?

A logistic regression on the LLM's hidden states at the prompt's last
``positions`` positions (the last audio position and the chat template after
it, ``Prompt.tail``), which the generator's prefill computes anyway: a
speculative answer started at a pause (:mod:`a2llm_ros.conversation.session`)
yields them for free.  ``p >= threshold`` commits the answer at once instead of
waiting for ``min_silence_ms``.  Trained by ``python -m
a2llm_ros.tools.training.end_of_turn`` and stored as :data:`HEAD_FILE` in the
checkpoint directory (JSON: positions, standardisation, weights, bias, threshold,
what it was trained and measured on).  A head without ``positions`` (written
before they existed) reads the last position only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from a2llm_ros.model.chat import prompt_tail

#: File of the head in a checkpoint directory.
HEAD_FILE = "end_of_turn.json"


@dataclass
class EndOfTurnHead:
    """``p(end) = sigmoid(w . (h - mean) / std + bias)`` over the hidden states ``h`` of
    the prompt's last ``positions`` positions, flattened [positions * H]."""

    mean: np.ndarray   # [positions * H]
    std: np.ndarray    # [positions * H]
    weight: np.ndarray  # [positions * H]
    bias: float
    #: Probability at or above which a pause is taken as the end of the turn.
    threshold: float
    #: ``vad.speech_pad_ms`` the head was trained with (None: not recorded); its
    #: features depend on the silence padding the utterance.
    pad_ms: Optional[float] = None
    #: Last prompt positions it reads.
    positions: int = 1

    def features(self, hidden) -> np.ndarray:
        """The head's input [positions * H] from the prompt's last hidden states [E, H]
        (E >= positions; a single state [H] when ``positions`` is 1)."""
        h = np.asarray(hidden, np.float64)
        size = self.weight.size // self.positions  # H
        rows = h.reshape(-1, size) if h.size % size == 0 else None  # [E, H]
        if rows is None or rows.shape[0] < self.positions:
            raise ValueError(f"end-of-turn head reads the hidden states of the last "
                             f"{self.positions} prompt positions ({size} values each), got "
                             f"{h.size} values; was the engine exported before the prefill "
                             f"graphs returned 'tail'?")
        return rows[-self.positions:].reshape(-1)

    def check_model(self, model) -> "EndOfTurnHead":
        """Raise ValueError unless it reads ``model``'s hidden states (an ``A2LLM`` or an
        engine's ``ModelInfo``: ``cfg.llm.hidden_size``, ``prompt(n).tail``)."""
        hidden, tail = int(model.cfg.llm.hidden_size), prompt_tail(model)
        if self.weight.size != self.positions * hidden or self.positions > tail:
            raise ValueError(f"{HEAD_FILE}: the head reads {self.positions} positions of "
                             f"{self.weight.size // self.positions} values; the model has "
                             f"hidden size {hidden} and a prompt tail of {tail} positions "
                             f"(retrain it: python -m a2llm_ros.tools.training.end_of_turn)")
        return self

    def probability(self, hidden) -> float:
        """p(the question is complete) for the prompt's last hidden states [E, H]."""
        z = float(((self.features(hidden) - self.mean) / self.std) @ self.weight + self.bias)
        return float(1.0 / (1.0 + np.exp(-z))) if np.isfinite(z) else 0.0

    def to_dict(self) -> dict:
        out = {"positions": self.positions, "mean": self.mean.tolist(),
               "std": self.std.tolist(), "weight": self.weight.tolist(), "bias": self.bias,
               "threshold": self.threshold}
        return out if self.pad_ms is None else {**out, "pad_ms": self.pad_ms}

    @classmethod
    def from_dict(cls, data: dict, path: str = HEAD_FILE) -> "EndOfTurnHead":
        try:
            arrays = [np.asarray(data[k], np.float64).reshape(-1)
                      for k in ("mean", "std", "weight")]
            bias, threshold = float(data["bias"]), float(data["threshold"])
            pad_ms = None if data.get("pad_ms") is None else float(data["pad_ms"])
            positions = int(data.get("positions", 1))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not an end-of-turn head ({err})") from err
        if len({a.size for a in arrays}) != 1 or not all(np.isfinite(a).all() for a in arrays) \
                or (arrays[1] <= 0).any() or not 0.0 < threshold < 1.0 \
                or (pad_ms is not None and not (np.isfinite(pad_ms) and pad_ms >= 0.0)) \
                or positions < 1 or arrays[0].size % positions:
            raise ValueError(f"{path}: end-of-turn head with mismatched, non-finite or "
                             f"non-positive values, a threshold outside (0, 1), a "
                             f"negative pad_ms or positions that do not divide its size")
        return cls(*arrays, bias=bias, threshold=threshold, pad_ms=pad_ms,
                   positions=positions)


def load_end_of_turn(checkpoint_dir: Optional[str]) -> Optional[EndOfTurnHead]:
    """The head stored in ``checkpoint_dir`` (None when there is none)."""
    if not checkpoint_dir:
        return None
    path = os.path.join(checkpoint_dir, HEAD_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return EndOfTurnHead.from_dict(json.load(f), path)
