"""A procedurally generated, openly licensed head model in FLAME format.

FLAME itself may not be redistributed, so the project generates its own head
with the same file layout, joint structure and parameter sizes: a stylised
head (deformed ellipsoid with nose, brow ridge, eye sockets, cheeks, lips,
chin and neck; 5196 vertices, 10272 triangles) with an open mouth slit, five joints like
FLAME and hand-designed expression bases.  It is produced by this module's
code, deterministically, and is licensed like the project itself (no FLAME
data was used).  Units are metres; y up, z out of the face, x to the subject's
left (as FLAME).

Joints (FLAME order): 0 root (neck base), 1 neck (head), 2 jaw, 3 left eye,
4 right eye.  The jaw pivot sits about 8 cm behind the lips, so a jaw rotation
of 0.2 rad about x opens the inner lips by about 1.2 cm (0.3 rad: about 1.7 cm).
The eyes have no eyeball geometry (eye poses move nothing).  Pose-corrective
blendshapes (posedirs) are zero.

Shape basis (``shapedirs``, 300 columns; 1.0 = about one standard deviation):

====  ===================  ==============================================
 idx   name                 effect
====  ===================  ==============================================
 0     head_width           x scaled by 4 %
 1     head_height          y scaled by 4 %
 2     head_depth           z scaled by 4 %
 3     nose_size            nose bump +30 %
 4     jaw_width            lower face x +5 %
 5     chin_prominence      chin forward 4 mm
 6     lip_thickness        lips forward 2 mm
 7     brow_ridge           brow ridge forward 2 mm
 8+    (zero)
====  ===================  ==============================================

Expression basis (``exprdirs``, 100 columns; coefficient 1.0 = moderate):

====  ===================  ==============================================
 idx   name                 effect at coefficient 1.0
====  ===================  ==============================================
 0     mouth_open           lower lip/chin down 5 mm, upper lip up 1 mm
 1     lip_stretch          mouth corners out 5 mm each and up 2 mm (smile)
 2     lip_pucker           lips forward 5 mm, corners in 4 mm
 3     brow_raise           brows and forehead up 5 mm
 4     brow_furrow          inner brows down 3 mm and together 3 mm
 5     eyelid_close         both upper eyelids down 4 mm
 6     cheek_raise          cheeks up 3 mm, forward 2 mm
 7     upper_lip_raise      upper lip up 3 mm
 8     mouth_corner_down    mouth corners down 4 mm (frown)
 9     mouth_shift          lips sideways (+x) 3 mm
 10    nose_wrinkle         nose up 2 mm, back 1 mm
 11+   random_smooth        3 random smooth facial blobs each, amplitude
                            1.5 mm * exp(-(idx - 11) / 25), fixed seed
====  ===================  ==============================================

Eyelids: the 58-D frame's two eyelid values drive two extra blendshapes
(``eyelids`` [2, V, 3]: left, right), added to the template before skinning
like the ``l_eyelid``/``r_eyelid`` arrays of FLAME-2023-based trackers; 0 is the
template, 1 closes that upper lid (9 mm down).

Landmarks: a 51-point static embedding in the iBUG-68 order without the jaw
contour (as FLAME's ``flame_static_embedding.pkl``): brows 0-9, nose 10-18,
eyes 19-30, outer lips 31-42, inner lips 43-50.  Index 45 is the inner upper
lip midpoint, 49 the inner lower lip midpoint, 31/37 the mouth corners.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from a2llm_ros.flame.convert import (EMBEDDING_NAME, EYELID_NAMES, N_EXPR_SPACE,
                                     N_SHAPE_SPACE, FlameModelArrays, write_pickle)
from a2llm_ros.flame.landmarks import (LMK_LOWER_LIP_INNER, LMK_MOUTH_LEFT, LMK_MOUTH_RIGHT,
                                       LMK_UPPER_LIP_INNER, upper_face_indices)

JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
PARENTS = (-1, 0, 1, 1, 1)
N_POSE_BASIS = 9 * (len(JOINT_NAMES) - 1)  # 36
SEED = 2602_04913

# Mesh resolution.
N_ROWS_HEAD = 44
N_ROWS_NECK = 10
N_COLS = 96
THETA_END = 0.80 * np.pi  # polar angle of the last head row
# Head geometry (metres).
HALF_WIDTH, HALF_HEIGHT, HALF_DEPTH = 0.075, 0.115, 0.095
NECK_RX, NECK_RZ, NECK_DZ = 0.050, 0.055, -0.012
NECK_BOTTOM_Y = -0.21
MOUTH_Y_TARGET = -0.045
MOUTH_HALF_WIDTH = 0.025
EYE_X, EYE_Y = 0.032, 0.022
BROW_Y = 0.040
NOSE_Y = -0.008
JAW_ROW_Y = -0.02

EXPRESSION_NAMES = ("mouth_open", "lip_stretch", "lip_pucker", "brow_raise", "brow_furrow",
                    "eyelid_close", "cheek_raise", "upper_lip_raise", "mouth_corner_down",
                    "mouth_shift", "nose_wrinkle")
SHAPE_NAMES = ("head_width", "head_height", "head_depth", "nose_size", "jaw_width",
               "chin_prominence", "lip_thickness", "brow_ridge")
N_RANDOM_BLOBS = 3
RANDOM_AMPLITUDE = 0.0015
RANDOM_DECAY = 25.0

N_LANDMARKS = 51


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class _Grid:
    """Rows x columns surface grid plus the lower-lip copies of the mouth slit."""

    rows_y: np.ndarray  # [R]
    mouth_row: int
    corner_col: int  # left corner column; right corner is N_COLS - corner_col
    interior: np.ndarray  # [M] columns strictly between the corners (wrapping)

    @property
    def n_rows(self) -> int:
        return len(self.rows_y)

    def idx(self, row, col):
        """Vertex index of grid point (row, col); index 0 is the top pole."""
        return 1 + row * N_COLS + np.asarray(col) % N_COLS

    def copy_idx(self, col):
        """Vertex index of the lower-lip copy of mouth-row column ``col``."""
        where = {int(c): k for k, c in enumerate(self.interior)}
        return 1 + self.n_rows * N_COLS + np.array([where[int(c) % N_COLS]
                                                    for c in np.atleast_1d(col)])

    @property
    def n_verts(self) -> int:
        return 1 + self.n_rows * N_COLS + len(self.interior)


def _row_profile():
    """Per-row height, x radius, z radius, z centre. Returns 4 arrays [R]."""
    theta = THETA_END * np.arange(1, N_ROWS_HEAD + 1) / N_ROWS_HEAD
    y_head = HALF_HEIGHT * np.cos(theta)
    rx_head, rz_head = HALF_WIDTH * np.sin(theta), HALF_DEPTH * np.sin(theta)
    y_neck = np.linspace(y_head[-1], NECK_BOTTOM_Y, N_ROWS_NECK + 1)[1:]
    blend = _smoothstep(np.linspace(0.0, 1.0, N_ROWS_NECK + 1)[1:] * 2.0)
    rx_neck = rx_head[-1] + (NECK_RX - rx_head[-1]) * blend
    rz_neck = rz_head[-1] + (NECK_RZ - rz_head[-1]) * blend
    zc = np.concatenate([np.zeros(N_ROWS_HEAD), NECK_DZ * blend])
    return (np.concatenate([y_head, y_neck]), np.concatenate([rx_head, rx_neck]),
            np.concatenate([rz_head, rz_neck]), zc)


def _make_grid(rows_y, rx):
    mouth_row = int(np.argmin(np.abs(rows_y - MOUTH_Y_TARGET)))
    phi = 2 * np.pi * np.arange(N_COLS) / N_COLS
    quarter = np.arange(1, N_COLS // 4)
    corner = int(quarter[np.argmin(np.abs(rx[mouth_row] * np.sin(phi[quarter])
                                          - MOUTH_HALF_WIDTH))])
    interior = np.array([c % N_COLS for c in range(-corner + 1, corner)])
    return _Grid(rows_y=rows_y, mouth_row=mouth_row, corner_col=corner, interior=interior)


def _face_relief(x, y, y_m):
    """Forward (z) relief of the face features at (x, y), metres. [V]"""
    dz = 0.024 * _gauss(x, y, 0, NOSE_Y, 0.010, 0.018)
    dz += 0.010 * _gauss(x, y, 0, 0.015, 0.006, 0.012)
    dz += 0.010 * _gauss(x, y, 0, -0.082, 0.016, 0.010)  # chin
    dz += 0.009 * _gauss(x, y, 0, y_m + 0.006, 0.021, 0.005)  # upper lip
    dz += 0.008 * _gauss(x, y, 0, y_m - 0.007, 0.019, 0.005)  # lower lip
    for s in (-1.0, 1.0):
        dz += 0.006 * _gauss(x, y, s * 0.030, BROW_Y, 0.018, 0.006)
        dz -= 0.010 * _gauss(x, y, s * EYE_X, EYE_Y, 0.013, 0.009)
        dz += 0.005 * _gauss(x, y, s * EYE_X, EYE_Y, 0.009, 0.006)
        dz += 0.007 * _gauss(x, y, s * 0.042, -0.012, 0.018, 0.016)
    return dz


def _grid_vertices(grid, rx, rz, zc):
    """Template vertices [V, 3], frontness [V] and lower-lip indicator [V]."""
    phi = 2 * np.pi * np.arange(N_COLS) / N_COLS
    x = rx[:, None] * np.sin(phi)[None]  # [R, C]
    y = np.repeat(grid.rows_y[:, None], N_COLS, axis=1)
    z = zc[:, None] + rz[:, None] * np.cos(phi)[None]
    front = np.clip(np.cos(phi), 0.0, 1.0)[None].repeat(grid.n_rows, 0) ** 2
    pts = np.stack([x, y, z], -1).reshape(-1, 3)
    top = np.array([[0.0, HALF_HEIGHT, 0.0]])
    copies = pts[grid.idx(grid.mouth_row, grid.interior) - 1]
    verts = np.concatenate([top, pts, copies])  # [V, 3]
    frontness = np.concatenate([[0.0], front.reshape(-1), front.reshape(-1)[
        grid.idx(grid.mouth_row, grid.interior) - 1]])
    lower = np.zeros(len(verts))
    lower[-len(copies):] = 1.0
    y_m = grid.rows_y[grid.mouth_row]
    verts[:, 2] += frontness * _face_relief(verts[:, 0], verts[:, 1], y_m)
    return verts, frontness, lower


def _quad_faces(a, b, c, d):
    """Two triangles per quad a-b (upper edge), d-c (lower edge). [2Q, 3]"""
    return np.concatenate([np.stack([a, d, b], -1), np.stack([b, d, c], -1)])


def _make_faces(grid):
    """Triangles [F, 3]; faces do not cross the mouth slit's interior columns."""
    cols = np.arange(N_COLS)
    nxt = (cols + 1) % N_COLS
    tris = [np.stack([np.zeros(N_COLS, int), grid.idx(0, cols), grid.idx(0, nxt)], -1)]
    for r in range(grid.n_rows - 1):
        a, b = grid.idx(r, cols), grid.idx(r, nxt)
        if r == grid.mouth_row:
            a, b = a.copy(), b.copy()
            inner = np.isin(cols, grid.interior)
            a[inner] = grid.copy_idx(cols[inner])
            inner_n = np.isin(nxt, grid.interior)
            b[inner_n] = grid.copy_idx(nxt[inner_n])
        tris.append(_quad_faces(a, b, grid.idx(r + 1, nxt), grid.idx(r + 1, cols)))
    return np.concatenate(tris).astype(np.int64)


