"""FLAME model files: safe reading of FLAME pickles and the project's plain ``.npz``.

FLAME is distributed (under its own licence, after registration at
https://flame.is.tue.mpg.de) as a Python-2 pickle, ``generic_model.pkl`` for
FLAME 2020, whose arrays may be ``chumpy`` objects and whose ``J_regressor``
is a ``scipy.sparse`` matrix.  Nodes must not unpickle at run time, so
``a2llm flame convert`` turns such a file (plus ``flame_static_embedding.pkl``
and, when present, the eyelid blendshapes ``l_eyelid.npy``/``r_eyelid.npy``
distributed with FLAME-2023-based trackers) into one ``.npz`` that loads with
``np.load(..., allow_pickle=False)``.

The pickle is read with :class:`RestrictedUnpickler`: only numpy array
reconstruction is allowed; every ``chumpy.*`` class is replaced by
:class:`ChumpyStandIn` (which keeps the array stored in its ``x`` state) and
``scipy.sparse`` matrices by :class:`SparseStandIn`, so neither chumpy nor an
old scipy is needed and no other code from the file can run.

``.npz`` layout (``NPZ_FORMAT`` = 1; V vertices, F faces, J = 5 joints)::

    v_template     [V, 3]      float32  template vertices (metres)
    faces          [F, 3]      int64
    shapedirs      [V, 3, S]   float32  identity basis (S <= 300)
    exprdirs       [V, 3, E]   float32  expression basis (E <= 100)
    posedirs       [V, 3, 36]  float32  pose-corrective basis (FLAME layout)
    J_regressor    [J, V]      float32  dense
    weights        [V, J]      float32  skinning weights
    parents        [J]         int64    parents[0] = -1
    lmk_face_idx   [L]         int64    static landmark embedding (L = 51)
    lmk_b_coords   [L, 3]      float32
    eyelids        [2, V, 3]   float32  left, right eyelid blendshapes (optional)
    upper_face_idx [U]         int64    upper-face vertex set (optional)
    format         []          int64    NPZ_FORMAT
    source         []          str      where the arrays came from
"""
from __future__ import annotations

import codecs
import copyreg
import io
import os
import pickle
from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np

from a2llm_ros.flame.landmarks import upper_face_from_landmarks

NPZ_FORMAT = 1
N_SHAPE_SPACE = 300
N_EXPR_SPACE = 100
N_JOINTS = 5
#: File names tried, in order, when ``convert`` is given a directory.
FLAME_PKL_NAMES = ("FLAME_NEUTRAL.pkl", "generic_model.pkl", "flame2023.pkl",
                   "flame2023_no_jaw.pkl", "FLAME_FEMALE.pkl", "FLAME_MALE.pkl")
EMBEDDING_NAME = "flame_static_embedding.pkl"
EYELID_NAMES = ("l_eyelid.npy", "r_eyelid.npy")
HOW_TO_GET_FLAME = (
    "FLAME is not redistributable: register at https://flame.is.tue.mpg.de, download "
    "FLAME 2020 (generic_model.pkl) and the landmark embedding "
    "(flame_static_embedding.pkl), then run `a2llm flame convert --model DIR --out "
    "model.npz`. Without a licensed FLAME, `a2llm flame generate --out DIR` writes the "
    "project's own openly licensed FLAME-format head.")


class ChumpyStandIn:
    """Replaces any ``chumpy`` class while unpickling; keeps the array."""

    def __setstate__(self, state):
        self.state = state

    def to_array(self) -> np.ndarray:
        """The array a chumpy ``Ch`` stores in its ``x`` attribute."""
        state = getattr(self, "state", None)
        if isinstance(state, dict):
            for key in ("x", "a", "_x"):
                if key in state:
                    return _as_array(state[key])
        raise ValueError("chumpy object without an 'x' array (derived chumpy expressions "
                         "are not supported; re-save the model with numpy arrays)")


class SparseStandIn:
    """Replaces a ``scipy.sparse`` CSC/CSR/COO matrix while unpickling."""

    fmt = "csc"

    def __setstate__(self, state):
        self.state = state

    def toarray(self) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape", s.get("shape")))
        out = np.zeros(shape, dtype=np.float64)
        data = np.asarray(s["data"], dtype=np.float64)
        if self.fmt == "coo":
            rows, cols = np.asarray(s["row"]), np.asarray(s["col"])
            np.add.at(out, (rows, cols), data)
            return out
        indices, indptr = np.asarray(s["indices"]), np.asarray(s["indptr"])
        for major in range(len(indptr) - 1):
            lo, hi = indptr[major], indptr[major + 1]
            if self.fmt == "csc":
                out[indices[lo:hi], major] += data[lo:hi]
            else:
                out[major, indices[lo:hi]] += data[lo:hi]
        return out


def _sparse_class(name: str):
    fmt = name.split("_")[0]
    if fmt not in ("csc", "csr", "coo"):
        raise pickle.UnpicklingError(f"unsupported sparse class {name!r} in FLAME file")
    return type(f"SparseStandIn_{fmt}", (SparseStandIn,), {"fmt": fmt})


