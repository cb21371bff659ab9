"""A small software rasterizer for FLAME heads (numpy only, no GPU, no OpenGL).

:class:`FaceRenderer` draws vertices [V, 3] of one topology, frontal and
orthographic (x right, y up, the camera looking down -z), into RGB images:

* visibility by a z-buffer (every face, front and back, is rasterized; the
  nearest wins), pixel centres sampled, ``supersample`` x ``supersample``
  samples per output pixel averaged for anti-aliasing;
* smooth shading: per-pixel normals interpolated from area-weighted vertex
  normals, a key and a fill light (Lambert), a soft specular highlight;
* colours from :class:`~a2llm_ros.flame.appearance.Appearance` at the
  interpolated *rest-pose* position of each pixel (skin, lips, eyes with the
  eyelid opening of the frame, brows), back faces -- the inside of the head,
  seen through the open mouth -- in :data:`~a2llm_ros.flame.appearance.MOUTH_INSIDE_RGB`.

Cost on the 2-core development machine (2026-12-05, CPU shared with other
jobs): about 75 ms for a 448 x 448 frame of the generated head (10 272 faces)
without supersampling, about 0.6 s for 384 x 384 with 2 x 2 supersampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np

from a2llm_ros.flame.appearance import (MOUTH_INSIDE_RGB, Appearance, eye_gaps,
                                        eye_openness)

#: Background: vertical gradient from the top colour to the bottom one (RGB 0..1).
BACKGROUND_TOP = (0.94, 0.95, 0.97)
BACKGROUND_BOTTOM = (0.78, 0.81, 0.86)
#: Lights (directions towards the light, camera space: x right, y up, z to the viewer).
KEY_LIGHT = (-0.45, 0.55, 1.0)
FILL_LIGHT = (0.7, -0.1, 0.6)
AMBIENT, KEY_GAIN, FILL_GAIN = 0.30, 0.65, 0.20
SPECULAR_GAIN, SHININESS = 0.10, 24.0
#: Inside of the mouth: brightness at its front and how fast it darkens with depth (1/m).
INSIDE_GAIN, INSIDE_FALLOFF = 0.9, 40.0
#: Barycentric tolerance of the inside test (shared edges leave no holes).
EDGE_EPS = 1e-7
#: View: half-size of the square view = landmark extent x ZOOM; centre moved down by DROP.
FACE_ZOOM, FACE_DROP = 0.72, 0.22
HEAD_ZOOM, HEAD_DROP = 1.1, 0.05
Bounds = Tuple[float, float, float, float]  # (xmin, xmax, ymin, ymax) metres


def view_bounds(mesh, verts: np.ndarray, zoom: float = FACE_ZOOM,
                drop: float = FACE_DROP) -> Bounds:
    """Square view (xmin, xmax, ymin, ymax) around the landmarks of verts [T, V, 3] (or [V, 3]).

    ``zoom``: half-size as a multiple of the landmark extent; ``drop``: the centre
    moved down by this multiple of the extent (shows the chin).
    """
    verts = np.asarray(verts)
    pts = mesh.regions.points(verts, range(len(mesh.regions.lmk_face_idx)))  # [T, L, 3]
    flat = pts[..., :2].reshape(-1, 2)
    lo, hi = flat.min(0), flat.max(0)
    extent = float((hi - lo).max())
    cx, cy = (lo + hi) / 2
    cy -= drop * extent
    half = zoom * extent
    return cx - half, cx + half, cy - half, cy + half


@dataclass
class Fragments:
    """The z-buffer's winners: one entry per covered sample."""

    pixel: np.ndarray  # [P] flat sample index (row * width + column)
    face: np.ndarray  # [P] face index
    bary: np.ndarray  # [P, 3] barycentric coordinates in that face


