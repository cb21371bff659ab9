"""``face_preview_node``: FLAME frames -> an RViz mesh (visualization_msgs/Marker).

The head mesh comes from :class:`a2llm_ros.flame.mesh.FlameMesh`: ``model`` is
``generated`` (the project's procedurally built head, always available), a
``.npz`` written by ``a2llm flame convert``, or a FLAME model path (a
directory with ``FLAME_NEUTRAL.pkl`` + ``flame_static_embedding.pkl``, or the
``.pkl`` itself); ``mesh_backend: smplx`` evaluates a directory through
``smplx.FLAME`` instead of the numpy skinning.

A worker thread publishes a ``TRIANGLE_LIST`` marker (3 points per face) at
most ``rate_hz`` times a second, showing the newest frame whose stamp has been
reached on the ROS clock (speech frames arrive ahead of time), and republishes
an unchanged mesh every ``keepalive_s``.  While nothing subscribes to
``marker_topic`` no mesh is evaluated (``publish_without_subscribers``).

Cost: the marker is published as serialized bytes patched in place
(:class:`a2llm_ros.ros.mesh_marker.MeshMarker`): one numpy gather of the face
corners into the message buffer instead of 30 816 ``Point`` objects filled in
Python and converted on publish (~40 ms), and in its own process the node runs
numpy's OpenBLAS single-threaded (``blas_threads``; its idle worker threads
busy-waited, ~40 ms more per marker on a loaded 2-core machine).  A marker of
the generated head (5 196 vertices, 10 272 faces) costs ~1.4 ms CPU: 1.4 % of
one core at the default 10 Hz instead of ~80 % (``python -m
a2llm_ros.ros.preview_cpu``, 2026-12-05, 2-core dev machine, CPU only; figures
in docs/ros_interfaces.md).  ``max_faces`` decimates the mesh (vertex
clustering) for smaller messages.
"""
from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import time
from typing import Deque, Optional, Tuple

import numpy as np
from rclpy.node import Node

from a2llm_ros.configbase import ConfigBase, Bound, above, at_least
from a2llm_ros.flame.mesh import HEAD_JOINTS, FlameMesh
from a2llm_ros.flame.preview_mesh import decimate_faces, set_blas_threads
from a2llm_ros.ros import msgconv as mc
from a2llm_ros.ros.mesh_marker import MeshMarker
from a2llm_ros.ros.params import ParameterBinding, ParamError
from a2llm_ros.ros.qos import output_qos

__all__ = ["PreviewNodeParams", "FacePreviewNode", "main"]

NODE_NAME = "face_preview_node"
MESH_BACKENDS = ("numpy", "smplx")
#: Frames kept while waiting for their presentation time.
MAX_BUFFERED = 500
#: Stamps further ahead than this are taken as a clock mismatch and shown at once (ns).
MAX_AHEAD_NS = 2_000_000_000
#: Highest ``rate_hz``.
MAX_RATE_HZ = 60.0
#: Smallest non-zero ``max_faces`` (fewer faces no longer look like a head).
MIN_FACES = 100
#: How long ``destroy_node`` waits for the worker thread (s).
WORKER_JOIN_S = 5.0
LIVE = ("rate_hz", "scale", "color", "with_head_rotation", "keepalive_s", "frame_id",
        "max_faces", "publish_without_subscribers")
#: Live parameters that need a new marker template.
MARKER_PARAMS = ("scale", "color", "frame_id", "max_faces")