def _below_mouth(verts, lower, grid):
    """Smooth 0..1 field: 1 under the mouth line, 0 above; wide fade beside it. [V]"""
    y_m = grid.rows_y[grid.mouth_row]
    band = 0.002 + 0.6 * np.maximum(np.abs(verts[:, 0]) - 0.8 * MOUTH_HALF_WIDTH, 0.0)
    below = _smoothstep((y_m - verts[:, 1]) / band + 0.5)
    upper_inner = grid.idx(grid.mouth_row, grid.interior)
    below[upper_inner] = 0.0
    return np.maximum(below, lower)


def _skinning(verts, below):
    """Skinning weights [V, 5] (root, neck, jaw, eyes unused)."""
    front = _smoothstep((verts[:, 2] + 0.01) / 0.04)
    not_neck = _smoothstep((verts[:, 1] + 0.115) / 0.02)
    root = 1.0 - _smoothstep((verts[:, 1] + 0.19) / 0.05)
    jaw = below * front * not_neck * (1.0 - root)
    weights = np.zeros((len(verts), len(JOINT_NAMES)))
    weights[:, 0], weights[:, 2] = root, jaw
    weights[:, 1] = 1.0 - root - jaw
    return weights


def _ring_row(grid, y):
    return int(np.argmin(np.abs(grid.rows_y - y)))


