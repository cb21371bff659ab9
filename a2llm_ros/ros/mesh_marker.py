"""A ``visualization_msgs/Marker`` TRIANGLE_LIST published as patched serialized bytes.

:class:`MeshMarker` serializes one marker of the mesh topology (with sentinel
points and stamp) once; per frame it gathers the face corners straight into
the points block of that buffer and rewrites the stamp
(:class:`a2llm_ros.flame.preview_mesh.SerializedMeshTemplate`), and the
publisher sends the bytes (``Publisher.publish(bytes)``) -- no ``Point``
objects, no Python loop, no Python -> C conversion.  Subscribers receive an
ordinary Marker, identical to the one :meth:`MeshMarker.message` builds.

Colours: one marker colour (``color``), or with ``vertex_colors`` [V, 3] (e.g.
:meth:`a2llm_ros.flame.mesh.FlameMesh.vertex_colors`, the palette the offline
renderer uses) one ``ColorRGBA`` per point, alpha from ``color``.  They are
static, written once into the template, so a frame costs the same.

Where the serialized layout cannot be located (an RMW serializing in another
byte order), :attr:`MeshMarker.serialized` is False and :meth:`MeshMarker.update`
returns the Marker message instead (slow path, same content).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from a2llm_ros.flame.preview_mesh import (SENTINEL_NANOSEC, SENTINEL_SEC,
                                          SerializedMeshTemplate, sentinel_points,
                                          triangle_soup)

__all__ = ["MeshMarker", "DEFAULT_COLOR", "MARKER_NS"]

DEFAULT_COLOR = (0.85, 0.7, 0.6, 1.0)
MARKER_NS = "a2llm_face"


class MeshMarker:
    """Marker TRIANGLE_LIST of one topology ``faces [F, 3]`` (3 points per face)."""

    def __init__(self, faces: np.ndarray, frame_id: str, color: Sequence[float] = DEFAULT_COLOR,
                 scale: float = 1.0, ns: str = MARKER_NS, marker_id: int = 0,
                 vertex_colors: Optional[np.ndarray] = None):
        self.faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        self.faces_flat = self.faces.reshape(-1)
        self._corner_rgb = (None if vertex_colors is None else
                            np.asarray(vertex_colors, np.float64)[self.faces_flat, :3])  # [3F, 3]
        self.scale = float(scale)
        self._frame_id, self._color = frame_id, tuple(float(c) for c in color)
        self._ns, self._id = ns, int(marker_id)
        self.template: Optional[SerializedMeshTemplate] = None
        try:
            self.template = self._make_template()
        except ValueError:
            self.template = None
        self._points = self.template.points_view() if self.template is not None else None

    @property
    def n_points(self) -> int:
        return int(self.faces_flat.size)

    @property
    def serialized(self) -> bool:
        """True when :meth:`update` returns serialized bytes (the fast path)."""
        return self.template is not None

    def _empty(self):
        """The marker without points and stamp."""
        from std_msgs.msg import ColorRGBA
        from visualization_msgs.msg import Marker
        marker = Marker(ns=self._ns, id=self._id, type=Marker.TRIANGLE_LIST, action=Marker.ADD)
        marker.header.frame_id = self._frame_id
        marker.pose.orientation.w = 1.0
        marker.scale.x = marker.scale.y = marker.scale.z = 1.0
        r, g, b, a = self._color
        marker.color = ColorRGBA(r=r, g=g, b=b, a=a)
        if self._corner_rgb is not None:
            marker.colors = [ColorRGBA(r=cr, g=cg, b=cb, a=a)
                             for cr, cg, cb in self._corner_rgb.tolist()]
        return marker

    def _make_template(self) -> SerializedMeshTemplate:
        from geometry_msgs.msg import Point
        from rclpy.serialization import serialize_message
        marker = self._empty()
        marker.header.stamp.sec, marker.header.stamp.nanosec = SENTINEL_SEC, SENTINEL_NANOSEC
        marker.points = [Point(x=x, y=y, z=z)
                         for x, y, z in sentinel_points(self.n_points).tolist()]
        return SerializedMeshTemplate.locate(serialize_message(marker), self.n_points)

    def message(self, verts: np.ndarray, stamp_ns: int):
        """The Marker message of vertices ``[V, 3]`` at ``stamp_ns`` (slow path, Points)."""
        from geometry_msgs.msg import Point

        from a2llm_ros.ros.msgconv import time_msg
        marker = self._empty()
        marker.header.stamp = time_msg(stamp_ns)
        corners = triangle_soup(verts, self.faces_flat, self.scale)
        marker.points = [Point(x=x, y=y, z=z) for x, y, z in corners.tolist()]
        return marker

    def update(self, verts: np.ndarray, stamp_ns: int) -> Union[bytes, object]:
        """What to publish for vertices ``[V, 3]``: serialized bytes (or, slow path, a Marker)."""
        if self.template is None:
            return self.message(verts, stamp_ns)
        triangle_soup(verts, self.faces_flat, self.scale, out=self._points)
        self.template.set_stamp(stamp_ns)
        return self.template.to_bytes()
