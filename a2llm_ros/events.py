"""What a streaming generator emits, one turn at a time (no torch, no ROS).

:class:`a2llm_ros.generation.StreamingGenerator` produces these; the
conversation session, the node and the tools consume them and dispatch on
their type.  Audio and FLAME share one timeline: ``start_sample`` counts the
turn's samples at ``sample_rate``, ``start_frame`` its frames at ``fps``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

__all__ = ["TextEvent", "AudioEvent", "FlameEvent", "EndEvent", "Event"]


@dataclass
class TextEvent:
    """New answer text (``text`` is the increment); ``token_index`` counts text tokens."""

    turn_id: int
    text: str
    token_index: int


@dataclass
class AudioEvent:
    """Answer audio samples float32 [n] starting at ``start_sample`` of the turn."""

    turn_id: int
    samples: np.ndarray
    sample_rate: int
    start_time: float
    start_sample: int


@dataclass
class FlameEvent:
    """FLAME frames float32 [n, D] starting at ``start_frame`` of the turn."""

    turn_id: int
    frames: np.ndarray
    fps: int
    start_time: float
    start_frame: int


@dataclass
class EndEvent:
    """End of a turn: ``reason`` is ``"eos"``, ``"cap"`` or ``"cancel"``."""

    turn_id: int
    reason: str
    n_speech_tokens: int
    n_frames: int


Event = Union[TextEvent, AudioEvent, FlameEvent, EndEvent]
