"""Map 58-D FLAME frames to robot/avatar channels (blendshapes, servos).

A :class:`RetargetConfig` (loaded from YAML, see ``config/retarget_*.yaml``)
defines ``C`` named channels with a linear map ``positions = frames @ matrix.T
+ offsets`` (``matrix`` is ``[C, 58]``), per-channel ``lower``/``upper`` limits
and ``max_rate`` (units/s, 0 = unlimited), a one-pole smoothing time constant
and the actuator latency lead (commands are stamped that much earlier).

In YAML the matrix can be given in full (``matrix: [[...58 values...], ...]``)
or per channel as sparse ``sources`` keyed by FLAME dimension names:
``expr0`` .. ``expr49``, ``jaw_x``/``jaw_y``/``jaw_z``, ``head_x``/``head_y``/
``head_z`` (axis-angle rad; x = pitch/nod) and ``eyelid_left``/``eyelid_right``
(dims 56 and 57, 0 open .. 1 closed).  Channels without sources get a zero row.

:class:`Retargeter` is stateful across calls: per frame it clips the target to
the limits, smooths it (``y += (1 - exp(-dt / tau)) * (x - y)``), limits the
change to ``max_rate * dt`` and clips again, with ``dt`` from the stamps.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from a2llm_ros.configbase import ConfigBase
from a2llm_ros.constants import FLAME_FPS
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, FRAME_DIM

__all__ = ["RetargetConfigError", "RetargetConfig", "Retargeter", "flame_dim_names",
           "load_retarget_config"]


class RetargetConfigError(ValueError):
    """A retarget YAML/config is malformed (message names the problem)."""


def flame_dim_names() -> List[str]:
    """Names of the 58 frame dimensions used by ``sources`` in YAML."""
    lay = DEFAULT_LAYOUT
    names = [f"expr{i}" for i in range(lay.n_expr)]
    names += ["jaw_x", "jaw_y", "jaw_z", "head_x", "head_y", "head_z"]
    names += ["eyelid_left", "eyelid_right"]
    assert len(names) == FRAME_DIM
    return names


@dataclasses.dataclass
class RetargetConfig(ConfigBase):
    """Linear FLAME -> channel map with limits (see module docstring).

    The presets are the YAML files in ``config/`` rather than ``PRESETS``.
    """

    name: str = ""
    units: str = ""
    channels: Tuple[str, ...] = ()
    matrix: Tuple[Tuple[float, ...], ...] = ()   # [C, 58]
    offsets: Tuple[float, ...] = ()              # [C]
    lower: Tuple[float, ...] = ()                # [C]
    upper: Tuple[float, ...] = ()                # [C]
    max_rate: Tuple[float, ...] = ()             # [C] units/s, 0 = unlimited
    smoothing_tau_s: float = 0.0
    latency_lead_s: float = 0.0
    fps: float = float(FLAME_FPS)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`RetargetConfigError` on inconsistent shapes/values."""
        c = len(self.channels)
        if c == 0:
            raise RetargetConfigError(f"retarget config {self.name!r}: no channels")
        if len(set(self.channels)) != c:
            raise RetargetConfigError(f"retarget config {self.name!r}: duplicate channel names")
        rows = [len(r) for r in self.matrix]
        if len(rows) != c or any(n != FRAME_DIM for n in rows):
            raise RetargetConfigError(
                f"retarget config {self.name!r}: matrix must be [{c}, {FRAME_DIM}] "
                f"(channels x FLAME dims), got {len(rows)} rows of lengths {sorted(set(rows))}")
        for field in ("offsets", "lower", "upper", "max_rate"):
            if len(getattr(self, field)) != c:
                raise RetargetConfigError(
                    f"retarget config {self.name!r}: {field} has "
                    f"{len(getattr(self, field))} values for {c} channels")
        bad = [ch for ch, lo, hi in zip(self.channels, self.lower, self.upper) if lo > hi]
        if bad or any(r < 0 for r in self.max_rate):
            raise RetargetConfigError(f"retarget config {self.name!r}: lower > upper or "
                                      f"negative max_rate (channels {bad})")
        if self.smoothing_tau_s < 0 or self.fps <= 0:
            raise RetargetConfigError("smoothing_tau_s must be >= 0 and fps > 0")

    @classmethod
    def from_yaml_dict(cls, data: Dict) -> "RetargetConfig":
        """Build from the YAML layout (``channels`` as a list of mappings)."""
        try:
            specs = list(data["channels"])
        except (KeyError, TypeError) as err:
            raise RetargetConfigError("retarget YAML needs a 'channels' list") from err
        names = [str(_spec(s, "name")) for s in specs]
        if "matrix" in data:
            matrix = [tuple(float(v) for v in row) for row in data["matrix"]]
        else:
            matrix = [_sources_row(s, n) for s, n in zip(specs, names)]
        return cls(
            name=str(data.get("name", "")), units=str(data.get("units", "")),
            channels=tuple(names), matrix=tuple(tuple(r) for r in matrix),
            offsets=tuple(float(s.get("offset", 0.0)) for s in specs),
            lower=tuple(float(_spec(s, "min")) for s in specs),
            upper=tuple(float(_spec(s, "max")) for s in specs),
            max_rate=tuple(float(s.get("max_rate", 0.0)) for s in specs),
            smoothing_tau_s=float(data.get("smoothing_tau_s", 0.0)),
            latency_lead_s=float(data.get("latency_lead_s", 0.0)),
            fps=float(data.get("fps", FLAME_FPS)))

    @classmethod
    def from_yaml(cls, path: str) -> "RetargetConfig":
        """Load a retarget YAML file."""
        import yaml
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        if not isinstance(data, dict):
            raise RetargetConfigError(f"{path}: top level must be a mapping")
        return cls.from_yaml_dict(data)

    def matrix_array(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64)  # [C, 58]


