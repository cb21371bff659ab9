"""Tests for FLAME -> channel retargeting and the YAML presets."""
import os

import numpy as np
import pytest
import yaml

from a2llm_ros.flame.layout import DEFAULT_LAYOUT, FRAME_DIM
from a2llm_ros.retarget import (RetargetConfig, RetargetConfigError, Retargeter,
                                flame_dim_names)

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "config")
ARKIT = os.path.join(CONFIG_DIR, "retarget_arkit52.yaml")
SERVO = os.path.join(CONFIG_DIR, "retarget_servo_head.yaml")
JAW_X = DEFAULT_LAYOUT.jaw.start
HEAD_X = DEFAULT_LAYOUT.head.start
EYELID_L = DEFAULT_LAYOUT.eyelids.start

ARKIT_NAMES = (
    "eyeBlinkLeft eyeLookDownLeft eyeLookInLeft eyeLookOutLeft eyeLookUpLeft eyeSquintLeft "
    "eyeWideLeft eyeBlinkRight eyeLookDownRight eyeLookInRight eyeLookOutRight eyeLookUpRight "
    "eyeSquintRight eyeWideRight jawForward jawLeft jawRight jawOpen mouthClose mouthFunnel "
    "mouthPucker mouthLeft mouthRight mouthSmileLeft mouthSmileRight mouthFrownLeft "
    "mouthFrownRight mouthDimpleLeft mouthDimpleRight mouthStretchLeft mouthStretchRight "
    "mouthRollLower mouthRollUpper mouthShrugLower mouthShrugUpper mouthPressLeft "
    "mouthPressRight mouthLowerDownLeft mouthLowerDownRight mouthUpperUpLeft mouthUpperUpRight "
    "browDownLeft browDownRight browInnerUp browOuterUpLeft browOuterUpRight cheekPuff "
    "cheekSquintLeft cheekSquintRight noseSneerLeft noseSneerRight tongueOut").split()


def _simple(**overrides):
    data = {"name": "t", "fps": 25, "channels": [
        {"name": "jaw", "min": 0.0, "max": 0.4, "max_rate": 0.0, "sources": {"jaw_x": 1.0}},
        {"name": "pitch", "min": -0.5, "max": 0.5, "max_rate": 1.0, "offset": 0.1,
         "sources": {"head_x": 2.0}}]}
    data.update(overrides)
    return RetargetConfig.from_yaml_dict(data)


def test_dim_names():
    names = flame_dim_names()
    assert len(names) == FRAME_DIM and names[JAW_X] == "jaw_x"
    assert names[HEAD_X] == "head_x" and names[EYELID_L] == "eyelid_left"


def test_presets_load_and_validate():
    arkit = RetargetConfig.from_yaml(ARKIT)
    assert list(arkit.channels) == ARKIT_NAMES and len(ARKIT_NAMES) == 52
    assert arkit.matrix_array().shape == (52, FRAME_DIM)
    assert set(arkit.lower) == {0.0} and set(arkit.upper) == {1.0}
    servo = RetargetConfig.from_yaml(SERVO)
    assert list(servo.channels) == [
        "jaw", "upper_lip", "lower_lip", "lip_corner_left", "lip_corner_right", "brow_left",
        "brow_right", "eyelid_left", "eyelid_right", "neck_pitch", "neck_yaw", "neck_roll"]
    assert all(r > 0 for r in servo.max_rate) and servo.latency_lead_s > 0


def test_arkit_mapping_semantics():
    cfg = RetargetConfig.from_yaml(ARKIT)
    rt = Retargeter(cfg)
    idx = {n: i for i, n in enumerate(cfg.channels)}
    frame = np.zeros((1, FRAME_DIM), np.float32)
    frame[0, JAW_X] = 0.2
    frame[0, 1] = 1.0          # smile
    frame[0, 3] = 1.0          # brow raise
    frame[0, EYELID_L] = 1.0   # left eye closed
    w = rt.targets(frame)[0]
    assert w[idx["jawOpen"]] == pytest.approx(0.5)
    assert w[idx["mouthSmileLeft"]] == w[idx["mouthSmileRight"]] > 0.3
    assert w[idx["browInnerUp"]] > 0.3 and w[idx["browOuterUpLeft"]] > 0.3
    assert w[idx["eyeBlinkLeft"]] == 1.0 and w[idx["eyeBlinkRight"]] == 0.0
    assert w[idx["tongueOut"]] == 0.0 and w[idx["mouthFrownLeft"]] == 0.0  # clipped >= 0
    zero_rows = [n for n in ("tongueOut", "cheekPuff", "noseSneerLeft", "eyeLookUpLeft")]
    m = cfg.matrix_array()
    assert all(not m[idx[n]].any() for n in zero_rows)


