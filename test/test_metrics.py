"""Face metrics (working definitions of the A²-LLM paper's metrics)."""
import math

import numpy as np
import pytest

from a2llm_ros.constants import FLAME_FPS
from a2llm_ros.flame.head_model import EXPRESSION_NAMES
from a2llm_ros.flame.layout import FlameLayout
from a2llm_ros.flame.mesh import FlameMesh
from a2llm_ros.tools.metrics import (FACE_METRIC_ORDER, METRIC_ORDER, PAPER_VALUES, face_metrics,
                                     markdown_table, pearson, trim_pair)

LAYOUT = FlameLayout()
FRAME_MS = 1000.0 / FLAME_FPS


@pytest.fixture(scope="module")
def mesh():
    return FlameMesh()


def _speech_like(n=150, seed=0):
    """Frames with a syllable-like jaw rhythm, lip stretch, brows and head motion."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    period = 18 + 4 * np.sin(t / 23.0)
    phase = 2 * np.pi * np.cumsum(1.0 / period)
    frames = np.zeros((n, LAYOUT.dim))
    frames[:, LAYOUT.jaw.start] = 0.06 * (1 + np.sin(phase)) + 0.01 * rng.random(n)
    frames[:, EXPRESSION_NAMES.index("lip_stretch")] = np.sin(t / 11.0)
    frames[:, EXPRESSION_NAMES.index("brow_raise")] = 0.5 * np.sin(t / 17.0)
    frames[:, LAYOUT.head.start] = 0.05 * np.sin(t / 29.0)
    return frames


def test_identical_sequences(mesh):
    ref = _speech_like()
    m = face_metrics(ref, ref, mesh)
    assert m["mod_mm"] == pytest.approx(0.0, abs=1e-9)
    for key in ("temporal_corr", "velocity_corr", "lip_width_corr", "liveliness"):
        assert m[key] == pytest.approx(1.0, abs=1e-6), key
    assert m["peak_alignment_ms"] == 0.0 and m["peak_matches"] >= 5
    assert m["ufd_mm"] == pytest.approx(m["ufd_ref_mm"]) and m["ufd_mm"] > 0
    assert set(FACE_METRIC_ORDER) <= set(m)


@pytest.mark.parametrize("shift", [1, 3])
def test_time_shift_gives_peak_offset(mesh, shift):
    ref = _speech_like()
    gen = np.concatenate([np.repeat(ref[:1], shift, 0), ref[:-shift]])  # delayed copy
    m = face_metrics(gen, ref, mesh)
    assert m["peak_alignment_ms"] == pytest.approx(shift * FRAME_MS, abs=0.25 * FRAME_MS)
    assert m["mod_mm"] > 0 and m["temporal_corr"] < 1.0


def test_ufd_frozen_and_brow_motion(mesh):
    frozen = np.zeros((50, LAYOUT.dim))
    brows = frozen.copy()
    brows[:, EXPRESSION_NAMES.index("brow_raise")] = np.sin(np.arange(50) / 4.0)
    m_frozen = face_metrics(frozen, frozen, mesh)
    m_brows = face_metrics(brows, frozen, mesh)
    assert m_frozen["ufd_mm"] == pytest.approx(0.0, abs=1e-6)
    assert m_brows["ufd_mm"] > 0.5
    assert math.isnan(m_frozen["temporal_corr"])  # constant curves: undefined


def test_liveliness_scales_with_motion(mesh):
    ref = _speech_like()
    calm = ref.copy()
    calm[:, :LAYOUT.eyelids.stop] *= 0.5
    m = face_metrics(calm, ref, mesh)
    assert 0.3 < m["liveliness"] < 0.7
    assert m["temporal_corr"] > 0.95


def test_trim_rule_and_helpers(mesh):
    ref = _speech_like(120)
    m = face_metrics(ref[:100], ref, mesh)
    assert m["frames"] == 100 and m["mod_mm"] == pytest.approx(0.0, abs=1e-9)
    a, b = trim_pair(np.arange(5), np.arange(9))
    assert len(a) == len(b) == 5
    with pytest.raises(ValueError):
        trim_pair(np.arange(2), np.arange(9))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_jaw_mouth_opening_range(mesh):
    frames = np.zeros((2, LAYOUT.dim))
    frames[1, LAYOUT.jaw.start] = 0.2
    opening = mesh.mouth_opening(mesh.vertices(frames, with_head=False))
    assert 0.005 < opening[1] - opening[0] < 0.030


def test_paper_values_and_table():
    paper = PAPER_VALUES["A2-LLM"]
    assert paper["mod_mm"] == 5.08 and paper["rtf"] == 0.703 and set(paper) == set(METRIC_ORDER)
    assert PAPER_VALUES["FaceFormer"]["ufd_mm"] == 3.14
    table = markdown_table({"mod_mm": 4.0, "temporal_corr": float("nan")})
    lines = table.strip().splitlines()
    assert lines[0].startswith("| system | MOD (mm) | Temporal corr.")
    assert "| this run | 4.00 | - |" in table and "A2-LLM (paper) | 5.08 | 0.464" in table
    multi = markdown_table({"a": {"rtf": 0.5}, "b": {"rtf": 0.25}}, paper=False)
    assert multi.count("\n") == 4 and "0.250" in multi
