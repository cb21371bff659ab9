"""How a FLAME head looks: skin, lips, eyes, brows and mouth interior (numpy only).

One description of the head's colours, shared by the offline renderer
(:mod:`a2llm_ros.tools.render`: ``preview.png`` and ``a2llm render`` videos) and the
RViz preview (``face_preview_node``'s per-vertex marker colours).  Nothing here
draws: the renderer asks for colours at points of the *template* (rest-pose)
surface, so the materials move with the skin as the face deforms, and the
RViz preview asks once for per-vertex colours.

Materials are placed from the 51-point landmark embedding, so they fit both the
generated head and a real FLAME model:

* lips -- inside the ellipse through the outer-lip landmarks (31-42), soft edge;
* eyes -- an almond through each eye's six landmarks (19-24, 25-30), with a
  white, an iris and a pupil; an eyelid value closes it from the top
  (:meth:`Appearance.albedo` ``eye_open``), so blinks show even on the
  generated head, which has no eyeballs;
* brows -- a dark band along the brow landmarks (0-4, 5-9);
* mouth interior -- the renderer gives back faces (seen through the open mouth)
  :data:`MOUTH_INSIDE_RGB`, so an open mouth reads as open.

:func:`eye_openness` measures each eye's opening from the lid landmarks of
posed vertices, calibrated per model (open at rest, closed at eyelid value 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from a2llm_ros.flame.landmarks import landmark_points

#: Neutral skin, lips, the eye's white / iris / pupil, brows, lash line (RGB 0..1).
SKIN_RGB = (0.80, 0.64, 0.55)
LIP_RGB = (0.66, 0.36, 0.36)
SCLERA_RGB = (0.90, 0.89, 0.86)
IRIS_RGB = (0.30, 0.22, 0.15)
PUPIL_RGB = (0.04, 0.03, 0.03)
BROW_RGB = (0.33, 0.24, 0.19)
LASH_RGB = (0.18, 0.12, 0.10)
#: Back faces (the inside of the head, seen through the open mouth).
MOUTH_INSIDE_RGB = (0.16, 0.04, 0.05)

#: Landmark indices (51-point embedding, iBUG-68 order without the contour).
LMK_BROW_RIGHT, LMK_BROW_LEFT = range(0, 5), range(5, 10)
LMK_OUTER_LIPS = range(31, 43)
#: Each eye: (corner, upper, upper, corner, lower, lower); upper i pairs with lower 5 - i.
LMK_EYE_RIGHT, LMK_EYE_LEFT = range(19, 25), range(25, 31)
EYE_UPPER, EYE_LOWER = (1, 2), (5, 4)

#: Lip ellipse: half-axes = landmark extent x this; soft edge width (fraction of the radius).
LIP_GROW, LIP_SOFT = 1.05, 0.25
#: Eye almond: half-width and half-height = landmark extent x these.
EYE_GROW_X, EYE_GROW_Y = 1.0, 1.15
#: Almond outline |u| ** ALMOND_POWER + v ** 2 = 1 (u, v: coordinates over the half-axes).
ALMOND_POWER = 1.6
#: Iris and pupil radii as fractions of the almond half-width.
IRIS_FRAC, PUPIL_FRAC = 0.45, 0.18
#: Lash line below the closing lid, fraction of the almond half-height.
LASH_FRAC = 0.22
#: Brow band half-thickness (metres) and its soft edge.
BROW_HALF, BROW_SOFT = 0.0014, 0.0012
#: Materials only on the front of the face: within this depth (metres) of the landmarks.
FRONT_DEPTH = 0.02
#: Eye opening counted as closed at this fraction of the open gap when a model has no
#: eyelid blendshapes to calibrate with.
CLOSED_GAP_FRAC = 0.15


@dataclass(frozen=True)
class Appearance:
    """Materials of one topology, placed from its rest-pose landmarks ``lmk`` [51, 3]."""

    lmk: np.ndarray  # [51, 3] rest-pose landmarks (metres)

    @classmethod
    def from_arrays(cls, arrays) -> "Appearance":
        """From :class:`~a2llm_ros.flame.convert.FlameModelArrays` (51-point embedding)."""
        pts = landmark_points(arrays.v_template, arrays.faces, arrays.lmk_face_idx,
                              arrays.lmk_b_coords)  # [51, 3]
        return cls(np.asarray(pts, np.float64))

    def _eye(self, which: range) -> tuple:
        """(centre [3], half-width, half-height) of one eye's almond."""
        pts = self.lmk[list(which)]  # [6, 3]
        centre = pts.mean(0)
        half_x = EYE_GROW_X * np.ptp(pts[:, 0]) / 2
        half_y = EYE_GROW_Y * np.ptp(pts[:, 1]) / 2
        return centre, half_x, half_y

    def albedo(self, rest: np.ndarray, eye_open=(1.0, 1.0)) -> np.ndarray:
        """Base colours [P, 3] at rest-pose surface points ``rest`` [P, 3].

        ``eye_open`` (right, left) in [0, 1]: 1 shows the whole eye, 0 a closed lid.
        """
        rest = np.asarray(rest, np.float64)
        x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
        out = np.tile(np.asarray(SKIN_RGB), (len(rest), 1))  # [P, 3]
        front = z > self.lmk[:, 2].min() - FRONT_DEPTH  # [P]
        self._paint_lips(out, x, y, front)
        for brow in (LMK_BROW_RIGHT, LMK_BROW_LEFT):
            self._paint_brow(out, rest, brow, front)
        for which, openness in zip((LMK_EYE_RIGHT, LMK_EYE_LEFT), eye_open):
            self._paint_eye(out, x, y, front, which, float(np.clip(openness, 0.0, 1.0)))
        return out

    def _paint_lips(self, out, x, y, front) -> None:
        lips = self.lmk[list(LMK_OUTER_LIPS)]  # [12, 3]
        cx, cy = lips[:, :2].mean(0)
        hx, hy = LIP_GROW * np.abs(lips[:, :2] - (cx, cy)).max(0)
        radius = np.sqrt(((x - cx) / hx) ** 2 + ((y - cy) / hy) ** 2)  # [P]
        weight = np.clip((1.0 - radius) / LIP_SOFT, 0.0, 1.0) * front  # [P]
        out += weight[:, None] * (np.asarray(LIP_RGB) - out)

    def _paint_brow(self, out, rest, which: range, front) -> None:
        pts = self.lmk[list(which), :2]  # [5, 2]
        reach = BROW_HALF + BROW_SOFT
        near = front & np.all((rest[:, :2] > pts.min(0) - reach)
                              & (rest[:, :2] < pts.max(0) + reach), axis=1)
        xy = rest[near, :2]  # [P', 2]
        dist = np.full(len(xy), np.inf)
        for a, b in zip(pts[:-1], pts[1:]):
            seg = b - a
            t = np.clip(((xy - a) @ seg) / (seg @ seg), 0.0, 1.0)  # [P']
            dist = np.minimum(dist, np.hypot(*(xy - (a + t[:, None] * seg)).T))
        weight = np.clip((reach - dist) / BROW_SOFT, 0.0, 1.0)  # [P']
        out[near] += weight[:, None] * (np.asarray(BROW_RGB) - out[near])

    def _paint_eye(self, out, x, y, front, which: range, openness: float) -> None:
        centre, hx, hy = self._eye(which)
        near = front & (np.abs(x - centre[0]) < hx) & (np.abs(y - centre[1]) < hy)
        u, v = (x - centre[0]) / hx, (y - centre[1]) / hy  # [P] almond coordinates
        almond = near & (np.abs(u) ** ALMOND_POWER + v ** 2 < 1.0)
        if not almond.any():
            return
        lid = 2.0 * openness - 1.0  # the lid edge, v = 1 (open) ... v = -1 (closed)
        lash = almond & (v > lid - 2 * LASH_FRAC) & (v <= lid)
        seen = almond & (v < lid - 2 * LASH_FRAC)
        r_px = np.sqrt((u * hx) ** 2 + (v * hy) ** 2) / hx  # [P] distance / half-width
        colour = np.where((r_px < PUPIL_FRAC)[:, None], PUPIL_RGB,
                          np.where((r_px < IRIS_FRAC)[:, None], IRIS_RGB, SCLERA_RGB))
        if openness > 0.0:
            out[seen] = colour[seen]
            out[lash] = LASH_RGB
        else:
            line = almond & (np.abs(v + 1.0 - 2 * LASH_FRAC) < LASH_FRAC)
            out[line] = LASH_RGB

    def vertex_colors(self, v_template: np.ndarray, skin: Optional[tuple] = None) -> np.ndarray:
        """Per-vertex colours [V, 3] (eyes open) for meshes coloured per vertex (RViz).

        ``skin`` (RGB) replaces :data:`SKIN_RGB` as the base tone, the other
        materials keep their colours.
        """
        colours = self.albedo(v_template)  # [V, 3]
        if skin is not None:
            is_skin = np.all(np.isclose(colours, SKIN_RGB), axis=1)
            colours[is_skin] = np.asarray(skin[:3], np.float64)
        return colours


