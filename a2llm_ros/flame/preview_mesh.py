"""ROS-free support of the RViz face preview: triangle soups, decimation, byte patching.

``face_preview_node`` publishes a ``TRIANGLE_LIST`` marker: 3 points per face,
``3 F`` points in all.  Filling ``3 F`` ``geometry_msgs/Point`` objects in
Python and converting them to C on publish cost ~45 ms per marker for the
generated head (10 272 faces); so the node serializes one template marker
once and, per frame, only overwrites the bytes of the points block and the
stamp (:class:`SerializedMeshTemplate`), with one numpy gather
(:func:`triangle_soup`).

:func:`decimate_faces` optionally coarsens the topology by vertex clustering
(grid cells grown until at most ``max_faces`` faces remain; vertices of
different skinning groups, e.g. jaw vs. head, never merge so the mouth still
opens).  The decimated faces index the original vertices, so a frame costs a
gather and no extra evaluation.

:func:`set_blas_threads`: numpy's OpenBLAS wakes its worker threads for the
skinning's matrix-vector products, and they busy-wait between calls; on a
loaded 2-core machine that alone cost ~50-85 % of a core at 10 Hz, so the
preview's own process runs OpenBLAS single-threaded (a frame is < 1 ms).
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import struct
from typing import Callable, List, Optional, Tuple

import numpy as np

from a2llm_ros.constants import NS_PER_S

__all__ = ["triangle_soup", "cluster_representatives", "clustered_faces", "decimate_faces",
           "SerializedMeshTemplate", "sentinel_points", "SENTINEL_SEC", "SENTINEL_NANOSEC",
           "NS_PER_S", "set_blas_threads", "get_blas_threads"]

#: Stamp written into the template so its bytes can be found (``sec``, ``nanosec``).
SENTINEL_SEC = 0x1A2B3C4D
SENTINEL_NANOSEC = 0x05060708
#: ``builtin_interfaces/Time``: int32 seconds + uint32 nanoseconds, native byte order
#: (the serializer writes native order and says so in the encapsulation header).
STAMP_FORMAT = "=iI"
INT32_MAX = 2 ** 31 - 1
#: First clustering cell: the mesh extent divided by this (finer than any real mesh).
CLUSTER_START_DIVISIONS = 512.0
#: Cell growth per decimation step (smaller: face count closer to ``max_faces``).
CLUSTER_GROWTH = 1.1


def triangle_soup(verts: np.ndarray, faces_flat: np.ndarray, scale: float = 1.0,
                  out: Optional[np.ndarray] = None) -> np.ndarray:
    """Corner positions ``[3 F, 3]`` float64 of faces ``faces_flat [3 F]`` (times ``scale``).

    Written into ``out`` (float64 ``[3 F, 3]``, e.g. a view into a message buffer)
    when given.
    """
    corners = np.asarray(verts, dtype=np.float64)[faces_flat]
    if out is None:
        return corners * scale
    np.multiply(corners, scale, out=out)
    return out


def cluster_representatives(verts: np.ndarray, cell: float,
                            groups: Optional[np.ndarray] = None) -> np.ndarray:
    """For each vertex ``[V]``, the vertex standing for its grid cell (index ``[V]``).

    Cells are cubes of side ``cell`` (metres); ``groups [V]`` (int) keeps vertices
    of different groups apart.  The representative is the member closest to the
    cell's centroid.
    """
    verts = np.asarray(verts, dtype=np.float64)
    keys = np.floor((verts - verts.min(0)) / cell).astype(np.int64)
    if groups is not None:
        keys = np.concatenate([keys, np.asarray(groups, np.int64)[:, None]], 1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_cells = int(inverse.max()) + 1
    counts = np.bincount(inverse, minlength=n_cells)
    centroid = np.zeros((n_cells, 3))
    np.add.at(centroid, inverse, verts)
    centroid /= counts[:, None]
    dist = np.linalg.norm(verts - centroid[inverse], axis=1)
    order = np.lexsort((dist, inverse))  # by cell, then distance to its centroid
    first = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]
    rep = np.empty(n_cells, np.int64)
    rep[inverse[first]] = first
    return rep[inverse]


def clustered_faces(faces: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """Faces ``[F, 3]`` re-pointed to representatives, without degenerate or repeated ones.

    Winding (the corner order) is kept; the first of repeated faces survives.
    """
    moved = np.asarray(rep)[np.asarray(faces, np.int64)]
    keep = ((moved[:, 0] != moved[:, 1]) & (moved[:, 1] != moved[:, 2])
            & (moved[:, 0] != moved[:, 2]))
    moved = moved[keep]
    if not len(moved):
        return moved.reshape(0, 3)
    _, first = np.unique(np.sort(moved, axis=1), axis=0, return_index=True)
    return moved[np.sort(first)]


def decimate_faces(verts: np.ndarray, faces: np.ndarray, max_faces: int,
                   groups: Optional[np.ndarray] = None) -> np.ndarray:
    """At most ``max_faces`` faces ``[F', 3]`` over the same vertices (vertex clustering).

    ``max_faces <= 0`` or a mesh already small enough returns ``faces`` unchanged.
    ``verts [V, 3]`` is the rest shape the cells are laid over; ``groups [V]``
    (e.g. the dominant skinning joint) keeps vertices that move apart from merging.
    """
    faces = np.asarray(faces, np.int64)
    if max_faces <= 0 or len(faces) <= max_faces:
        return faces
    verts = np.asarray(verts, np.float64)
    extent = float(np.ptp(verts, axis=0).max())
    if extent <= 0.0:
        return faces[:0]
    cell = extent / CLUSTER_START_DIVISIONS
    while True:
        out = clustered_faces(faces, cluster_representatives(verts, cell, groups))
        if len(out) <= max_faces:
            return out
        cell *= CLUSTER_GROWTH


def sentinel_points(n_points: int) -> np.ndarray:
    """Distinctive float64 coordinates ``[n_points, 3]`` to find a points block by its bytes."""
    return (np.arange(n_points * 3, dtype=np.float64).reshape(-1, 3) + 0.5) * np.pi + 1e3


def _find_unique(raw: bytes, pattern: bytes, what: str) -> int:
    """Offset of the single occurrence of ``pattern`` in ``raw`` (ValueError otherwise)."""
    at = raw.find(pattern)
    if at < 0 or raw.find(pattern, at + 1) >= 0:
        raise ValueError(f"the serialized template has {'no' if at < 0 else 'several'} "
                         f"copies of its {what}")
    return at


@dataclasses.dataclass
class SerializedMeshTemplate:
    """A serialized message whose stamp and float64 points block are rewritten in place.

    Built from the serialization of a message carrying :func:`sentinel_points`
    and the stamp ``(SENTINEL_SEC, SENTINEL_NANOSEC)``: :meth:`locate` finds both
    by their bytes, so it needs no knowledge of the wire format beyond
    "float64 and int32/uint32 in native byte order" (and raises ValueError when
    that does not hold, so the caller can fall back to message objects).
    """

    buffer: bytearray
    points_offset: int
    n_points: int
    stamp_offset: int

    @classmethod
    def locate(cls, raw: bytes, n_points: int) -> "SerializedMeshTemplate":
        """Template from ``raw``, serialized with ``sentinel_points(n_points)`` and stamp."""
        points = _find_unique(raw, sentinel_points(n_points).tobytes(), "points")
        stamp = _find_unique(raw, struct.pack(STAMP_FORMAT, SENTINEL_SEC, SENTINEL_NANOSEC),
                             "stamp")
        return cls(bytearray(raw), points, n_points, stamp)

    def points_view(self) -> np.ndarray:
        """Writable float64 view ``[n_points, 3]`` of the points block in :attr:`buffer`."""
        return np.frombuffer(self.buffer, dtype=np.float64, count=3 * self.n_points,
                             offset=self.points_offset).reshape(-1, 3)

    def set_stamp(self, stamp_ns: int) -> None:
        """Write ``stamp_ns`` (clamped to ``[0, int32 seconds]``) as the message stamp."""
        sec, nanosec = divmod(max(0, int(stamp_ns)), NS_PER_S)
        struct.pack_into(STAMP_FORMAT, self.buffer, self.stamp_offset, min(sec, INT32_MAX),
                         nanosec)

    def to_bytes(self) -> bytes:
        """The current serialized message (a copy)."""
        return bytes(self.buffer)


# ----------------------------------------------------------------------------- BLAS threads

#: (set, get) thread-count functions of OpenBLAS builds: plain, numpy/scipy wheels.
OPENBLAS_SYMBOLS = (("openblas_set_num_threads", "openblas_get_num_threads"),
                    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"))
PROC_MAPS = "/proc/self/maps"
BlasControl = Tuple[Callable[[int], None], Callable[[], int]]


def _loaded_openblas() -> List[BlasControl]:
    """(set, get) thread functions of every OpenBLAS loaded in this process (Linux)."""
    try:
        with open(PROC_MAPS) as fh:
            paths = sorted({line.split()[-1] for line in fh
                            if "openblas" in os.path.basename(line.split()[-1]).lower()})
    except (OSError, IndexError):
        return []
    controls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in OPENBLAS_SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                controls.append((setter, getter))
                break
    return controls


def get_blas_threads() -> Optional[int]:
    """Threads of the first loaded OpenBLAS (numpy's), or None when none is found."""
    controls = _loaded_openblas()
    return int(controls[0][1]()) if controls else None


def set_blas_threads(n_threads: int) -> Optional[int]:
    """Use ``n_threads`` in every loaded OpenBLAS; returns the previous count (None: none).

    Affects the whole process: call it only in a process of one's own.
    """
    controls = _loaded_openblas()
    if not controls:
        return None
    before = int(controls[0][1]())
    for setter, _ in controls:
        setter(int(n_threads))
    return before
