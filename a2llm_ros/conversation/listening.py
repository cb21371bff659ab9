"""Attentive-listener FLAME motion shown while the avatar is not speaking.

:class:`ListeningFace` produces a continuous 25 fps stream of 58-D FLAME
frames (layout :data:`a2llm_ros.flame.layout.DEFAULT_LAYOUT`):

* blinks -- both eyelids (dims 56:58, 0 open .. 1 closed) close for
  ``blink_frames`` frames, spaced uniformly at random in ``blink_interval_s``;
* nods -- a half-sine dip of the head pitch (head rotation x, dim 53) when the
  user pauses (speech -> silence for ``pause_ms``), at most one per
  ``nod_cooldown_s``;
* gaze holding -- head rotation (dims 53:56) is an Ornstein-Uhlenbeck drift
  around zero (std ``gaze_drift_rad``, time constant ``gaze_tau_s``);
* attentive offsets -- expression 3 (brow raise) and 1 (lip width / smile);
* cross-fades -- :meth:`crossfade_into_speech` blends the first speech frames
  from the last listening frame, :meth:`resume_after_speech` blends the next
  listening frames from the last speech frame, both over ``crossfade_s``.

Frames are generated one at a time, so the stream is identical however it is
chunked: ``next_frames(3)`` then ``next_frames(2)`` equals ``next_frames(5)``
for the same seed and the same sequence of :meth:`set_user_speaking` calls.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import numpy as np

from a2llm_ros.configbase import ConfigBase, above, at_least
from a2llm_ros.constants import FLAME_FPS
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, FlameLayout

__all__ = ["ListeningConfig", "ListeningFace", "EXPR_MOUTH_OPEN", "EXPR_SMILE",
           "EXPR_PUCKER", "EXPR_BROW_RAISE", "EXPR_BROW_FURROW", "EXPR_EYELID_CLOSE",
           "EXPR_CHEEK_RAISE"]

#: Meaning of the first expression coefficients of the generated head.
EXPR_MOUTH_OPEN, EXPR_SMILE, EXPR_PUCKER, EXPR_BROW_RAISE = 0, 1, 2, 3
EXPR_BROW_FURROW, EXPR_EYELID_CLOSE, EXPR_CHEEK_RAISE = 4, 5, 6
#: Eyelid closure profile of one blink (one value per frame at 25 fps).
_BLINK_SHAPE = (0.45, 1.0, 0.9, 0.5, 0.15)


@dataclasses.dataclass
class ListeningConfig(ConfigBase):
    """Listening-motion settings."""

    #: Seed of the blink, nod and gaze randomness (the same seed, the same face).
    seed: int = 0
    #: Seconds between blinks, drawn uniformly from [lo, hi].
    blink_interval_s: Tuple[float, float] = (3.0, 6.0)
    #: Head pitch of an acknowledging nod (rad).
    nod_pitch_rad: float = 0.08
    #: Duration of one nod (s).
    nod_s: float = 0.6
    #: A pause in the user's speech this long triggers a nod (ms).
    pause_ms: float = 300.0
    #: Shortest time between two nods (s).
    nod_cooldown_s: float = 1.5
    #: Amplitude of the slow head/gaze drift (rad).
    gaze_drift_rad: float = 0.02
    #: Time constant of the gaze drift (s).
    gaze_tau_s: float = 2.0
    #: Brow raise while the user speaks (expression units).
    brow_offset: float = 0.3
    #: Slight smile while listening (expression units).
    smile_offset: float = 0.25
    #: Cross-fade between listening and speech motion (s).
    crossfade_s: float = 0.2

    BOUNDS = {"nod_s": above(0.0), "pause_ms": at_least(0.0), "nod_cooldown_s": at_least(0.0),
              "gaze_drift_rad": at_least(0.0), "gaze_tau_s": above(0.0),
              "crossfade_s": at_least(0.0)}

    def __post_init__(self):
        self.check_bounds()
        lo, hi = self.blink_interval_s
        if not 0 < lo <= hi:
            raise ValueError(f"blink_interval_s must be 0 < lo <= hi, got {(lo, hi)}")


class ListeningFace:
    """Deterministic (per seed) attentive-listening FLAME frames at 25 fps."""

    def __init__(self, config: Optional[ListeningConfig] = None,
                 layout: FlameLayout = DEFAULT_LAYOUT):
        self.config = config or ListeningConfig()
        self.layout = layout
        self.fade_frames = max(1, int(round(self.config.crossfade_s * FLAME_FPS)))
        self.reset()

    def reset(self, seed: Optional[int] = None) -> None:
        """Restart the stream (optionally with a new seed)."""
        cfg = self.config
        self._rng = np.random.default_rng(cfg.seed if seed is None else seed)
        self._gaze = np.zeros(3)
        self._next_blink = self._draw_blink_gap()
        self._blink_pos = -1        # index into _BLINK_SHAPE, -1 = not blinking
        self._nod_pos = -1          # frames into the current nod, -1 = none
        self._since_nod = 10 ** 9
        self._user_speaking = False
        self._silence_frames = -1   # frames since the user stopped, -1 = n/a
        self._fade_from: Optional[np.ndarray] = None
        self._fade_pos = 0
        self.last_frame = self._base()
        self.frame_count = 0

    def _draw_blink_gap(self) -> int:
        lo, hi = self.config.blink_interval_s
        return int(round(self._rng.uniform(lo, hi) * FLAME_FPS))

    def _base(self) -> np.ndarray:
        frame = np.zeros(self.layout.dim, dtype=np.float32)  # [58]
        expr = frame[self.layout.expr]
        expr[EXPR_BROW_RAISE] = self.config.brow_offset
        expr[EXPR_SMILE] = self.config.smile_offset
        return frame

    def set_user_speaking(self, active: bool) -> None:
        """VAD state of the user; a long enough speech -> silence pause nods."""
        active = bool(active)
        if self._user_speaking and not active:
            self._silence_frames = 0
        elif active:
            self._silence_frames = -1
        self._user_speaking = active

    def nod(self) -> None:
        """Start a nod now (if none is running)."""
        if self._nod_pos < 0:
            self._nod_pos, self._since_nod = 0, 0

    def next_frames(self, n: int) -> np.ndarray:
        """The next ``n`` frames, ``[n, 58]`` float32."""
        out = np.empty((n, self.layout.dim), dtype=np.float32)  # [n, 58]
        for i in range(n):
            out[i] = self._step()
        return out

    def _step(self) -> np.ndarray:
        frame = self._base()
        frame[self.layout.head] = self._gaze_step()
        frame[self.layout.head.start] += self._nod_step()
        frame[self.layout.eyelids] = self._blink_step()
        if self._fade_from is not None:
            w = (self._fade_pos + 1) / (self.fade_frames + 1)
            frame = (1.0 - w) * self._fade_from + w * frame
            self._fade_pos += 1
            if self._fade_pos >= self.fade_frames:
                self._fade_from = None
        self.last_frame = frame.astype(np.float32)
        self.frame_count += 1
        return self.last_frame

    def _gaze_step(self) -> np.ndarray:
        cfg = self.config
        a = math.exp(-1.0 / (cfg.gaze_tau_s * FLAME_FPS))
        noise = self._rng.standard_normal(3)
        self._gaze = a * self._gaze + math.sqrt(1.0 - a * a) * cfg.gaze_drift_rad * noise
        return self._gaze

    def _nod_step(self) -> float:
        cfg = self.config
        self._since_nod += 1
        if self._silence_frames >= 0:
            self._silence_frames += 1
            if self._silence_frames * 1000.0 / FLAME_FPS >= cfg.pause_ms:
                self._silence_frames = -1
                if self._since_nod >= cfg.nod_cooldown_s * FLAME_FPS:
                    self.nod()
        if self._nod_pos < 0:
            return 0.0
        n_nod = max(1, int(round(cfg.nod_s * FLAME_FPS)))
        value = cfg.nod_pitch_rad * math.sin(math.pi * (self._nod_pos + 1) / (n_nod + 1))
        self._nod_pos = self._nod_pos + 1 if self._nod_pos + 1 < n_nod else -1
        return value

    def _blink_step(self) -> float:
        if self._blink_pos < 0:
            self._next_blink -= 1
            if self._next_blink > 0:
                return 0.0
            self._blink_pos = 0
        value = _BLINK_SHAPE[self._blink_pos]
        self._blink_pos += 1
        if self._blink_pos >= len(_BLINK_SHAPE):
            self._blink_pos, self._next_blink = -1, self._draw_blink_gap()
        return value

    def crossfade_into_speech(self, frames: np.ndarray, start_frame: int) -> np.ndarray:
        """Blend speech ``frames`` [n, 58] (turn frames from ``start_frame``) in.

        Turn frames ``0 .. fade_frames-1`` are mixed with the last listening
        frame, weight on speech ramping up; later frames are returned as is.
        """
        out = np.array(frames, dtype=np.float32, copy=True)  # [n, 58]
        for i in range(len(out)):
            k = start_frame + i
            if k >= self.fade_frames:
                break
            w = (k + 1) / (self.fade_frames + 1)
            out[i] = (1.0 - w) * self.last_frame + w * out[i]
        return out

    def resume_after_speech(self, last_speech_frame: np.ndarray) -> None:
        """Blend the next listening frames from ``last_speech_frame`` [58]."""
        self._fade_from = np.asarray(last_speech_frame, dtype=np.float32).copy()
        self._fade_pos = 0
        self.last_frame = self._fade_from.copy()