def _spec(spec, key: str):
    if not isinstance(spec, dict) or key not in spec:
        raise RetargetConfigError(f"channel entry {spec!r} lacks '{key}'")
    return spec[key]


def _sources_row(spec: Dict, name: str) -> Tuple[float, ...]:
    index = {n: i for i, n in enumerate(flame_dim_names())}
    row = [0.0] * FRAME_DIM
    for dim, weight in (spec.get("sources") or {}).items():
        if dim not in index:
            raise RetargetConfigError(f"channel {name!r}: unknown FLAME source {dim!r} "
                                      "(use expr0..expr49, jaw_x.., head_x.., eyelid_left/right)")
        row[index[dim]] = float(weight)
    return tuple(row)


def load_retarget_config(path: str) -> RetargetConfig:
    """Shorthand for :meth:`RetargetConfig.from_yaml`."""
    return RetargetConfig.from_yaml(path)


class Retargeter:
    """Stateful FLAME -> channel positions with limits, smoothing and rate limits."""

    def __init__(self, config: RetargetConfig):
        self.config = config
        self._matrix = config.matrix_array()                   # [C, 58]
        self._offsets = np.asarray(config.offsets, np.float64)  # [C]
        self._lower = np.asarray(config.lower, np.float64)
        self._upper = np.asarray(config.upper, np.float64)
        rate = np.asarray(config.max_rate, np.float64)
        self._rate = np.where(rate > 0, rate, np.inf)           # [C]
        self.reset()

    @property
    def channels(self) -> Tuple[str, ...]:
        return self.config.channels

    def reset(self, initial: Optional[Sequence[float]] = None) -> None:
        """Forget state; ``initial`` [C] is the current actuator position, if known."""
        self._pos = None if initial is None else np.clip(
            np.asarray(initial, np.float64), self._lower, self._upper)
        self._last_stamp: Optional[float] = None

    def targets(self, frames: np.ndarray) -> np.ndarray:
        """Unfiltered, clipped map of ``frames`` [n, 58] -> [n, C]."""
        frames = np.asarray(frames, dtype=np.float64).reshape(-1, FRAME_DIM)
        raw = frames @ self._matrix.T + self._offsets  # [n, C]
        return np.clip(raw, self._lower, self._upper)

    def process(self, frames: np.ndarray,
                stamps: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Map ``frames`` [n, 58] at ``stamps`` [n] (s) -> (positions [n, C], command stamps [n]).

        Without stamps frames are spaced ``1 / fps`` after the previous call's
        last stamp (starting at 0).  Command stamps are ``stamps -
        latency_lead_s``.
        """
        target = self.targets(frames)  # [n, C]
        n = len(target)
        stamps = self._default_stamps(n) if stamps is None else \
            np.asarray(stamps, dtype=np.float64).reshape(-1)
        if len(stamps) != n:
            raise ValueError(f"{n} frames but {len(stamps)} stamps")
        out = np.empty_like(target)
        for i in range(n):
            out[i] = self._advance(target[i], stamps[i])
        return out.astype(np.float32), stamps - self.config.latency_lead_s

    def _default_stamps(self, n: int) -> np.ndarray:
        first = 0.0 if self._last_stamp is None else self._last_stamp + 1.0 / self.config.fps
        return first + np.arange(n) / self.config.fps

    def _advance(self, target: np.ndarray, stamp: float) -> np.ndarray:
        if self._pos is None:
            self._pos = target.copy()
        else:
            dt = 1.0 / self.config.fps if self._last_stamp is None else \
                max(0.0, stamp - self._last_stamp)
            tau = self.config.smoothing_tau_s
            alpha = 1.0 if tau <= 0 else 1.0 - np.exp(-dt / tau)
            step = np.clip(alpha * (target - self._pos), -self._rate * dt, self._rate * dt)
            self._pos = np.clip(self._pos + step, self._lower, self._upper)
        self._last_stamp = float(stamp)
        return self._pos