@dataclasses.dataclass
class PreviewNodeParams(ConfigBase):
    """Parameters of ``face_preview_node``."""

    #: ``generated``, a converted ``.npz`` or a FLAME model directory / ``.pkl``.
    model: str = "generated"
    #: Mesh evaluation: ``numpy`` (built in) or ``smplx`` (the smplx package's FLAME).
    mesh_backend: str = "numpy"
    #: Joint receiving the head rotation: ``global`` or ``neck``.
    head_joint: str = "global"
    #: FlameChunk topic to draw.
    input_topic: str = "flame/chunks"
    #: visualization_msgs/Marker topic (TRIANGLE_LIST) for RViz.
    marker_topic: str = "face_marker"
    #: ``header.frame_id`` of the marker.
    frame_id: str = "a2llm_head"
    #: Markers published per second at most.
    rate_hz: float = 10.0
    #: Without new frames, the last mesh is published again this often (s).
    keepalive_s: float = 1.0
    #: Scale applied to the mesh (1 = metres).
    scale: float = 1.0
    #: Skin colour and alpha, RGBA in [0, 1] (lips, eyes and brows keep the colours of
    #: a2llm_ros.flame.appearance, the offline renderer's palette).
    color: Tuple[float, ...] = (0.85, 0.7, 0.6, 1.0)
    #: Apply the FLAME head rotation to the mesh (else the head stays upright).
    with_head_rotation: bool = True
    #: Decimate the mesh to at most this many faces (vertex clustering); 0: full mesh.
    max_faces: int = 0
    #: Evaluate and publish meshes while nothing subscribes to ``marker_topic``.
    publish_without_subscribers: bool = False
    #: BLAS (numpy OpenBLAS; torch for ``smplx``) threads when the node runs in a
    #: process of its own (``ros2 run`` / launch); 0 keeps the library default.
    blas_threads: int = 1

    BOUNDS = {"rate_hz": Bound(0.0, MAX_RATE_HZ, low_open=True), "keepalive_s": above(0.0),
              "scale": above(0.0), "max_faces": at_least(0), "blas_threads": at_least(0)}

    def __post_init__(self):
        self.check_bounds()
        if self.mesh_backend not in MESH_BACKENDS:
            raise ValueError(f"mesh_backend must be one of {MESH_BACKENDS}, "
                             f"got {self.mesh_backend!r}")
        if self.head_joint not in HEAD_JOINTS:
            raise ValueError(f"head_joint must be one of {HEAD_JOINTS}, got {self.head_joint!r}")
        if self.max_faces != 0 and self.max_faces < MIN_FACES:
            raise ValueError(f"max_faces must be 0 (full mesh) or >= {MIN_FACES}, "
                             f"got {self.max_faces}")
        if len(self.color) != 4 or not all(0.0 <= c <= 1.0 for c in self.color):
            raise ValueError(f"color must be 4 values (r, g, b, a) in [0, 1], "
                             f"got {list(self.color)}")


