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
an unchanged mesh every ``keepalive_s``.  One marker of the generated head
(10 272 faces, 30 816 points) costs about 0.1 s of CPU in Python; lower
``rate_hz`` on a small computer.
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

from a2llm_ros.configbase import ConfigBase
from a2llm_ros.flame.mesh import HEAD_JOINTS, FlameMesh
from a2llm_ros.ros import msgconv as mc
from a2llm_ros.ros.params import ParameterBinding, ParamError
from a2llm_ros.ros.qos import output_qos

__all__ = ["PreviewNodeParams", "FacePreviewNode", "main"]

NODE_NAME = "face_preview_node"
MESH_BACKENDS = ("numpy", "smplx")
#: Frames kept while waiting for their presentation time.
MAX_BUFFERED = 500
#: Stamps further ahead than this are taken as a clock mismatch and shown at once (ns).
MAX_AHEAD_NS = 2_000_000_000
LIVE = ("rate_hz", "scale", "color", "with_head_rotation", "keepalive_s", "frame_id")


@dataclasses.dataclass
class PreviewNodeParams(ConfigBase):
    """Parameters of ``face_preview_node``."""

    #: ``generated``, a converted ``.npz`` or a FLAME model directory / ``.pkl``.
    model: str = "generated"
    mesh_backend: str = "numpy"
    #: Joint receiving the head rotation: ``global`` or ``neck``.
    head_joint: str = "global"
    input_topic: str = "flame/chunks"
    marker_topic: str = "face_marker"
    frame_id: str = "a2llm_head"
    rate_hz: float = 10.0
    keepalive_s: float = 1.0
    scale: float = 1.0
    color: Tuple[float, ...] = (0.85, 0.7, 0.6, 1.0)
    with_head_rotation: bool = True

    PRESETS = {"tiny": {}, "edge": {}, "paper": {}}

    def __post_init__(self):
        if self.mesh_backend not in MESH_BACKENDS:
            raise ValueError(f"mesh_backend must be one of {MESH_BACKENDS}, "
                             f"got {self.mesh_backend!r}")
        if self.head_joint not in HEAD_JOINTS:
            raise ValueError(f"head_joint must be one of {HEAD_JOINTS}, got {self.head_joint!r}")
        if not 0.0 < self.rate_hz <= 60.0:
            raise ValueError(f"rate_hz must be in (0, 60], got {self.rate_hz}")
        if self.keepalive_s <= 0 or self.scale <= 0:
            raise ValueError("keepalive_s and scale must be > 0")
        if len(self.color) != 4 or not all(0.0 <= c <= 1.0 for c in self.color):
            raise ValueError(f"color must be 4 values (r, g, b, a) in [0, 1], "
                             f"got {list(self.color)}")


class FacePreviewNode(Node):
    """FLAME -> Marker TRIANGLE_LIST (see module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
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
        self.mesh = self._load_mesh(self.cfg)
        self.marker = mc.TriangleMarker(self.mesh.faces, self.cfg.frame_id,
                                        color=self.cfg.color, scale=self.cfg.scale)
        from a2llm_ros.msg import FlameChunk
        from visualization_msgs.msg import Marker
        self.pub = self.create_publisher(Marker, self.cfg.marker_topic, output_qos(5))
        self.sub = self.create_subscription(FlameChunk, self.cfg.input_topic, self._on_chunk,
                                            output_qos(50))
        self._lock = threading.Lock()
        self._frames: Deque[Tuple[int, np.ndarray]] = collections.deque(maxlen=MAX_BUFFERED)
        self._shown: Optional[Tuple[int, np.ndarray]] = None  # (stamp, frame) on display
        self._dirty = False
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="face_preview", daemon=True)
        self._thread.start()

    def _load_mesh(self, cfg: PreviewNodeParams) -> FlameMesh:
        try:
            return FlameMesh(cfg.model, backend=cfg.mesh_backend, head_joint=cfg.head_joint)
        except (OSError, ValueError, ImportError) as err:
            self.get_logger().error(f"cannot load FLAME model {cfg.model!r} ({err}); "
                                    "showing the generated head")
            return FlameMesh("generated")

    def _on_live(self, cfg: PreviewNodeParams, names) -> None:
        with self._lock:
            self.cfg = cfg
            self.marker = mc.TriangleMarker(self.mesh.faces, cfg.frame_id, color=cfg.color,
                                            scale=cfg.scale)
            self._dirty = True

    @property
    def n_marker_points(self) -> int:
        return self.marker.n_points

    def _on_chunk(self, msg) -> None:
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

    def _run(self) -> None:
        last_pub = 0.0
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                picked = self._pick(self.get_clock().now().nanoseconds)
                if picked is not None:
                    self._shown = picked
                stale = t0 - last_pub >= self.cfg.keepalive_s or self._dirty
                if self._shown is not None and (picked is not None or stale):
                    self._dirty = False
                    self._render(*self._shown)
                    last_pub = t0
            except Exception as err:  # noqa: BLE001 (keep previewing)
                if not self.context.ok():
                    break  # rclpy shut down (Ctrl-C): the node is about to be destroyed
                self.get_logger().warning(f"preview failed: {err!r}")
            self._stop.wait(max(0.0, 1.0 / self.cfg.rate_hz - (time.monotonic() - t0)))

    def _render(self, stamp: int, frame: np.ndarray) -> None:
        verts = self.mesh.vertices(frame, with_head=self.cfg.with_head_rotation)  # [V, 3]
        with self._lock:
            marker = self.marker.update(verts, stamp)
            self.pub.publish(marker)
        self.published += 1

    def destroy_node(self):
        if getattr(self, "_destroyed", False):
            return None
        self._destroyed = True
        self._stop.set()
        self._thread.join(timeout=5.0)
        return super().destroy_node()


def main(argv=None) -> int:
    """``ros2 run a2llm_ros face_preview_node``."""
    from a2llm_ros.ros.spin import spin_node
    return spin_node(FacePreviewNode, argv)


if __name__ == "__main__":
    sys.exit(main())