def _joint_regressor(verts, grid):
    """Dense J_regressor [5, V]: each joint is a weighted mean of vertices."""
    reg = np.zeros((len(JOINT_NAMES), len(verts)))
    cols = np.arange(N_COLS)
    reg[0, grid.idx(grid.n_rows - 1, cols)] = 1.0 / N_COLS
    reg[1, grid.idx(_ring_row(grid, -0.105), cols)] = 1.0 / N_COLS
    jaw_row = _ring_row(grid, JAW_ROW_Y)
    reg[2, grid.idx(jaw_row, cols)] = 0.7 / N_COLS
    reg[2, grid.idx(jaw_row, 0)] += 0.3
    for joint, sign in ((3, 1.0), (4, -1.0)):
        near = _gauss(verts[:, 0], verts[:, 1], sign * EYE_X, EYE_Y, 0.006, 0.006) > 0.5
        near &= verts[:, 2] > 0.03
        reg[joint, near] = 1.0 / near.sum()
    return reg


class _Fields:
    """Per-vertex coordinates and masks used to design the bases."""

    def __init__(self, verts, front, below, grid):
        self.x, self.y, self.z = verts[:, 0], verts[:, 1], verts[:, 2]
        self.front, self.below = front, below
        self.y_m = grid.rows_y[grid.mouth_row]
        self.n = len(verts)

    def g(self, cx, cy, sx, sy):
        return self.front * _gauss(self.x, self.y, cx, cy, sx, sy)

    def corners(self):
        """Mask around both mouth corners and the sign of x. ([V], [V])"""
        m = self.front * _gauss(np.abs(self.x), self.y, MOUTH_HALF_WIDTH, self.y_m,
                                0.012, 0.010)
        return m, np.sign(self.x)

    def disp(self, dx=0.0, dy=0.0, dz=0.0):
        return np.stack(np.broadcast_arrays(dx, dy, dz, np.zeros(self.n))[:3], -1)


