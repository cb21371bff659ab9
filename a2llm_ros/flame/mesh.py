"""FLAME meshes from 58-D animation frames and face-region helpers.

:class:`FlameMesh` turns frames [T, D] (see :class:`FlameLayout`) into vertices
[T, V, 3] in metres.  Frame blocks map onto FLAME parameters as follows:

* expression [n_expr] -> FLAME expression coefficients (first n_expr components)
* jaw_pose [3] -> jaw joint rotation (axis-angle, rad)
* head_rotation [3] -> the *global* (root) rotation by default
  (``head_joint="global"``, as the 6-D "pose" of EMOCA/SMIRK-style trackers:
  global + jaw); ``head_joint="neck"`` sends it to the neck joint instead
* eyelids [2] -> left/right eyelid blendshapes (``l_eyelid``/``r_eyelid``, added
  to the template before skinning as in FLAME-2023-based trackers).  A model
  without eyelid blendshapes ignores them (documented limitation: FLAME 2020
  only has blinks inside its expression space).

Model sources: ``"generated"`` (the project's head, :mod:`head_model`), a
converted ``.npz`` (:mod:`convert`), a FLAME ``.pkl`` file or a directory
holding ``FLAME_NEUTRAL.pkl`` + ``flame_static_embedding.pkl`` (+ optional
eyelid ``.npy``).  Backends: ``"numpy"`` (pure-numpy linear blend skinning that
follows smplx 0.1.28's ``lbs`` exactly; default) or ``"smplx"`` (builds
``smplx.FLAME`` from a directory; needs ``chumpy`` installed for original
FLAME 2020 pickles, since smplx unpickles them unrestricted).

Images and videos of the mesh are drawn by :mod:`a2llm_ros.tools.render` (a tool,
not imported here) with the colours of :mod:`a2llm_ros.flame.appearance`.

Face regions come from the 51-point static landmark embedding (iBUG-68 order
without the contour): inner-lip midpoints 45/49, mouth corners 31/37, eyes
19-30, brows 0-9; the upper-face vertex set is derived from brows and eyes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from a2llm_ros.flame.convert import (EMBEDDING_NAME, HOW_TO_GET_FLAME,
                                     FlameModelArrays, find_model_files, from_flame_dict,
                                     load_eyelids, safe_load_pickle)
from a2llm_ros.flame.landmarks import (LMK_LOWER_LIP_INNER, LMK_MOUTH_LEFT, LMK_MOUTH_RIGHT,
                                       LMK_UPPER_LIP_INNER, landmark_points,
                                       upper_face_from_landmarks)
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, FlameLayout

GENERATED = "generated"
DEFAULT_BATCH = 128
HEAD_JOINTS = ("global", "neck")


@dataclass(frozen=True)
class FaceRegions:
    """Landmark embedding and upper-face set of one topology."""

    faces: np.ndarray  # [F, 3]
    lmk_face_idx: np.ndarray  # [L]
    lmk_b_coords: np.ndarray  # [L, 3]
    upper_face_idx: np.ndarray  # [U]

    @classmethod
    def from_arrays(cls, arrays: FlameModelArrays) -> "FaceRegions":
        if arrays.lmk_face_idx.size < LMK_LOWER_LIP_INNER + 1:
            raise ValueError(f"model {arrays.source!r} has no 51-point landmark embedding; "
                             f"convert it together with {EMBEDDING_NAME}")
        upper = arrays.upper_face_idx
        if upper is None:
            upper = upper_face_from_landmarks(arrays.v_template, arrays.faces,
                                              arrays.lmk_face_idx, arrays.lmk_b_coords)
        return cls(arrays.faces, arrays.lmk_face_idx, arrays.lmk_b_coords, upper)

    def points(self, verts: np.ndarray, which: Sequence[int]) -> np.ndarray:
        """Landmarks ``which`` [K] of verts [T, V, 3] -> [T, K, 3]."""
        which = list(which)
        return landmark_points(verts, self.faces, self.lmk_face_idx[which],
                               self.lmk_b_coords[which])


def _default_regions() -> FaceRegions:
    from a2llm_ros.flame.head_model import build_head
    return FaceRegions.from_arrays(build_head().arrays)


def mouth_opening(verts: np.ndarray, regions: Optional[FaceRegions] = None) -> np.ndarray:
    """Vertical inner-lip gap [T] in metres (upper minus lower midpoint, model y axis).

    Use head-pose-free vertices (``FlameMesh.vertices(frames, with_head=False)``).
    ``regions`` defaults to the generated head's.
    """
    regions = regions or _default_regions()
    pts = regions.points(verts, [LMK_UPPER_LIP_INNER, LMK_LOWER_LIP_INNER])  # [T, 2, 3]
    return pts[..., 0, 1] - pts[..., 1, 1]


def lip_width(verts: np.ndarray, regions: Optional[FaceRegions] = None) -> np.ndarray:
    """Mouth-corner distance [T] in metres."""
    regions = regions or _default_regions()
    pts = regions.points(verts, [LMK_MOUTH_LEFT, LMK_MOUTH_RIGHT])  # [T, 2, 3]
    return np.linalg.norm(pts[..., 0, :] - pts[..., 1, :], axis=-1)


def upper_face(verts: np.ndarray, regions: Optional[FaceRegions] = None) -> np.ndarray:
    """Upper-face vertices [T, U, 3] (brows, forehead, eyelids)."""
    regions = regions or _default_regions()
    return np.asarray(verts)[..., regions.upper_face_idx, :]


def batch_rodrigues(rotvecs: np.ndarray) -> np.ndarray:
    """Axis-angle [N, 3] -> rotation matrices [N, 3, 3] (float64)."""
    rotvecs = np.asarray(rotvecs, np.float64)
    angle = np.linalg.norm(rotvecs, axis=-1, keepdims=True)  # [N, 1]
    axis = rotvecs / np.maximum(angle, 1e-12)
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    s, c = np.sin(angle)[:, :, None], np.cos(angle)[:, :, None]
    return np.eye(3)[None] + s * k + (1 - c) * (k @ k)


def lbs_numpy(coeffs: np.ndarray, dirs: np.ndarray, rotvecs: np.ndarray,
              arrays: FlameModelArrays, v_base: Optional[np.ndarray] = None) -> np.ndarray:
    """Linear blend skinning as smplx's ``lbs`` (FLAME), in float64.

    coeffs [B, K] blend-shape coefficients for dirs [V, 3, K]; rotvecs [B, J, 3];
    v_base [V, 3] (default: the template).  Returns vertices [B, V, 3].
    """
    batch, n_joints = rotvecs.shape[:2]
    n_v = arrays.n_verts
    base = arrays.v_template if v_base is None else v_base
    blend = coeffs @ dirs.reshape(n_v * 3, -1).T  # [B, V*3]
    v_shaped = base[None].astype(np.float64) + blend.reshape(batch, n_v, 3)
    joints = arrays.J_regressor.astype(np.float64) @ v_shaped  # [B, J, 3]
    rots = batch_rodrigues(rotvecs.reshape(-1, 3)).reshape(batch, n_joints, 3, 3)
    feat = (rots[:, 1:] - np.eye(3)).reshape(batch, -1)  # [B, 9 (J-1)]
    posedirs = arrays.posedirs.reshape(n_v * 3, -1).astype(np.float64)  # [V*3, P]
    v_posed = v_shaped + (feat @ posedirs.T).reshape(batch, n_v, 3)
    glob_r, glob_t = _kinematic_chain(rots, joints, arrays.parents)
    out = np.zeros_like(v_posed)
    weights = arrays.weights.astype(np.float64)  # [V, J]
    for j in range(n_joints):
        if not weights[:, j].any():
            continue
        moved = v_posed @ np.swapaxes(glob_r[:, j], 1, 2) + glob_t[:, j, None]  # [B, V, 3]
        out += weights[None, :, j, None] * moved
    return out


def _kinematic_chain(rots, joints, parents):
    """Per-joint skinning transforms: rotations [B, J, 3, 3], translations [B, J, 3]."""
    n_joints = rots.shape[1]
    g_r, g_t = [], []
    for j in range(n_joints):
        p = int(parents[j]) if j else -1
        local_t = joints[:, j] - (joints[:, p] if p >= 0 else 0.0)
        if p < 0:
            g_r.append(rots[:, j])
            g_t.append(local_t)
        else:
            g_r.append(g_r[p] @ rots[:, j])
            g_t.append(np.einsum("bmn,bn->bm", g_r[p], local_t) + g_t[p])
    glob_r = np.stack(g_r, 1)  # [B, J, 3, 3]
    glob_t = np.stack(g_t, 1) - np.einsum("bjmn,bjn->bjm", glob_r, joints)
    return glob_r, glob_t


def _load_source(source: str) -> tuple:
    """(FlameModelArrays, model directory or None) for a source string."""
    if source == GENERATED:
        from a2llm_ros.flame.head_model import build_head
        return build_head().arrays, None
    if not os.path.exists(source):
        raise FileNotFoundError(f"FLAME model {source!r} not found: pass 'generated', a "
                                f".npz from `a2llm flame convert`, or a directory with "
                                f"FLAME_NEUTRAL.pkl and {EMBEDDING_NAME}. {HOW_TO_GET_FLAME}")
    if source.endswith(".npz"):
        return FlameModelArrays.load_npz(source), None
    pkl, emb, lids = find_model_files(source)
    arrays = from_flame_dict(safe_load_pickle(pkl), safe_load_pickle(emb) if emb else None,
                             load_eyelids(lids) if lids else None, source=pkl)
    return arrays, (source if os.path.isdir(source) else os.path.dirname(pkl))


class _SmplxBackend:
    """Vertices through ``smplx.FLAME`` built from a model directory."""

    def __init__(self, model_dir: str, n_expr: int, eyelids: Optional[np.ndarray],
                 betas: np.ndarray):
        import smplx
        import torch
        path = os.path.join(model_dir, "FLAME_NEUTRAL.pkl")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: smplx.FLAME needs FLAME_NEUTRAL.pkl "
                                    f"(rename FLAME 2020's generic_model.pkl) and "
                                    f"{EMBEDDING_NAME}. {HOW_TO_GET_FLAME}")
        self.torch = torch
        self.model = smplx.FLAME(model_path=model_dir, num_expression_coeffs=n_expr,
                                 num_betas=max(1, len(betas)), batch_size=1)
        self.betas = torch.zeros(1, self.model.num_betas)
        self.betas[0, :len(betas)] = torch.as_tensor(betas, dtype=torch.float32)
        self.n_lids = 0
        if eyelids is not None:
            lid_dirs = torch.as_tensor(eyelids, dtype=torch.float32).permute(1, 2, 0)
            self.model.expr_dirs = torch.cat([self.model.expr_dirs, lid_dirs], -1)
            self.n_lids = 2

    def __call__(self, expr, lids, rotvecs):
        """expr [B, E], lids [B, 2], rotvecs [B, 5, 3] -> vertices [B, V, 3]."""
        t = self.torch
        batch = expr.shape[0]
        coeffs = np.concatenate([expr, lids[:, :self.n_lids]], -1)
        rv = t.as_tensor(rotvecs, dtype=t.float32)
        with t.no_grad():
            out = self.model(betas=self.betas.expand(batch, -1),
                             expression=t.as_tensor(coeffs, dtype=t.float32),
                             global_orient=rv[:, 0], neck_pose=rv[:, 1], jaw_pose=rv[:, 2],
                             leye_pose=rv[:, 3], reye_pose=rv[:, 4],
                             transl=t.zeros(batch, 3))
        return out.vertices.numpy().astype(np.float64)


class FlameMesh:
    """Vertices [T, V, 3] (metres) from FLAME frames [T, layout.dim].

    ``source``: ``"generated"``, a converted ``.npz``, a FLAME ``.pkl`` or a directory.
    ``backend``: ``"numpy"`` (default; any source) or ``"smplx"`` (directory sources).
    ``head_joint``: ``"global"`` (default) or ``"neck"`` receives the head rotation.
    ``betas``: optional identity coefficients (default: mean shape).
    """

    def __init__(self, source: str = GENERATED, layout: FlameLayout = DEFAULT_LAYOUT,
                 backend: str = "numpy", head_joint: str = "global",
                 betas: Optional[np.ndarray] = None, batch_size: int = DEFAULT_BATCH):
        if head_joint not in HEAD_JOINTS:
            raise ValueError(f"head_joint must be one of {HEAD_JOINTS}, got {head_joint!r}")
        self.layout, self.head_joint, self.batch_size = layout, head_joint, batch_size
        self.arrays, model_dir = _load_source(source)
        if self.arrays.exprdirs.shape[-1] < layout.n_expr:
            raise ValueError(f"model has {self.arrays.exprdirs.shape[-1]} expression "
                             f"components, layout needs {layout.n_expr}")
        betas = np.zeros(0) if betas is None else np.asarray(betas, np.float64)
        self.v_base = self.arrays.v_template.astype(np.float64) + np.einsum(
            "vck,k->vc", self.arrays.shapedirs[..., :len(betas)], betas)
        self.dirs = self._blend_dirs()
        self.backend = backend
        self._smplx = None
        if backend == "smplx":
            if model_dir is None:
                raise ValueError("backend 'smplx' needs a model directory as source "
                                 "(see `a2llm flame generate`)")
            self._smplx = _SmplxBackend(model_dir, layout.n_expr, self.arrays.eyelids, betas)
        elif backend != "numpy":
            raise ValueError(f"backend must be 'numpy' or 'smplx', got {backend!r}")
        self._regions = None

    def _blend_dirs(self) -> np.ndarray:
        dirs = [self.arrays.exprdirs[..., :self.layout.n_expr]]
        if self.arrays.eyelids is not None:
            dirs.append(np.transpose(self.arrays.eyelids, (1, 2, 0)))  # [V, 3, 2]
        return np.concatenate(dirs, -1).astype(np.float64)  # [V, 3, E (+2)]

    @property
    def faces(self) -> np.ndarray:
        return self.arrays.faces

    @property
    def n_verts(self) -> int:
        return self.arrays.n_verts

    @property
    def has_eyelids(self) -> bool:
        return self.arrays.eyelids is not None

    @property
    def regions(self) -> FaceRegions:
        if self._regions is None:
            self._regions = FaceRegions.from_arrays(self.arrays)
        return self._regions

    def _rotvecs(self, blocks: dict, with_head: bool) -> np.ndarray:
        """Per-joint axis-angle [B, 5, 3] from frame blocks."""
        batch = blocks["jaw_pose"].shape[0]
        rot = np.zeros((batch, 5, 3))
        if with_head:
            rot[:, 0 if self.head_joint == "global" else 1] = blocks["head_rotation"]
        rot[:, 2] = blocks["jaw_pose"]
        return rot

    def _batch(self, frames: np.ndarray, with_head: bool) -> np.ndarray:
        blocks = self.layout.split(frames.astype(np.float64))
        rot = self._rotvecs(blocks, with_head)
        lids = blocks["eyelids"]
        if self._smplx is not None:
            return self._smplx(blocks["expression"], lids, rot)
        coeffs = blocks["expression"]
        if self.has_eyelids:
            coeffs = np.concatenate([coeffs, lids], -1)
        return lbs_numpy(coeffs, self.dirs, rot, self.arrays, self.v_base)

    def vertices(self, frames: np.ndarray, with_head: bool = True) -> np.ndarray:
        """frames [T, D] (or [D]) -> vertices [T, V, 3] float32 (metres)."""
        frames = np.asarray(frames)
        single = frames.ndim == 1
        frames = np.atleast_2d(frames)
        out = np.zeros((len(frames), self.n_verts, 3), np.float32)
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            out[start:start + len(chunk)] = self._batch(chunk, with_head)
        return out[0] if single else out

    def mouth_opening(self, verts: np.ndarray) -> np.ndarray:
        """Inner-lip vertical gap [T] (metres) of head-pose-free vertices."""
        return mouth_opening(verts, self.regions)

    def lip_width(self, verts: np.ndarray) -> np.ndarray:
        """Mouth-corner distance [T] (metres)."""
        return lip_width(verts, self.regions)

    def upper_face(self, verts: np.ndarray) -> np.ndarray:
        """Upper-face vertices [T, U, 3]."""
        return upper_face(verts, self.regions)

    def vertex_colors(self, skin=None) -> np.ndarray:
        """Per-vertex base colours [V, 3] (0..1) of :mod:`a2llm_ros.flame.appearance`
        (skin, lips, open eyes, brows); ``skin`` (RGB) replaces the skin tone."""
        from a2llm_ros.flame.appearance import Appearance
        return Appearance.from_arrays(self.arrays).vertex_colors(self.arrays.v_template, skin)