class FacePreviewNode(Node):
    """FLAME -> Marker TRIANGLE_LIST (see module docstring).

    ``start_worker=False`` leaves the publishing thread off: the caller drives
    :meth:`tick` itself (CPU measurement, tests).  ``own_process=True`` (set by
    :func:`main`) applies ``blas_threads`` to the whole process.
    """

    def __init__(self, node_name: str = NODE_NAME, start_worker: bool = True,
                 own_process: bool = False, **kwargs):
        super().__init__(node_name, **kwargs)
        self.params = ParameterBinding(self, PreviewNodeParams(), live=LIVE,
                                       locked=lambda: True, on_live_change=self._on_live,
                                       frozen_hint="restart the node to change the mesh "
                                                   "or topics")
        try:
            self.cfg = self.params.config()
        except ParamError as err:
            self.get_logger().error(f"{err}; using the defaults")
            self.cfg = PreviewNodeParams()
        if own_process:
            self._limit_threads(self.cfg)
        self.mesh = self._load_mesh(self.cfg)
        self.marker = self._make_marker(self.cfg)
        if not self.marker.serialized:
            self.get_logger().warning("cannot patch serialized markers with this RMW; "
                                      "publishing Marker messages (slow: lower rate_hz)")
        from a2llm_ros.msg import FlameChunk
        from visualization_msgs.msg import Marker
        self.pub = self.create_publisher(Marker, self.cfg.marker_topic, output_qos(5))
        self.sub = self.create_subscription(FlameChunk, self.cfg.input_topic, self.on_chunk,
                                            output_qos(50))
        self._lock = threading.Lock()
        self._frames: Deque[Tuple[int, np.ndarray]] = collections.deque(maxlen=MAX_BUFFERED)
        self._shown: Optional[Tuple[int, np.ndarray]] = None  # (stamp, frame) on display
        self._dirty = False
        self._last_pub_s = -float("inf")
        self.published = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if start_worker:
            self._thread = threading.Thread(target=self._run, name="face_preview", daemon=True)
            self._thread.start()
        self.get_logger().info(f"previewing {self.cfg.input_topic} on {self.cfg.marker_topic} "
                               f"at up to {self.cfg.rate_hz:g} Hz")

    def _load_mesh(self, cfg: PreviewNodeParams) -> FlameMesh:
        try:
            return FlameMesh(cfg.model, backend=cfg.mesh_backend, head_joint=cfg.head_joint)
        except (OSError, ValueError, ImportError) as err:
            self.get_logger().error(f"cannot load FLAME model {cfg.model!r} ({err}); "
                                    "showing the generated head")
            return FlameMesh("generated")

    def _limit_threads(self, cfg: PreviewNodeParams) -> None:
        """Apply ``blas_threads`` to numpy's OpenBLAS (and torch, for ``smplx``)."""
        if cfg.blas_threads <= 0:
            return
        if set_blas_threads(cfg.blas_threads) is None:
            self.get_logger().info("no OpenBLAS found to limit to blas_threads "
                                   f"{cfg.blas_threads}")
        if cfg.mesh_backend == "smplx":
            import torch
            torch.set_num_threads(cfg.blas_threads)

    def _faces(self, max_faces: int) -> np.ndarray:
        """The mesh faces, decimated to ``max_faces`` (0: all), joints kept apart."""
        groups = np.argmax(self.mesh.arrays.weights, axis=1)
        return decimate_faces(self.mesh.v_base, self.mesh.faces, max_faces, groups)

    def _make_marker(self, cfg: PreviewNodeParams) -> MeshMarker:
        return MeshMarker(self._faces(cfg.max_faces), cfg.frame_id, color=cfg.color,
                          scale=cfg.scale,
                          vertex_colors=self.mesh.vertex_colors(skin=cfg.color[:3]))

    def _on_live(self, cfg: PreviewNodeParams, names: Tuple[str, ...]) -> None:
        marker = (self._make_marker(cfg) if set(names) & set(MARKER_PARAMS)
                  else self.marker)
        with self._lock:
            self.cfg = cfg
            self.marker = marker
            self._dirty = True

    @property
    def n_marker_points(self) -> int:
        return self.marker.n_points

    def on_chunk(self, msg) -> None:
        """FlameChunk callback: queue its frames for their presentation time."""
        frames, stamps = mc.frames_from_chunk(msg, self.mesh.layout.n_expr)
        with self._lock:
            for stamp, frame in zip(stamps.tolist(), frames):
                if self._frames and stamp <= self._frames[-1][0]:
                    continue  # out of order / repeated
                self._frames.append((stamp, frame))

    def _pick(self, now_ns: int) -> Optional[Tuple[int, np.ndarray]]:
        """Newest frame whose time has come (or the newest, on a clock mismatch)."""
        with self._lock:
            if not self._frames:
                return None
            if self._frames[0][0] - now_ns > MAX_AHEAD_NS:
                stamp_frame = self._frames[-1]
                self._frames.clear()
                return stamp_frame
            chosen = None
            while self._frames and self._frames[0][0] <= now_ns:
                chosen = self._frames.popleft()
            return chosen

    def _watched(self) -> bool:
        """Whether a marker would reach anyone (or must be published regardless)."""
        return self.cfg.publish_without_subscribers or self.pub.get_subscription_count() > 0

    def tick(self, now_ns: int, mono_s: float) -> bool:
        """One worker step at ROS time ``now_ns`` / monotonic ``mono_s``; True if published.

        Takes the newest due frame and publishes its mesh when it is new, when the
        shown mesh is ``keepalive_s`` old or a live parameter changed -- and
        someone subscribes (else the work waits until someone does).
        """
        picked = self._pick(now_ns)
        if picked is not None:
            self._shown = picked
        stale = mono_s - self._last_pub_s >= self.cfg.keepalive_s or self._dirty
        if self._shown is None or not (picked is not None or stale) or not self._watched():
            return False
        self._dirty = False
        self._render(*self._shown)
        self._last_pub_s = mono_s
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick(self.get_clock().now().nanoseconds, t0)
            except Exception as err:  # noqa: BLE001 (keep previewing)
                if not self.context.ok():
                    break  # rclpy shut down (Ctrl-C): the node is about to be destroyed
                self.get_logger().warning(f"preview failed: {err!r}")
            self._stop.wait(max(0.0, 1.0 / self.cfg.rate_hz - (time.monotonic() - t0)))

    def _render(self, stamp: int, frame: np.ndarray) -> None:
        verts = self.mesh.vertices(frame, with_head=self.cfg.with_head_rotation)  # [V, 3]
        with self._lock:
            data = self.marker.update(verts, stamp)  # bytes: a copy, safe outside the lock
        self.pub.publish(data)
        self.published += 1

    def destroy_node(self):
        if getattr(self, "_destroyed", False):
            return None
        self._destroyed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WORKER_JOIN_S)
        return super().destroy_node()


def main(argv=None) -> int:
    """``ros2 run a2llm_ros face_preview_node``."""
    from a2llm_ros.ros.spin import spin_node
    return spin_node(lambda: FacePreviewNode(own_process=True), argv)


if __name__ == "__main__":
    sys.exit(main())
