"""Questions with pauses inside them: the guard of early end-pointing.

Each FLAME-QA question is spoken in two parts with a silence between them: at
its comma when it has one, else before its last word.  The pauses cycle
through :data:`PAUSES_MS` (300-600 ms, the range the latency issue names), so
an end-pointer that answers after a shorter silence would cut the question.
Every :class:`PausedQuestion` knows where its speech truly ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from a2llm_ros.audio.signals import trim_silence
from a2llm_ros.constants import SAMPLE_RATE

#: Silences inserted inside the questions (ms).
PAUSES_MS = (300, 450, 600)
#: Silence before the question and after its end (s).
LEAD_S, TAIL_S = 0.5, 1.5
#: Samples at or below this level count as silence when trimming a synthesised part.
SILENCE_LEVEL = 1e-3


@dataclass
class PausedQuestion:
    """``audio`` [n] 16 kHz float32: lead silence, part 1, pause, part 2, tail silence."""

    text: str
    parts: Tuple[str, str]
    audio: np.ndarray
    pause: Tuple[int, int]   # [start, end) samples of the inserted silence
    speech_end: int          # sample where the question's speech ends

    @property
    def speech_start(self) -> int:
        """Sample where the question's speech starts (after the lead silence)."""
        return int(LEAD_S * SAMPLE_RATE)


def split_point(text: str) -> Tuple[str, str]:
    """``text`` split at its first comma, else before its last word."""
    if "," in text:
        head, tail = text.split(",", 1)
        return head.strip() + ",", tail.strip()
    words = text.split()
    if len(words) < 2:
        raise ValueError(f"cannot split a one-word question: {text!r}")
    return " ".join(words[:-1]), words[-1]


def spoken_parts(parts: Tuple[str, str], pause_ms: float, voice
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first part [a], ``pause_ms`` of silence [g], second part [b]): each part spoken
    on its own (espeak-ng) and trimmed of its leading and trailing silence."""
    from a2llm_ros.tools.data.espeak import synthesize
    head, tail = (trim_silence(synthesize(p, voice).audio, SILENCE_LEVEL) for p in parts)
    gap = np.zeros(int(round(pause_ms * SAMPLE_RATE / 1000.0)), np.float32)
    return head, gap, tail


def paused_question(text: str, pause_ms: float, voice=None) -> PausedQuestion:
    """Speak ``text`` (espeak-ng) in two parts with ``pause_ms`` of silence between."""
    from a2llm_ros.tools.data.espeak import HELD_OUT_VOICE
    parts = split_point(text)
    head, gap, tail = spoken_parts(parts, pause_ms, voice or HELD_OUT_VOICE)
    lead = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)
    end = np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)
    audio = np.concatenate([lead, head, gap, tail, end]).astype(np.float32)
    p0 = len(lead) + len(head)
    return PausedQuestion(text, parts, audio, (p0, p0 + len(gap)), p0 + len(gap) + len(tail))


def pause_fixture(texts: Sequence[str], pauses_ms: Sequence[float] = PAUSES_MS,
                  voice=None) -> List[PausedQuestion]:
    """One :class:`PausedQuestion` per text, pauses cycling through ``pauses_ms``."""
    return [paused_question(t, pauses_ms[i % len(pauses_ms)], voice)
            for i, t in enumerate(texts)]