def eye_lid_pairs() -> tuple:
    """Landmark index pairs (upper [2], lower [2]) of the right and left eye."""
    return tuple((np.array(which)[list(EYE_UPPER)], np.array(which)[list(EYE_LOWER)])
                 for which in (LMK_EYE_RIGHT, LMK_EYE_LEFT))


def eye_gaps(verts: np.ndarray, arrays) -> np.ndarray:
    """Vertical lid gap [T, 2] (right, left; metres) of vertices [T, V, 3]."""
    pts = landmark_points(np.asarray(verts), arrays.faces, arrays.lmk_face_idx,
                          arrays.lmk_b_coords)  # [T, 51, 3]
    gaps = [(pts[..., up, 1] - pts[..., low, 1]).mean(-1) for up, low in eye_lid_pairs()]
    return np.stack(gaps, -1)


def eye_openness(gaps: np.ndarray, open_gap: np.ndarray,
                 closed_gap: Optional[np.ndarray] = None) -> np.ndarray:
    """Openness [T, 2] in [0, 1] from lid gaps [T, 2], the rest gap [2] and the closed gap [2].

    ``closed_gap`` defaults to :data:`CLOSED_GAP_FRAC` of the open gap.
    """
    open_gap = np.asarray(open_gap, np.float64)
    closed = CLOSED_GAP_FRAC * open_gap if closed_gap is None else np.asarray(closed_gap)
    span = np.maximum(open_gap - closed, 1e-6)
    return np.clip((np.asarray(gaps) - closed) / span, 0.0, 1.0)