_BUILTINS_ALLOWED = {"object", "set", "frozenset", "slice", "complex"}
_NUMPY_ALLOWED = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays, plain containers and stand-ins."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "chumpy":
            return ChumpyStandIn
        if module.startswith("scipy.sparse"):
            return _sparse_class(name)
        if module.startswith("numpy") and name in _NUMPY_ALLOWED:
            return super().find_class(_modern_numpy(module), name)
        if module.startswith("numpy.dtypes") or (module, name) == ("numpy", "dtype"):
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # bytes in protocol-2 pickles
            return codecs.encode
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return copyreg._reconstructor
        if module in ("__builtin__", "builtins") and name in _BUILTINS_ALLOWED:
            return super().find_class("builtins", name)
        raise pickle.UnpicklingError(f"FLAME file refers to {module}.{name}, which is not "
                                     "allowed (only numpy/chumpy/scipy.sparse arrays)")


def _modern_numpy(module: str) -> str:
    if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
        return module.replace("numpy.core", "numpy._core", 1)
    return module


def safe_load_pickle(path: str):
    """Unpickle a FLAME-era file (Python-2 latin1 pickles allowed) restrictedly."""
    with open(path, "rb") as handle:
        data = handle.read()
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _as_array(value, dtype=None) -> np.ndarray:
    """numpy view of a numpy, chumpy-stand-in or sparse-stand-in value."""
    if isinstance(value, ChumpyStandIn):
        value = value.to_array()
    elif isinstance(value, SparseStandIn):
        value = value.toarray()
    elif hasattr(value, "toarray") and not isinstance(value, np.ndarray):
        value = value.toarray()  # a real scipy.sparse matrix
    arr = np.asarray(value)
    return arr.astype(dtype) if dtype is not None else arr


@dataclass
class FlameModelArrays:
    """A FLAME-format model as plain numpy arrays (see the module docstring)."""

    v_template: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    shapedirs: np.ndarray  # [V, 3, S]
    exprdirs: np.ndarray  # [V, 3, E]
    posedirs: np.ndarray  # [V, 3, 36]
    J_regressor: np.ndarray  # [J, V]
    weights: np.ndarray  # [V, J]
    parents: np.ndarray  # [J]
    lmk_face_idx: np.ndarray  # [L]
    lmk_b_coords: np.ndarray  # [L, 3]
    eyelids: Optional[np.ndarray] = None  # [2, V, 3]
    upper_face_idx: Optional[np.ndarray] = None  # [U]
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_verts(self) -> int:
        return int(self.v_template.shape[0])

    def save_npz(self, path: str) -> str:
        """Write the plain ``.npz`` (compressed); returns the path."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("source", "extra") and getattr(self, f.name) is not None}
        arrays["format"] = np.int64(NPZ_FORMAT)
        arrays["source"] = np.array(self.source)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load_npz(cls, path: str) -> "FlameModelArrays":
        """Load a converted model without pickle."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"FLAME model file {path!r} not found. {HOW_TO_GET_FLAME}")
        with np.load(path, allow_pickle=False) as data:
            fmt = int(data["format"]) if "format" in data else -1
            if fmt != NPZ_FORMAT:
                raise ValueError(f"{path}: npz format {fmt}, expected {NPZ_FORMAT}; "
                                 "re-run `a2llm flame convert`")
            kw = {f.name: data[f.name] for f in fields(cls)
                  if f.name not in ("source", "extra") and f.name in data}
            kw["source"] = str(data["source"]) if "source" in data else path
        return cls(**kw)

    def to_flame_dict(self) -> dict:
        """smplx-loadable pickle dict (shape basis padded to 300, expression to 100)."""
        n_v = self.n_verts
        shape = np.zeros((n_v, 3, N_SHAPE_SPACE), np.float32)
        shape[..., :self.shapedirs.shape[-1]] = self.shapedirs
        expr = np.zeros((n_v, 3, N_EXPR_SPACE), np.float32)
        expr[..., :self.exprdirs.shape[-1]] = self.exprdirs
        kintree = np.stack([self.parents, np.arange(len(self.parents))]).astype(np.int64)
        return {"v_template": self.v_template.astype(np.float32),
                "f": self.faces.astype(np.int64),
                "shapedirs": np.concatenate([shape, expr], axis=-1),
                "posedirs": self.posedirs.astype(np.float32),
                "J_regressor": self.J_regressor.astype(np.float32),
                "weights": self.weights.astype(np.float32),
                "kintree_table": kintree}

    def embedding_dict(self) -> dict:
        """Content of ``flame_static_embedding.pkl``."""
        return {"lmk_face_idx": self.lmk_face_idx.astype(np.int64),
                "lmk_b_coords": self.lmk_b_coords.astype(np.float32)}