def _expr_mouth(f):
    gx = f.front * np.exp(-0.5 * (f.x / 0.022) ** 2)
    gy = np.exp(-0.5 * ((f.y - f.y_m) / 0.012) ** 2)
    lower = -0.005 * f.below * gx * (0.5 + 0.5 * gy)
    upper = 0.001 * (1 - f.below) * gx * np.exp(-0.5 * ((f.y - f.y_m) / 0.008) ** 2)
    return f.disp(dy=lower + upper)


def _expr_stretch(f):
    m, s = f.corners()
    return f.disp(dx=0.005 * s * m, dy=0.002 * m)


def _expr_pucker(f):
    lips = f.g(0, f.y_m, 0.025, 0.012)
    m, s = f.corners()
    return f.disp(dx=-0.004 * s * m, dz=0.005 * lips)


def _expr_brow_raise(f):
    band = _smoothstep((f.y - EYE_Y - 0.004) / 0.012) * (1 - _smoothstep((f.y - 0.085) / 0.02))
    mask = f.front * band * np.exp(-0.5 * (f.x / 0.05) ** 2)
    return f.disp(dy=0.005 * mask)


def _expr_furrow(f):
    d = np.zeros((f.n, 3))
    for s in (-1.0, 1.0):
        m = f.g(s * 0.018, BROW_Y, 0.012, 0.008)
        d += f.disp(dx=-0.003 * s * m, dy=-0.003 * m)
    return d


def _upper_lid(f, sign):
    return f.g(sign * EYE_X, EYE_Y + 0.004, 0.012, 0.005)


def _expr_eyelids(f):
    return f.disp(dy=-0.004 * (_upper_lid(f, 1.0) + _upper_lid(f, -1.0)))


def _expr_cheeks(f):
    m = f.g(0.04, -0.015, 0.016, 0.014) + f.g(-0.04, -0.015, 0.016, 0.014)
    return f.disp(dy=0.003 * m, dz=0.002 * m)


def _expr_upper_lip(f):
    return f.disp(dy=0.003 * (1 - f.below) * f.g(0, f.y_m + 0.008, 0.018, 0.006))


def _expr_frown(f):
    m, _ = f.corners()
    return f.disp(dy=-0.004 * m)


def _expr_shift(f):
    return f.disp(dx=0.003 * f.g(0, f.y_m, 0.03, 0.012))


def _expr_nose(f):
    m = f.g(0, 0.01, 0.012, 0.01)
    return f.disp(dy=0.002 * m, dz=-0.001 * m)


_EXPR_FUNCS = (_expr_mouth, _expr_stretch, _expr_pucker, _expr_brow_raise, _expr_furrow,
               _expr_eyelids, _expr_cheeks, _expr_upper_lip, _expr_frown, _expr_shift,
               _expr_nose)