def rasterize(xy: np.ndarray, depth: np.ndarray, faces: np.ndarray, width: int,
              height: int) -> Fragments:
    """Nearest face at each sample centre of a ``width`` x ``height`` grid.

    xy [V, 2] sample coordinates (x right, y down, sample (i, j) centred at
    (i + 0.5, j + 0.5)), depth [V] (larger is nearer), faces [F, 3].
    """
    tri = xy[faces]  # [F, 3, 2]
    x0, y0 = tri[:, 0, 0], tri[:, 0, 1]
    ex1, ey1 = tri[:, 1, 0] - x0, tri[:, 1, 1] - y0
    ex2, ey2 = tri[:, 2, 0] - x0, tri[:, 2, 1] - y0
    area = ex1 * ey2 - ex2 * ey1  # [F] twice the signed area
    lo = np.ceil(tri.min(1) - 0.5).astype(np.int64)  # [F, 2] first sample column/row
    hi = np.floor(tri.max(1) - 0.5).astype(np.int64)  # [F, 2] last
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, (width - 1, height - 1))
    span = hi - lo + 1  # [F, 2]
    ok = (np.abs(area) > 1e-12) & (span > 0).all(1)
    idx = np.nonzero(ok)[0]  # [F']
    count = span[idx, 0] * span[idx, 1]  # [F'] candidate samples per face
    face = np.repeat(idx, count)  # [C]
    local = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    w = span[face, 0]
    px = lo[face, 0] + local % w  # [C]
    py = lo[face, 1] + local // w
    dx, dy = px + 0.5 - x0[face], py + 0.5 - y0[face]
    inv = 1.0 / area[face]
    b1 = (dx * ey2[face] - ex2[face] * dy) * inv  # [C]
    b2 = (ex1[face] * dy - dx * ey1[face]) * inv
    b0 = 1.0 - b1 - b2
    inside = (b0 >= -EDGE_EPS) & (b1 >= -EDGE_EPS) & (b2 >= -EDGE_EPS)
    face, px, py, b0, b1, b2 = (a[inside] for a in (face, px, py, b0, b1, b2))
    dep = depth[faces[face]]  # [C', 3]
    z = b0 * dep[:, 0] + b1 * dep[:, 1] + b2 * dep[:, 2]  # [C']
    pixel = py * width + px
    zbuf = np.full(width * height, -np.inf)
    np.maximum.at(zbuf, pixel, z)
    win = z >= zbuf[pixel]
    # Exact depth ties (shared vertices) keep one of the tied faces.
    pixel, face = pixel[win], face[win]
    bary = np.stack([b0[win], b1[win], b2[win]], -1)  # [P, 3]
    _, first = np.unique(pixel, return_index=True)
    return Fragments(pixel[first], face[first], bary[first])


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals [V, 3] of verts [V, 3]; face normals [F, 3] second."""
    tri = verts[faces]  # [F, 3, 3]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # [F, 3], |fn| = 2 area
    flat = faces.reshape(-1)
    vn = np.stack([np.bincount(flat, weights=np.repeat(fn[:, c], 3), minlength=len(verts))
                   for c in range(3)], -1)  # [V, 3]
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    return vn, fn


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def background(width: int, height: int) -> np.ndarray:
    """Background image [H, W, 3] float (vertical gradient)."""
    t = np.linspace(0.0, 1.0, height)[:, None, None]  # [H, 1, 1]
    top, bottom = np.asarray(BACKGROUND_TOP), np.asarray(BACKGROUND_BOTTOM)
    return np.broadcast_to(top + t * (bottom - top), (height, width, 3)).copy()


class FaceRenderer:
    """Images of a :class:`~a2llm_ros.flame.mesh.FlameMesh`'s vertices (see module docstring).

    ``size``: (width, height) pixels (or one int: square); ``bounds``: the view
    (xmin, xmax, ymin, ymax) in metres, same aspect as ``size``; ``supersample``:
    samples per pixel along each axis.
    """

    def __init__(self, mesh, size, bounds: Bounds, supersample: int = 2):
        self.mesh = mesh
        self.width, self.height = (size, size) if np.isscalar(size) else map(int, size)
        self.bounds = tuple(float(b) for b in bounds)
        self.ss = max(1, int(supersample))
        self.faces = np.asarray(mesh.faces, np.int64)  # [F, 3]
        self.rest = mesh.arrays.v_template.astype(np.float64)  # [V, 3]
        self.look = Appearance.from_arrays(mesh.arrays)
        self._eye_ref = self._eye_calibration()
        self._bg = background(self.width * self.ss, self.height * self.ss)

    def _eye_calibration(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Lid gaps [2] with the eyes open and, for models with eyelid blendshapes, closed."""
        layout = self.mesh.layout
        frames = np.zeros((2, layout.dim))
        frames[1, layout.dim - 2:] = 1.0  # eyelids closed
        gaps = eye_gaps(self.mesh.vertices(frames, with_head=False), self.mesh.arrays)
        return gaps[0], (gaps[1] if self.mesh.has_eyelids else None)

    def eye_open(self, verts: np.ndarray) -> np.ndarray:
        """Eye openness [T, 2] (or [2]) in [0, 1] of vertices [T, V, 3] (or [V, 3])."""
        gaps = eye_gaps(verts, self.mesh.arrays)
        return eye_openness(gaps, *self._eye_ref)

    def _to_samples(self, verts: np.ndarray) -> np.ndarray:
        """Sample-grid coordinates [V, 2] (x right, y down) of verts [V, 3]."""
        xmin, xmax, ymin, ymax = self.bounds
        w, h = self.width * self.ss, self.height * self.ss
        return np.stack([(verts[:, 0] - xmin) / (xmax - xmin) * w,
                         (ymax - verts[:, 1]) / (ymax - ymin) * h], -1)

    def render(self, verts: np.ndarray, eye_open: Optional[Iterable[float]] = None
               ) -> np.ndarray:
        """Image [H, W, 3] uint8 of verts [V, 3]; ``eye_open`` [2] defaults to measured."""
        verts = np.asarray(verts, np.float64)
        if eye_open is None:
            eye_open = self.eye_open(verts)
        w, h = self.width * self.ss, self.height * self.ss
        frag = rasterize(self._to_samples(verts), verts[:, 2], self.faces, w, h)
        vn, fn = vertex_normals(verts, self.faces)
        corners = self.faces[frag.face]  # [P, 3]
        normal = np.einsum("pk,pkc->pc", frag.bary, vn[corners])  # [P, 3]
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        front = fn[frag.face, 2] > 0.0  # [P] faces turned towards the camera
        colour = np.empty((len(frag.pixel), 3))
        rest = np.einsum("pk,pkc->pc", frag.bary[front], self.rest[corners[front]])  # [P', 3]
        colour[front] = self._shade(self.look.albedo(rest, tuple(eye_open)), normal[front])
        colour[~front] = self._inside(verts, corners[~front], frag.bary[~front])
        image = self._bg.reshape(-1, 3).copy()
        image[frag.pixel] = colour
        return self._resolve(image.reshape(h, w, 3))

    def _shade(self, albedo: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Lit colours [P, 3] of albedo [P, 3] with unit normals [P, 3]."""
        key, fill = _unit(KEY_LIGHT), _unit(FILL_LIGHT)
        lam_key = np.clip(normal @ key, 0.0, None)[:, None]  # [P, 1]
        lam_fill = np.clip(normal @ fill, 0.0, None)[:, None]
        half = _unit(key + np.array([0.0, 0.0, 1.0]))
        spec = SPECULAR_GAIN * np.clip(normal @ half, 0.0, None) ** SHININESS
        light = AMBIENT + KEY_GAIN * lam_key + FILL_GAIN * lam_fill
        return albedo * light + spec[:, None]

    def _inside(self, verts: np.ndarray, corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """Colours [P, 3] of back faces: the mouth interior, darker the deeper it lies."""
        z = np.einsum("pk,pk->p", bary, verts[corners, 2])  # [P]
        lips_z = float(verts[:, 2].max()) if len(verts) else 0.0
        depth = np.clip(lips_z - z, 0.0, None)
        gain = INSIDE_GAIN * np.exp(-INSIDE_FALLOFF * depth)  # [P]
        return np.asarray(MOUTH_INSIDE_RGB) * (0.35 + gain[:, None])

    def _resolve(self, image: np.ndarray) -> np.ndarray:
        """Average ss x ss sample blocks -> uint8 [H, W, 3]."""
        s = self.ss
        if s > 1:
            image = image.reshape(self.height, s, self.width, s, 3).mean((1, 3))
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def frames(self, frames: np.ndarray, with_head: bool = True) -> Iterator[np.ndarray]:
        """Images [H, W, 3] uint8 of FLAME frames [T, D], one at a time."""
        frames = np.atleast_2d(np.asarray(frames))
        for start in range(0, len(frames), self.mesh.batch_size):
            verts = self.mesh.vertices(frames[start:start + self.mesh.batch_size], with_head)
            eyes = self.eye_open(verts)  # [B, 2]
            for v, e in zip(verts, eyes):
                yield self.render(v, e)


def render_images(mesh, frames: np.ndarray, size=256, bounds: Optional[Bounds] = None,
                  supersample: int = 2) -> np.ndarray:
    """Images [T, H, W, 3] uint8 of FLAME frames [T, D] (bounds default: the face view)."""
    frames = np.atleast_2d(np.asarray(frames))
    if bounds is None:
        bounds = view_bounds(mesh, mesh.vertices(frames))
    renderer = FaceRenderer(mesh, size, bounds, supersample)
    return np.stack(list(renderer.frames(frames)))