def from_flame_dict(model: dict, embedding: Optional[dict] = None,
                    eyelids: Optional[np.ndarray] = None, num_betas: int = N_SHAPE_SPACE,
                    num_expr: int = N_EXPR_SPACE, source: str = "") -> FlameModelArrays:
    """Build arrays from an unpickled FLAME dict the way smplx 0.1.28 reads it.

    smplx uses ``shapedirs[..., :300]`` as identity and ``shapedirs[..., 300:]``
    as expression when the basis has >= 400 columns, else the 10+10 split of the
    small FLAME variants; ``posedirs`` is [V, 3, 36]; ``J_regressor`` may be sparse;
    ``kintree_table[0]`` holds the parents (root's entry is replaced by -1).
    """
    shapedirs = _as_array(model["shapedirs"], np.float32)  # [V, 3, K]
    if shapedirs.ndim == 2:
        shapedirs = shapedirs[:, :, None]
    split = N_SHAPE_SPACE if shapedirs.shape[-1] >= N_SHAPE_SPACE + N_EXPR_SPACE else 10
    parents = _as_array(model["kintree_table"]).astype(np.int64)[0].copy()
    parents[0] = -1
    emb = embedding or {}
    return FlameModelArrays(
        v_template=_as_array(model["v_template"], np.float32),
        faces=_as_array(model["f"]).astype(np.int64),
        shapedirs=np.ascontiguousarray(shapedirs[..., :min(split, num_betas)]),
        exprdirs=np.ascontiguousarray(shapedirs[..., split:split + num_expr]),
        posedirs=_as_array(model["posedirs"], np.float32),
        J_regressor=_as_array(model["J_regressor"], np.float32),
        weights=_as_array(model["weights"], np.float32),
        parents=parents,
        lmk_face_idx=_as_array(emb.get("lmk_face_idx", np.zeros(0))).astype(np.int64),
        lmk_b_coords=_as_array(emb.get("lmk_b_coords", np.zeros((0, 3))), np.float32),
        eyelids=None if eyelids is None else np.asarray(eyelids, np.float32),
        source=source)


def find_model_files(model: str) -> tuple:
    """(pkl, embedding or None, [l_eyelid, r_eyelid] or None) for a file or directory."""
    if os.path.isdir(model):
        folder = model
        candidates = [os.path.join(model, n) for n in FLAME_PKL_NAMES]
        pkl = next((c for c in candidates if os.path.isfile(c)), None)
        if pkl is None:
            raise FileNotFoundError(f"no FLAME pickle ({', '.join(FLAME_PKL_NAMES)}) in "
                                    f"{model!r}. {HOW_TO_GET_FLAME}")
    else:
        if not os.path.isfile(model):
            raise FileNotFoundError(f"FLAME model {model!r} not found. {HOW_TO_GET_FLAME}")
        folder, pkl = os.path.dirname(os.path.abspath(model)), model
    emb = os.path.join(folder, EMBEDDING_NAME)
    lids = [os.path.join(folder, n) for n in EYELID_NAMES]
    return (pkl, emb if os.path.isfile(emb) else None,
            lids if all(os.path.isfile(p) for p in lids) else None)


def load_eyelids(paths) -> np.ndarray:
    """Stack ``l_eyelid.npy``/``r_eyelid.npy`` ([V, 3] each, or [1, V, 3]) to [2, V, 3]."""
    arrays = [np.load(p, allow_pickle=False).reshape(-1, 3) for p in paths]
    return np.stack(arrays).astype(np.float32)


def convert_flame(model: str, out: str, embedding: Optional[str] = None,
                  num_betas: int = N_SHAPE_SPACE, num_expr: int = N_EXPR_SPACE,
                  require_embedding: bool = True) -> FlameModelArrays:
    """Convert a FLAME pickle (file or directory) to the plain ``.npz`` at ``out``."""
    pkl, emb_path, lid_paths = find_model_files(model)
    emb_path = embedding or emb_path
    if emb_path is None and require_embedding:
        raise FileNotFoundError(f"{EMBEDDING_NAME} not found next to {pkl!r} (needed for "
                                f"the lip/brow landmarks). {HOW_TO_GET_FLAME}")
    emb = safe_load_pickle(emb_path) if emb_path else None
    lids = load_eyelids(lid_paths) if lid_paths else None
    arrays = from_flame_dict(safe_load_pickle(pkl), emb, lids, num_betas, num_expr,
                             source=os.path.basename(pkl))
    if lids is not None and lids.shape[1] != arrays.n_verts:
        raise ValueError(f"eyelid blendshapes have {lids.shape[1]} vertices, model has "
                         f"{arrays.n_verts}")
    if arrays.lmk_face_idx.size:
        arrays.upper_face_idx = upper_face_from_landmarks(
            arrays.v_template, arrays.faces, arrays.lmk_face_idx, arrays.lmk_b_coords)
    arrays.save_npz(out)
    return arrays


def write_pickle(path: str, obj) -> None:
    """Write a plain-numpy pickle readable by smplx (protocol 2, like FLAME's)."""
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)