def _random_bases(f, count, rng):
    """Smooth random expression components [V, 3, count]."""
    out = np.zeros((f.n, 3, count))
    for k in range(count):
        amp = RANDOM_AMPLITUDE * np.exp(-k / RANDOM_DECAY)
        for _ in range(N_RANDOM_BLOBS):
            cx, cy = rng.uniform(-0.05, 0.05), rng.uniform(-0.09, 0.07)
            sx, sy = rng.uniform(0.01, 0.03, size=2)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            out[:, :, k] += amp * f.g(cx, cy, sx, sy)[:, None] * direction[None]
    return out


def _expression_basis(f):
    """Expression basis [V, 3, 100]."""
    named = np.stack([fn(f) for fn in _EXPR_FUNCS], -1)
    rng = np.random.default_rng(SEED)
    rest = _random_bases(f, N_EXPR_SPACE - named.shape[-1], rng)
    return np.concatenate([named, rest], -1)


def _shape_basis(f, verts):
    """Identity basis [V, 3, 300] (first len(SHAPE_NAMES) non-zero)."""
    out = np.zeros((f.n, 3, N_SHAPE_SPACE))
    for axis in range(3):
        out[:, axis, axis] = 0.04 * verts[:, axis]
    out[:, 2, 3] = 0.3 * f.front * 0.024 * _gauss(f.x, f.y, 0, NOSE_Y, 0.010, 0.018)
    out[:, 0, 4] = 0.05 * f.x * f.below
    out[:, 2, 5] = 0.004 * f.g(0, -0.082, 0.016, 0.010)
    out[:, 2, 6] = 0.002 * f.g(0, f.y_m, 0.022, 0.009)
    out[:, 2, 7] = 0.002 * (f.g(0.03, BROW_Y, 0.018, 0.006) + f.g(-0.03, BROW_Y, 0.018, 0.006))
    return out


def _eyelid_shapes(f):
    """Left and right eyelid-closing blendshapes [2, V, 3]."""
    lids = [_upper_lid(f, s) for s in (1.0, -1.0)]
    lids = [m / m.max() for m in lids]  # peak displacement exactly 9 mm
    return np.stack([f.disp(dy=-0.009 * m, dz=0.001 * m) for m in lids])


def _landmark_targets(y_m):
    """Approximate (x, y) of the 51 iBUG landmarks on the generated face. [51, 2]"""
    brows = [(x, BROW_Y + 0.004 - 40 * (abs(x) - 0.03) ** 2)
             for x in np.r_[np.linspace(-0.052, -0.012, 5), np.linspace(0.012, 0.052, 5)]]
    nose = [(0.0, y) for y in np.linspace(EYE_Y, NOSE_Y, 4)]
    nose += [(x, NOSE_Y - 0.012) for x in np.linspace(-0.012, 0.012, 5)]
    eyes = []
    for cx, order in ((-EYE_X, (-1, -0.33, 0.33, 1, 0.33, -0.33)),
                      (EYE_X, (-1, -0.33, 0.33, 1, 0.33, -0.33))):
        for k, u in enumerate(order):
            dy = 0.0 if abs(u) == 1 else (0.005 if k < 3 else -0.004)
            eyes.append((cx + 0.013 * u, EYE_Y + dy))
    outer = [(-MOUTH_HALF_WIDTH, y_m)]
    outer += [(x, y_m + 0.009) for x in np.linspace(-0.016, 0.016, 5)]
    outer += [(MOUTH_HALF_WIDTH, y_m)]
    outer += [(x, y_m - 0.010) for x in np.linspace(0.016, -0.016, 5)]
    return np.array(brows + nose + eyes + outer)  # [43, 2]; inner lips added apart


