"""FLAME's 51-point landmark embedding: the indices this package uses and the face
regions derived from them (numpy only, no model loading).

Landmarks are barycentric points on mesh faces (``lmk_face_idx``, ``lmk_b_coords``
of the landmark embedding): inner-lip midpoints 45/49, mouth corners 31/37, eyes
19-30, brows 0-9; the upper-face vertex set is a box around brows and eyes.
"""
from __future__ import annotations

import numpy as np

LMK_BROWS = slice(0, 10)
LMK_EYES = slice(19, 31)
LMK_MOUTH_RIGHT = 31
LMK_MOUTH_LEFT = 37
LMK_UPPER_LIP_INNER = 45
LMK_LOWER_LIP_INNER = 49
#: Upper-face box around eyes and brows (metres): below eyes, above brows, sides, depth.
UPPER_FACE_BELOW_EYES = 0.006
UPPER_FACE_ABOVE_BROWS = 0.03
UPPER_FACE_SIDE_MARGIN = 0.01
UPPER_FACE_DEPTH = 0.025


def landmark_points(verts: np.ndarray, faces: np.ndarray, lmk_face_idx: np.ndarray,
                    lmk_b_coords: np.ndarray) -> np.ndarray:
    """Barycentric landmark positions [T, L, 3] from vertices [T, V, 3] (or [V, 3])."""
    verts = np.asarray(verts)
    tri = verts[..., faces[lmk_face_idx], :]  # [T, L, 3, 3]
    return np.einsum("...lkc,lk->...lc", tri, lmk_b_coords)


def upper_face_indices(v_template: np.ndarray, lmk_points: np.ndarray) -> np.ndarray:
    """Vertices of the brows, forehead and eyelids: a box around the eye/brow landmarks.

    v_template [V, 3], lmk_points [51, 3] -> vertex indices [U].
    """
    eyes, brows = lmk_points[LMK_EYES], lmk_points[LMK_BROWS]
    both = np.concatenate([eyes, brows])
    x_mid = eyes[:, 0].mean()
    half = np.abs(both[:, 0] - x_mid).max() + UPPER_FACE_SIDE_MARGIN
    v = v_template
    keep = (v[:, 1] > eyes[:, 1].min() - UPPER_FACE_BELOW_EYES)
    keep &= v[:, 1] < brows[:, 1].max() + UPPER_FACE_ABOVE_BROWS
    keep &= np.abs(v[:, 0] - x_mid) < half
    keep &= v[:, 2] > eyes[:, 2].mean() - UPPER_FACE_DEPTH
    return np.where(keep)[0].astype(np.int64)


def upper_face_from_landmarks(v_template: np.ndarray, faces: np.ndarray,
                              lmk_face_idx: np.ndarray, lmk_b_coords: np.ndarray) -> np.ndarray:
    """Upper-face vertex set [U] of a model with a 51-point landmark embedding
    (template [V, 3], faces [F, 3], landmark faces [51] and barycentrics [51, 3])."""
    pts = landmark_points(v_template, faces, lmk_face_idx, lmk_b_coords)  # [51, 3]
    return upper_face_indices(v_template, pts)
