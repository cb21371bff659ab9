"""ROS-free support of face_preview_node: triangle soups, decimation, byte patching, BLAS."""
import struct

import numpy as np
import pytest

from a2llm_ros.flame.mesh import FlameMesh
from a2llm_ros.flame.preview_mesh import (SENTINEL_NANOSEC, SENTINEL_SEC, STAMP_FORMAT,
                                          SerializedMeshTemplate, cluster_representatives,
                                          decimate_faces, get_blas_threads, sentinel_points,
                                          set_blas_threads, triangle_soup)

NS_PER_S = 1_000_000_000


@pytest.fixture(scope="module")
def head():
    return FlameMesh("generated")


def test_triangle_soup_gathers_scaled_corners_into_a_buffer(head):
    verts = head.vertices(np.zeros(head.layout.dim, np.float32))
    expected = verts.astype(np.float64)[head.faces].reshape(-1, 3) * 2.0
    np.testing.assert_array_equal(triangle_soup(verts, head.faces.reshape(-1), 2.0), expected)
    out = np.zeros_like(expected)
    assert triangle_soup(verts, head.faces.reshape(-1), 2.0, out=out) is out
    np.testing.assert_array_equal(out, expected)


def test_decimation_bounds_faces_over_the_same_vertices(head):
    groups = np.argmax(head.arrays.weights, axis=1)
    np.testing.assert_array_equal(decimate_faces(head.v_base, head.faces, 0), head.faces)
    np.testing.assert_array_equal(decimate_faces(head.v_base, head.faces, 10 ** 6), head.faces)
    for max_faces in (4000, 1000):
        faces = decimate_faces(head.v_base, head.faces, max_faces, groups)
        assert max_faces // 3 < len(faces) <= max_faces
        assert faces.min() >= 0 and faces.max() < head.n_verts
        assert (faces[:, 0] != faces[:, 1]).all() and (faces[:, 1] != faces[:, 2]).all()
        assert (faces[:, 0] != faces[:, 2]).all()
        assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces)
    # Vertices only stand in for vertices of their own group (jaw vs head).
    rep = cluster_representatives(head.v_base, 0.01, groups)
    np.testing.assert_array_equal(groups[rep], groups)
    assert len(np.unique(rep)) < head.n_verts


def _fake_serialized(n_points: int, head_len: int = 12, tail: bytes = b"tail") -> bytes:
    """A stand-in for a serialized message: header, stamp, padding, points block, tail."""
    return (b"\x00\x01\x00\x00" + struct.pack(STAMP_FORMAT, SENTINEL_SEC, SENTINEL_NANOSEC)
            + b"x" * head_len + sentinel_points(n_points).tobytes() + tail)


def test_serialized_template_patches_points_and_stamp_in_place():
    raw = _fake_serialized(6, head_len=13)  # points block not 8-byte aligned in the buffer
    tpl = SerializedMeshTemplate.locate(raw, 6)
    assert (tpl.stamp_offset, tpl.points_offset) == (4, 4 + 8 + 13)
    points = np.arange(18, dtype=np.float64).reshape(6, 3) / 7.0
    tpl.points_view()[:] = points
    tpl.set_stamp(12 * NS_PER_S + 345)
    out = tpl.to_bytes()
    assert isinstance(out, bytes) and len(out) == len(raw)
    assert struct.unpack_from(STAMP_FORMAT, out, 4) == (12, 345)
    np.testing.assert_array_equal(np.frombuffer(out, np.float64, 18, tpl.points_offset),
                                  points.reshape(-1))
    assert out.endswith(b"tail") and out[:4] == raw[:4]
    tpl.set_stamp(-5)  # clamped at 0
    assert struct.unpack_from(STAMP_FORMAT, tpl.to_bytes(), 4) == (0, 0)


def test_serialized_template_refuses_a_layout_it_cannot_find():
    raw = _fake_serialized(4)
    with pytest.raises(ValueError, match="no copies of its points"):
        SerializedMeshTemplate.locate(raw.replace(sentinel_points(4)[1].tobytes(), b"\0" * 24),
                                      4)
    stamp = struct.pack(STAMP_FORMAT, SENTINEL_SEC, SENTINEL_NANOSEC)
    with pytest.raises(ValueError, match="several copies of its stamp"):
        SerializedMeshTemplate.locate(raw + stamp, 4)


def test_blas_threads_can_be_set_and_restored():
    before = get_blas_threads()
    if before is None:
        pytest.skip("no OpenBLAS loaded (numpy built against another BLAS)")
    try:
        assert set_blas_threads(1) == before
        assert get_blas_threads() == 1
    finally:
        set_blas_threads(before)
    assert get_blas_threads() == before
