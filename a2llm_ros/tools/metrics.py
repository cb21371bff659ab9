"""Face-motion metrics reported by A²-LLM (arXiv 2602.04913), working definitions.

The paper's body (its exact metric definitions) could not be read while this
module was written; only the metric names and reported values were available.
The definitions below are the project's working definitions, kept together in
this one module so they can be corrected in one place.  All curves are taken
at ``FLAME_FPS`` (25 fps) from meshes made by :class:`FlameMesh`.

Sequence lengths: the generated and reference sequences are aligned at their
first frame and the longer one is trimmed to the shorter length (its tail is
dropped).  Mouth and lip curves use head-pose-free meshes (head rotation zeroed)
so that "vertical" is the model's y axis.

* ``mod_mm`` - Mouth Opening Distance: mean over frames of |gen - ref| of the
  vertical gap between the inner upper and inner lower lip midpoints (mm).
* ``ufd_mm`` - Upper-Face Dynamics, reference-free, of the generated sequence:
  mean over frames of the mean (over upper-face vertices: brows, forehead,
  eyelids) Euclidean distance of each vertex from its own sequence-mean
  position (mm).  Head rotation is included by default (``ufd_with_head``):
  the paper's 11.13 mm (A²-LLM) vs 3.14 mm (FaceFormer, no head motion) is far
  larger than brow motion alone could give.  ``ufd_ref_mm`` is the same number
  for the reference.
* ``temporal_corr`` - Pearson correlation of the two mouth-opening curves.
* ``velocity_corr`` - Pearson correlation of their first differences.
* ``lip_width_corr`` - Pearson correlation of the mouth-corner distance curves.
* ``liveliness`` - motion std of generated / motion std of reference, where
  motion std = sqrt(mean over vertices and axes of the temporal variance) of
  the head-pose-free mesh (1.0 = as lively as the reference).
* ``peak_alignment_ms`` - local maxima of both mouth-opening curves are found
  with ``scipy.signal.find_peaks`` at a prominence of max(1 mm, 10 % of that
  curve's range); each reference peak is matched to the nearest generated peak
  within +-400 ms (unmatched reference peaks are skipped); the value is the
  mean absolute offset in ms (NaN when nothing matches).  ``peak_matches``
  gives the number of matched peaks.

Correlations of a constant curve are NaN.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from a2llm_ros.constants import FLAME_FPS

MM_PER_M = 1000.0
MS_PER_S = 1000.0
PEAK_MIN_PROMINENCE_M = 0.001
PEAK_REL_PROMINENCE = 0.10
PEAK_WINDOW_S = 0.4
MIN_FRAMES = 3

#: Paper column order: face metrics, then latency metrics.
FACE_METRIC_ORDER = ("mod_mm", "ufd_mm", "temporal_corr", "velocity_corr",
                     "lip_width_corr", "liveliness", "peak_alignment_ms")
LATENCY_METRIC_ORDER = ("ttft_ms", "ttfa_ms", "rtf")
METRIC_ORDER = FACE_METRIC_ORDER + LATENCY_METRIC_ORDER
#: key -> (column label, number format)
METRIC_LABELS = {
    "mod_mm": ("MOD (mm)", "{:.2f}"), "ufd_mm": ("UFD (mm)", "{:.2f}"),
    "temporal_corr": ("Temporal corr.", "{:.3f}"),
    "velocity_corr": ("Velocity corr.", "{:.3f}"),
    "lip_width_corr": ("Lip-width corr.", "{:.3f}"),
    "liveliness": ("Liveliness", "{:.3f}"),
    "peak_alignment_ms": ("Peak align. (ms)", "{:.1f}"),
    "ttft_ms": ("TTFT (ms)", "{:.0f}"), "ttfa_ms": ("TTFA (ms)", "{:.0f}"),
    "rtf": ("RTF", "{:.3f}"),
}
PAPER_VALUES = {
    "A2-LLM": {"mod_mm": 5.08, "ufd_mm": 11.13, "temporal_corr": 0.464,
               "velocity_corr": 0.111, "lip_width_corr": 0.604, "liveliness": 1.087,
               "peak_alignment_ms": 114.3, "ttft_ms": 51.0, "ttfa_ms": 536.0, "rtf": 0.703},
    "FaceFormer": {"ufd_mm": 3.14},
}
PAPER_SYSTEM = "A2-LLM"


def trim_pair(gen: np.ndarray, ref: np.ndarray) -> tuple:
    """Align at frame 0 and cut both to the shorter length."""
    n = min(len(gen), len(ref))
    if n < MIN_FRAMES:
        raise ValueError(f"need at least {MIN_FRAMES} frames in both sequences, got "
                         f"{len(gen)} and {len(ref)}")
    return gen[:n], ref[:n]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-D curves; NaN if either is constant."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-20 else float("nan")


def upper_face_dynamics(upper: np.ndarray) -> float:
    """UFD in mm of upper-face vertices [T, U, 3] (metres)."""
    upper = np.asarray(upper, np.float64)
    dev = np.linalg.norm(upper - upper.mean(axis=0, keepdims=True), axis=-1)  # [T, U]
    return float(dev.mean() * MM_PER_M)


def motion_std(verts: np.ndarray) -> float:
    """sqrt(mean temporal variance) of vertices [T, V, 3] (metres)."""
    return float(np.sqrt(np.var(verts.astype(np.float64), axis=0).mean()))


def find_mouth_peaks(curve: np.ndarray) -> np.ndarray:
    """Frame indices of prominent local maxima of a mouth-opening curve [T] (metres)."""
    from scipy.signal import find_peaks
    curve = np.asarray(curve, np.float64)
    span = float(curve.max() - curve.min())
    prominence = max(PEAK_MIN_PROMINENCE_M, PEAK_REL_PROMINENCE * span)
    peaks, _ = find_peaks(curve, prominence=prominence)
    return peaks


def peak_alignment(gen_curve: np.ndarray, ref_curve: np.ndarray,
                   fps: float = FLAME_FPS) -> tuple:
    """(mean |offset| in ms, number of matched peaks) between two curves [T]."""
    gen_peaks, ref_peaks = find_mouth_peaks(gen_curve), find_mouth_peaks(ref_curve)
    window = PEAK_WINDOW_S * fps
    offsets = []
    for p in ref_peaks:
        if len(gen_peaks) == 0:
            break
        nearest = gen_peaks[np.argmin(np.abs(gen_peaks - p))]
        if abs(nearest - p) <= window:
            offsets.append(abs(nearest - p) / fps * MS_PER_S)
    mean = float(np.mean(offsets)) if offsets else float("nan")
    return mean, len(offsets)


def face_metrics(gen_frames: np.ndarray, ref_frames: np.ndarray, mesh,
                 fps: float = FLAME_FPS, ufd_with_head: bool = True) -> dict:
    """All face metrics of generated frames [T, D] against reference frames [T', D].

    ``mesh`` is a :class:`a2llm_ros.flame.mesh.FlameMesh`.  Returns a dict with
    the keys of ``FACE_METRIC_ORDER`` plus ``ufd_ref_mm``, ``peak_matches``,
    ``frames`` (the compared length).
    """
    gen, ref = trim_pair(np.asarray(gen_frames), np.asarray(ref_frames))
    v_gen, v_ref = mesh.vertices(gen, with_head=False), mesh.vertices(ref, with_head=False)
    mo_gen, mo_ref = mesh.mouth_opening(v_gen), mesh.mouth_opening(v_ref)
    if ufd_with_head:
        u_gen, u_ref = mesh.vertices(gen), mesh.vertices(ref)
    else:
        u_gen, u_ref = v_gen, v_ref
    ref_std = motion_std(v_ref)
    peak_ms, matches = peak_alignment(mo_gen, mo_ref, fps)
    return {
        "mod_mm": float(np.abs(mo_gen - mo_ref).mean() * MM_PER_M),
        "ufd_mm": upper_face_dynamics(mesh.upper_face(u_gen)),
        "temporal_corr": pearson(mo_gen, mo_ref),
        "velocity_corr": pearson(np.diff(mo_gen), np.diff(mo_ref)),
        "lip_width_corr": pearson(mesh.lip_width(v_gen), mesh.lip_width(v_ref)),
        "liveliness": motion_std(v_gen) / ref_std if ref_std > 0 else float("nan"),
        "peak_alignment_ms": peak_ms,
        "ufd_ref_mm": upper_face_dynamics(mesh.upper_face(u_ref)),
        "peak_matches": matches,
        "frames": len(gen),
    }


def _format(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    fmt = METRIC_LABELS.get(key, (key, "{:.3f}"))[1]
    return fmt.format(value)


def markdown_table(metrics: dict, keys: Optional[tuple] = None,
                   paper: bool = True) -> str:
    """Markdown table of one metrics dict, or of ``{row name: metrics dict}``.

    Columns follow ``METRIC_ORDER`` (only keys present in some row unless ``keys``
    is given); ``paper`` appends the paper's A²-LLM row.
    """
    rows = metrics if metrics and all(isinstance(v, dict) for v in metrics.values()) \
        else {"this run": metrics}
    if keys is None:
        keys = tuple(k for k in METRIC_ORDER if any(k in r for r in rows.values()))
    if paper:
        rows = {**rows, f"{PAPER_SYSTEM} (paper)": PAPER_VALUES[PAPER_SYSTEM]}
    header = ["system"] + [METRIC_LABELS.get(k, (k,))[0] for k in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name] + [_format(k, row.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