def test_mapping_offsets_and_limits():
    rt = Retargeter(_simple())
    frames = np.zeros((3, FRAME_DIM), np.float32)
    frames[:, JAW_X] = [0.1, 0.3, 2.0]
    frames[:, HEAD_X] = [0.0, 0.05, 0.1]
    t = rt.targets(frames)
    np.testing.assert_allclose(t[:, 0], [0.1, 0.3, 0.4], atol=1e-7)   # clipped at max
    np.testing.assert_allclose(t[:, 1], [0.1, 0.2, 0.3], atol=1e-7)   # 2 * x + 0.1
    pos, _ = rt.process(-frames)
    assert pos[:, 0].min() >= 0.0 and pos[:, 1].min() >= -0.5


def test_rate_limit_and_smoothing():
    rt = Retargeter(_simple())
    frames = np.zeros((26, FRAME_DIM), np.float32)
    frames[1:, HEAD_X] = 0.2   # target pitch 0.5 (0.1 offset + 0.4), 1 rad/s limit
    pos, stamps = rt.process(frames)
    steps = np.diff(pos[:, 1])
    assert np.all(steps <= 1.0 / 25 + 1e-6)
    assert pos[5, 1] == pytest.approx(0.1 + 5 * 0.04, abs=1e-6)
    assert pos[-1, 1] == pytest.approx(0.5, abs=1e-6)
    smooth = Retargeter(_simple(smoothing_tau_s=0.1))
    frames2 = np.zeros((10, FRAME_DIM), np.float32)
    frames2[1:, JAW_X] = 0.4
    jaw = smooth.process(frames2)[0][:, 0]
    alpha = 1 - np.exp(-0.04 / 0.1)
    assert jaw[1] == pytest.approx(0.4 * alpha, rel=1e-5)
    assert np.all(np.diff(jaw) > 0) and jaw[-1] < 0.4


def test_state_continues_across_calls():
    frames = np.zeros((20, FRAME_DIM), np.float32)
    frames[5:, HEAD_X] = 0.2
    whole = Retargeter(_simple(smoothing_tau_s=0.05)).process(frames)
    rt = Retargeter(_simple(smoothing_tau_s=0.05))
    a, sa = rt.process(frames[:7])
    b, sb = rt.process(frames[7:])
    np.testing.assert_allclose(np.concatenate([a, b]), whole[0], atol=1e-6)
    np.testing.assert_allclose(np.concatenate([sa, sb]), whole[1])


def test_latency_lead_shifts_stamps():
    rt = Retargeter(_simple(latency_lead_s=0.08))
    stamps = 10.0 + np.arange(5) / 25.0
    _, cmd = rt.process(np.zeros((5, FRAME_DIM)), stamps)
    np.testing.assert_allclose(cmd, stamps - 0.08)
    with pytest.raises(ValueError):
        rt.process(np.zeros((5, FRAME_DIM)), stamps[:3])


def test_bad_configs_raise_clear_errors(tmp_path):
    with pytest.raises(RetargetConfigError, match=r"matrix must be \[2, 58\]"):
        _simple(matrix=[[0.0] * 58, [0.0] * 57])
    with pytest.raises(RetargetConfigError, match="unknown FLAME source"):
        RetargetConfig.from_yaml_dict({"channels": [
            {"name": "a", "min": 0, "max": 1, "sources": {"expr77": 1.0}}]})
    with pytest.raises(RetargetConfigError, match="lacks 'max'"):
        RetargetConfig.from_yaml_dict({"channels": [{"name": "a", "min": 0}]})
    with pytest.raises(RetargetConfigError, match="lower > upper"):
        RetargetConfig.from_yaml_dict({"channels": [{"name": "a", "min": 1, "max": 0}]})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"channels": [{"name": "a", "min": 0, "max": 1}],
                                    "matrix": [[1.0, 2.0]]}))
    with pytest.raises(RetargetConfigError, match="matrix"):
        RetargetConfig.from_yaml(str(path))
    path.write_text("- just a list\n")
    with pytest.raises(RetargetConfigError, match="mapping"):
        RetargetConfig.from_yaml(str(path))


def test_dict_round_trip():
    cfg = RetargetConfig.from_yaml(SERVO)
    again = RetargetConfig.from_dict(cfg.to_dict())
    assert again.channels == cfg.channels and again.upper == cfg.upper
    np.testing.assert_array_equal(again.matrix_array(), cfg.matrix_array())
