"""Tests for the attentive-listening FLAME motion."""
import numpy as np
import pytest

from a2llm_ros.constants import FLAME_FPS
from a2llm_ros.conversation.listening import (EXPR_BROW_RAISE, EXPR_SMILE, ListeningConfig,
                                              ListeningFace)
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, FRAME_DIM

EYELIDS = DEFAULT_LAYOUT.eyelids
HEAD = DEFAULT_LAYOUT.head
PITCH = HEAD.start


def _blink_starts(frames):
    closed = frames[:, EYELIDS.start] > 0.5
    return np.flatnonzero(closed[1:] & ~closed[:-1]) + 1


def test_shape_determinism_and_chunk_invariance():
    a = ListeningFace(ListeningConfig(seed=3)).next_frames(250)
    face = ListeningFace(ListeningConfig(seed=3))
    b = np.concatenate([face.next_frames(n) for n in (1, 7, 42, 200)])
    assert a.shape == (250, FRAME_DIM) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    c = ListeningFace(ListeningConfig(seed=4)).next_frames(250)
    assert not np.array_equal(a, c)


def test_blinks_every_three_to_six_seconds():
    frames = ListeningFace(ListeningConfig(seed=1)).next_frames(60 * FLAME_FPS)
    starts = _blink_starts(frames)
    gaps = np.diff(starts) / FLAME_FPS
    assert 9 <= len(starts) <= 21
    assert gaps.min() >= 3.0 and gaps.max() <= 6.0 + 5 / FLAME_FPS
    assert frames[:, EYELIDS].max() == pytest.approx(1.0)
    assert frames[:, EYELIDS].min() == 0.0
    np.testing.assert_array_equal(frames[:, EYELIDS.start], frames[:, EYELIDS.start + 1])


def test_gaze_held_near_zero_and_attentive_offsets():
    frames = ListeningFace().next_frames(120 * FLAME_FPS)
    head = frames[:, HEAD]
    assert np.abs(head).max() < 0.1
    assert 0.005 < head.std() < 0.04
    assert np.abs(np.diff(head, axis=0)).max() < 0.02  # smooth drift
    assert np.all(frames[:, EXPR_BROW_RAISE] > 0) and np.all(frames[:, EXPR_SMILE] > 0)


def test_nod_after_user_pause():
    cfg = ListeningConfig(seed=0, gaze_drift_rad=0.0, pause_ms=300, nod_pitch_rad=0.08,
                          nod_cooldown_s=3.0)
    face = ListeningFace(cfg)
    face.set_user_speaking(True)
    talking = face.next_frames(50)
    face.set_user_speaking(False)
    after = face.next_frames(40)
    assert np.abs(talking[:, PITCH]).max() == 0.0
    pitch = after[:, PITCH]
    onset = np.flatnonzero(pitch > 0)[0]
    assert abs(onset - 0.3 * FLAME_FPS) <= 2
    assert pitch.max() == pytest.approx(0.08, rel=0.05)
    assert pitch[-1] == 0.0  # nod finished
    # a second pause within the cooldown does not nod again
    face.set_user_speaking(True)
    face.next_frames(2)
    face.set_user_speaking(False)
    assert face.next_frames(20)[:, PITCH].max() == 0.0


def test_crossfades_in_and_out_of_speech():
    face = ListeningFace(ListeningConfig(crossfade_s=0.2))
    listen = face.next_frames(10)
    speech = np.full((8, FRAME_DIM), 2.0, np.float32)
    blended = face.crossfade_into_speech(speech, start_frame=0)
    n = face.fade_frames
    assert n == 5
    assert np.all(np.abs(blended[0] - listen[-1]) < np.abs(speech[0] - listen[-1]))
    np.testing.assert_array_equal(blended[n:], speech[n:])
    later = face.crossfade_into_speech(speech, start_frame=n)  # past the fade
    np.testing.assert_array_equal(later, speech)
    face.resume_after_speech(speech[-1])
    back = face.next_frames(n + 3)
    dist = np.abs(back - 2.0).mean(axis=1)
    assert np.all(np.diff(dist[:n + 1]) > 0)  # moving away from the speech pose
    assert dist[0] < 1.0 and dist[-1] > 1.5
