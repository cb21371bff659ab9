"""Generated FLAME-format head, mesh computation (numpy vs smplx), conversion, render."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse

from a2llm_ros.tools import cli
from a2llm_ros.flame.convert import (FlameModelArrays, RestrictedUnpickler, convert_flame,
                                     safe_load_pickle, write_pickle)
from a2llm_ros.flame.head_model import EXPRESSION_NAMES, build_head
from a2llm_ros.flame.layout import FlameLayout
from a2llm_ros.flame.mesh import FlameMesh

LAYOUT = FlameLayout()


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("genhead")
    assert cli.main(["flame", "generate", "--out", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def mesh():
    return FlameMesh()


def _frames(n=6, seed=0, layout=LAYOUT):
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, layout.dim))
    frames[:, layout.expr] = rng.normal(size=(n, layout.n_expr))
    frames[:, layout.jaw] = rng.normal(scale=0.1, size=(n, 3))
    frames[:, layout.head] = rng.normal(scale=0.2, size=(n, 3))
    frames[:, layout.eyelids] = rng.uniform(0, 1, size=(n, 2))
    return frames


def test_generated_head_layout_and_determinism():
    head = build_head()
    a = head.arrays
    n_v = a.n_verts
    assert 2000 < n_v < 10000
    assert a.shapedirs.shape == (n_v, 3, 300) and a.exprdirs.shape == (n_v, 3, 100)
    assert a.posedirs.shape == (n_v, 3, 36) and a.J_regressor.shape == (5, n_v)
    np.testing.assert_allclose(a.weights.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(a.J_regressor.sum(1), 1.0, atol=1e-5)
    assert a.faces.max() < n_v and a.lmk_face_idx.shape == (51,)
    assert len(set(int(head.landmarks[k]) for k in
                   ("upper_lip_inner", "lower_lip_inner", "mouth_left", "mouth_right"))) == 4
    again = build_head.__wrapped__()
    np.testing.assert_array_equal(again.arrays.exprdirs, a.exprdirs)
    np.testing.assert_array_equal(again.arrays.v_template, a.v_template)
    assert 0.12 < np.ptp(a.v_template[:, 0]) + 0.03 < 0.2  # head width, metres


def test_jaw_opens_mouth_realistically(mesh):
    frames = np.zeros((3, LAYOUT.dim))
    frames[1, LAYOUT.jaw.start] = 0.2
    frames[2, LAYOUT.jaw.start] = 0.3
    opening = mesh.mouth_opening(mesh.vertices(frames, with_head=False)) * 1000  # mm
    assert abs(opening[0]) < 1e-6
    assert 5.0 < opening[1] < 30.0 and opening[2] > opening[1]


def test_expression_bases_are_meaningful(mesh):
    names = EXPRESSION_NAMES
    frames = np.zeros((4, LAYOUT.dim))
    frames[1, names.index("mouth_open")] = 1.0
    frames[2, names.index("lip_stretch")] = 1.0
    frames[3, names.index("brow_raise")] = 1.0
    v = mesh.vertices(frames, with_head=False)
    opening, width = mesh.mouth_opening(v), mesh.lip_width(v)
    assert opening[1] - opening[0] > 0.004
    assert width[2] - width[0] > 0.005
    lift = (mesh.upper_face(v)[3] - mesh.upper_face(v)[0])[:, 1]
    assert lift.max() > 0.004 and lift.min() > -1e-6


def test_eyelids_close_upper_lids(mesh):
    frames = np.zeros((2, LAYOUT.dim))
    frames[1, LAYOUT.eyelids] = 1.0
    v = mesh.vertices(frames)
    assert (v[0, :, 1] - v[1, :, 1]).max() > 0.008  # lids move down ~9 mm


@pytest.mark.parametrize("n_expr", [50, 100])
def test_smplx_and_numpy_paths_agree(head_dir, n_expr):
    layout = FlameLayout(n_expr=n_expr)
    frames = _frames(5, seed=n_expr, layout=layout)
    via_smplx = FlameMesh(head_dir, layout=layout, backend="smplx").vertices(frames)
    via_npz = FlameMesh(os.path.join(head_dir, "head_model.npz"), layout=layout)
    via_dir = FlameMesh(head_dir, layout=layout)
    np.testing.assert_allclose(via_npz.vertices(frames), via_smplx, atol=1e-5)
    np.testing.assert_allclose(via_dir.vertices(frames), via_smplx, atol=1e-5)
    neck = FlameMesh(head_dir, layout=layout, backend="smplx", head_joint="neck")
    np.testing.assert_allclose(FlameMesh(layout=layout, head_joint="neck").vertices(frames),
                               neck.vertices(frames), atol=1e-5)


def test_missing_model_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="flame convert"):
        FlameMesh(str(tmp_path / "nope.npz"))
    with pytest.raises(FileNotFoundError, match="FLAME_NEUTRAL.pkl"):
        FlameMesh(str(tmp_path))


def _chumpy_pickle(path, model, monkeypatch):
    """Write ``model`` with its arrays wrapped in a class named chumpy.ch.Ch."""
    ch_mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x, self._dirty_vars, self._itr = x, set(), None

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch_mod.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch_mod)
    wrapped = {k: (Ch(v) if k in ("v_template", "shapedirs", "posedirs") else v)
               for k, v in model.items()}
    wrapped["J_regressor"] = scipy.sparse.csc_matrix(model["J_regressor"].astype(np.float64))
    write_pickle(path, wrapped)


def test_convert_round_trip_with_chumpy_and_sparse(tmp_path, monkeypatch, mesh):
    arrays = build_head().arrays
    folder = tmp_path / "flame2020"
    folder.mkdir()
    _chumpy_pickle(str(folder / "generic_model.pkl"), arrays.to_flame_dict(), monkeypatch)
    write_pickle(str(folder / "flame_static_embedding.pkl"), arrays.embedding_dict())
    out = str(tmp_path / "model.npz")
    assert cli.main(["flame", "convert", "--model", str(folder), "--out", out]) == 0
    loaded = FlameModelArrays.load_npz(out)
    assert loaded.eyelids is None and loaded.exprdirs.shape[-1] == 100
    np.testing.assert_array_equal(loaded.upper_face_idx, arrays.upper_face_idx)
    frames = _frames(4)
    frames[:, LAYOUT.eyelids] = 0.0  # the converted model has no eyelid blendshapes
    np.testing.assert_allclose(FlameMesh(out).vertices(frames), mesh.vertices(frames),
                               atol=1e-6)


class _CallsGetcwd:
    """Unpickling this would call os.getcwd (harmless stand-in for arbitrary code)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_convert_requires_embedding_and_rejects_code(tmp_path):
    write_pickle(str(tmp_path / "generic_model.pkl"), build_head().arrays.to_flame_dict())
    with pytest.raises(FileNotFoundError, match="flame_static_embedding"):
        convert_flame(str(tmp_path), str(tmp_path / "x.npz"))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"v_template": _CallsGetcwd()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        safe_load_pickle(str(evil))
    assert issubclass(RestrictedUnpickler, pickle.Unpickler)


def test_render_images_and_vertex_colors(mesh):
    from a2llm_ros.flame.appearance import LIP_RGB, SKIN_RGB
    from a2llm_ros.tools.render.raster import render_images
    frames = np.zeros((2, LAYOUT.dim))
    frames[1, LAYOUT.jaw.start] = 0.3
    images = render_images(mesh, frames, size=96, supersample=1)
    assert images.shape == (2, 96, 96, 3) and images.dtype == np.uint8
    assert np.abs(np.diff(images[0].astype(int), axis=0)).mean() > 0.5  # not a flat panel
    assert not np.array_equal(images[0], images[1])
    colors = mesh.vertex_colors()  # [V, 3], the RViz preview's palette
    assert colors.shape == (mesh.n_verts, 3)
    upper_lip = build_head().landmarks["upper_lip_inner"]
    np.testing.assert_allclose(colors[upper_lip], LIP_RGB, atol=0.05)  # lips tinted
    assert np.isclose(colors, SKIN_RGB).all(1).mean() > 0.8  # mostly skin
    tinted = mesh.vertex_colors(skin=(0.5, 0.5, 0.5))
    assert np.isclose(tinted, 0.5).all(1).mean() > 0.8
