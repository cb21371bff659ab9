"""Layout of one FLAME animation frame as the model sees it.

The paper's frame is 58-D at ``FLAME_FPS`` = 25: 50 expression coefficients,
3 jaw pose (axis-angle, rad), 3 head rotation (axis-angle, rad) and 2 eyelid
values.  A 100-expression variant (106-D) is allowed by config.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2llm_ros.constants import FLAME_FPS

N_EXPR = 50
N_EXPR_MAX = 100
N_JAW = 3
N_HEAD = 3
N_EYELIDS = 2
N_EYE_POSE = 6
FRAME_DIM = N_EXPR + N_JAW + N_HEAD + N_EYELIDS  # 58
FLAME_VERSIONS = (2020, 2023)
DEFAULT_FLAME_VERSION = 2020

__all__ = ["FlameLayout", "FRAME_DIM", "FLAME_FPS", "N_EXPR", "DEFAULT_LAYOUT"]


@dataclass(frozen=True)
class FlameLayout:
    """Slices of the flat per-frame FLAME vector.

    ``n_expr`` is 50 (paper) or 100; the other blocks have fixed sizes.
    """

    n_expr: int = N_EXPR
    version: int = DEFAULT_FLAME_VERSION

    def __post_init__(self):
        if not 1 <= self.n_expr <= N_EXPR_MAX:
            raise ValueError(f"n_expr must be in 1..{N_EXPR_MAX}, got {self.n_expr}")
        if self.version not in FLAME_VERSIONS:
            raise ValueError(f"FLAME version must be one of {FLAME_VERSIONS}, "
                             f"got {self.version}")

    @property
    def dim(self) -> int:
        return self.n_expr + N_JAW + N_HEAD + N_EYELIDS

    @property
    def expr(self) -> slice:
        return slice(0, self.n_expr)

    @property
    def jaw(self) -> slice:
        return slice(self.n_expr, self.n_expr + N_JAW)

    @property
    def head(self) -> slice:
        start = self.n_expr + N_JAW
        return slice(start, start + N_HEAD)

    @property
    def eyelids(self) -> slice:
        start = self.n_expr + N_JAW + N_HEAD
        return slice(start, start + N_EYELIDS)

    def split(self, frames: np.ndarray) -> dict:
        """Split ``frames`` [..., dim] into named blocks (views)."""
        if frames.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got {frames.shape[-1]}")
        return {"expression": frames[..., self.expr], "jaw_pose": frames[..., self.jaw],
                "head_rotation": frames[..., self.head],
                "eyelids": frames[..., self.eyelids]}

    def join(self, expression, jaw_pose, head_rotation, eyelids) -> np.ndarray:
        """Inverse of :meth:`split`: concatenate blocks into [..., dim]."""
        return np.concatenate([expression, jaw_pose, head_rotation, eyelids], axis=-1)

    def to_dict(self) -> dict:
        return {"n_expr": self.n_expr, "version": self.version, "dim": self.dim,
                "fps": FLAME_FPS,
                "blocks": {"expression": [self.expr.start, self.expr.stop],
                           "jaw_pose": [self.jaw.start, self.jaw.stop],
                           "head_rotation": [self.head.start, self.head.stop],
                           "eyelids": [self.eyelids.start, self.eyelids.stop]}}


DEFAULT_LAYOUT = FlameLayout()