def _landmark_vertices(verts, front, grid):
    """Vertex index of each of the 51 landmarks. [51]"""
    y_m = grid.rows_y[grid.mouth_row]
    targets = _landmark_targets(y_m)
    cand = np.where(front > 0.3)[0]
    cand = cand[cand < 1 + grid.n_rows * N_COLS]  # grid vertices only
    d = np.linalg.norm(verts[cand, None, :2] - targets[None], axis=-1)  # [N, 43]
    idx = list(cand[np.argmin(d, axis=0)])
    left, right = grid.idx(grid.mouth_row, grid.corner_col), grid.idx(grid.mouth_row,
                                                                      -grid.corner_col)
    idx[31], idx[37] = right, left
    step = max(1, grid.corner_col // 2)
    upper = [int(grid.idx(grid.mouth_row, c)) for c in (-step, 0, step)]
    lower = [int(i) for i in grid.copy_idx([step, 0, -step])]
    return np.array(idx + [right] + upper + [left] + lower, dtype=np.int64)


def _embedding(lmk_vertices, faces):
    """Static embedding (face index [L], barycentric [L, 3]) pinning vertices."""
    face_idx, bary = [], []
    for v in lmk_vertices:
        f = int(np.argmax((faces == v).any(axis=1)))
        face_idx.append(f)
        bary.append((faces[f] == v).astype(np.float32))
    return np.array(face_idx, np.int64), np.array(bary, np.float32)


@dataclass(frozen=True)
class HeadModel:
    """The generated head: FLAME-format arrays plus named landmark vertices."""

    arrays: FlameModelArrays
    landmarks: dict  # name -> vertex index (int) or index array
    expression_names: tuple = EXPRESSION_NAMES
    shape_names: tuple = SHAPE_NAMES

    @property
    def faces(self) -> np.ndarray:
        return self.arrays.faces

    def write_flame_dir(self, out_dir: str) -> dict:
        """Write smplx-loadable files plus ``head_model.npz``; returns name -> path."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {"model": os.path.join(out_dir, "FLAME_NEUTRAL.pkl"),
                 "embedding": os.path.join(out_dir, EMBEDDING_NAME),
                 "npz": os.path.join(out_dir, "head_model.npz"),
                 "readme": os.path.join(out_dir, "README.txt")}
        write_pickle(paths["model"], self.arrays.to_flame_dict())
        write_pickle(paths["embedding"], self.arrays.embedding_dict())
        for k, name in enumerate(EYELID_NAMES):
            paths[name] = os.path.join(out_dir, name)
            np.save(paths[name], self.arrays.eyelids[k])
        self.arrays.save_npz(paths["npz"])
        with open(paths["readme"], "w", encoding="utf-8") as handle:
            handle.write(_README)
        return paths


_README = """Generated FLAME-format head (a2llm_ros.flame.head_model).
Produced procedurally by the a2llm_ros project; no FLAME data used; licensed like the
project. Files: FLAME_NEUTRAL.pkl + flame_static_embedding.pkl (smplx.FLAME layout;
use num_expression_coeffs=50 or 100), l_eyelid.npy/r_eyelid.npy (eyelid blendshapes),
head_model.npz (plain arrays for a2llm_ros.flame.mesh.FlameMesh).
"""


@functools.lru_cache(maxsize=1)
def build_head() -> HeadModel:
    """Generate the head (deterministic; cached)."""
    rows_y, rx, rz, zc = _row_profile()
    grid = _make_grid(rows_y, rx)
    verts, front, lower = _grid_vertices(grid, rx, rz, zc)
    faces = _make_faces(grid)
    below = _below_mouth(verts, lower, grid)
    fields_ = _Fields(verts, front, below, grid)
    lmk_v = _landmark_vertices(verts, front, grid)
    lmk_face_idx, lmk_b_coords = _embedding(lmk_v, faces)
    arrays = FlameModelArrays(
        v_template=verts.astype(np.float32), faces=faces,
        shapedirs=_shape_basis(fields_, verts).astype(np.float32),
        exprdirs=_expression_basis(fields_).astype(np.float32),
        posedirs=np.zeros((len(verts), 3, N_POSE_BASIS), np.float32),
        J_regressor=_joint_regressor(verts, grid).astype(np.float32),
        weights=_skinning(verts, below).astype(np.float32),
        parents=np.array(PARENTS, np.int64), lmk_face_idx=lmk_face_idx,
        lmk_b_coords=lmk_b_coords, eyelids=_eyelid_shapes(fields_).astype(np.float32),
        upper_face_idx=upper_face_indices(verts, verts[lmk_v]), source="a2llm_ros generated head")
    landmarks = {"upper_lip_inner": int(lmk_v[LMK_UPPER_LIP_INNER]),
                 "lower_lip_inner": int(lmk_v[LMK_LOWER_LIP_INNER]),
                 "mouth_left": int(lmk_v[LMK_MOUTH_LEFT]),
                 "mouth_right": int(lmk_v[LMK_MOUTH_RIGHT]),
                 "upper_face": arrays.upper_face_idx, "landmarks51": lmk_v}
    return HeadModel(arrays=arrays, landmarks=landmarks)


def head_landmarks() -> dict:
    """Named landmark vertex indices of the generated head (see ``HeadModel``)."""
    return build_head().landmarks
