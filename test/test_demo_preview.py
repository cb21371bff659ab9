"""preview.png: the face strip is drawn, and the plotted jaw curves follow the frames."""
import matplotlib.image as mpimg
import numpy as np
import pytest

from a2llm_ros.tools.demo.preview import pick_frames, render_preview
from a2llm_ros.flame.layout import DEFAULT_LAYOUT

SR, FPS, SECONDS = 16000, 25, 3.0
SIZE = (1200, 700)


def _syllables(t):
    """Syllable-like envelope in [0, 1] at times t (s)."""
    return np.clip(0.8 * np.sin(2 * np.pi * 1.7 * t) + 0.2 * np.sin(2 * np.pi * 4.3 * t), 0, 1)


@pytest.fixture(scope="module")
def preview(tmp_path_factory):
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * SR)) / SR
    wave = _syllables(t) * (0.4 * np.sin(2 * np.pi * 190 * t) + 0.05 * rng.normal(size=len(t)))
    n = int(SECONDS * FPS)
    tf = (np.arange(n) + 0.5) / FPS
    frames = np.zeros((n, DEFAULT_LAYOUT.dim))
    frames[:, DEFAULT_LAYOUT.jaw.start] = 0.25 * _syllables(tf)  # jaw pitch follows the sound
    frames[:, DEFAULT_LAYOUT.head.start + 1] = 0.05 * np.sin(2 * np.pi * 0.4 * tf)
    frames[:, :3] = 0.3 * rng.normal(size=(n, 3))
    out = tmp_path_factory.mktemp("demo") / "preview.png"
    info = render_preview(wave, frames, out, n_faces=6, size=SIZE, title="test")
    return info, frames, wave


def test_png_written_with_requested_size(preview):
    info, _, _ = preview
    image = mpimg.imread(info.path)
    assert image.shape[:2] == (SIZE[1], SIZE[0])
    assert info.size == SIZE and len(info.strip_frames) == 6


def test_face_strip_is_not_blank(preview):
    info, _, _ = preview
    image = mpimg.imread(info.path)[..., :3]
    top, bottom, left, right = info.strip_box
    assert 0 <= top < bottom <= SIZE[1] and 0 <= left < right <= SIZE[0]
    strip = image[top:bottom, left:right]
    assert strip.std() > 0.1  # a shaded face, not a flat panel
    skin = (strip[..., 0] > strip[..., 2] + 0.1).mean()  # reddish skin/lip pixels
    assert skin > 0.2, skin
    # faces at different jaw openings differ from each other
    cells = np.array_split(strip, len(info.strip_frames), axis=1)
    width = min(c.shape[1] for c in cells)
    diffs = [np.abs(a[:, :width] - b[:, :width]).mean() for a, b in zip(cells, cells[1:])]
    assert max(diffs) > 0.005


def test_jaw_curves_follow_the_frames(preview):
    info, frames, _ = preview
    jaw = frames[:, DEFAULT_LAYOUT.jaw.start]
    np.testing.assert_allclose(info.jaw_pitch, jaw)
    assert np.corrcoef(info.lip_gap_mm, jaw)[0, 1] > 0.9  # expressions move the lips too
    assert info.lip_gap_mm.max() - info.lip_gap_mm.min() > 5.0  # mm of lip travel
    assert np.corrcoef(info.rms, jaw)[0, 1] > 0.9  # the test signal's sound and jaw agree
    np.testing.assert_allclose(info.strip_times_s, info.strip_frames / FPS)


def test_pick_frames_modes():
    gap = np.array([0, 5, 1, 0, 8, 2, 0, 3, 9, 1], float)
    assert list(pick_frames(gap, 2, "peaks")) == [4, 8]
    assert list(pick_frames(gap, 2, "extremes")) == [4, 6]
    assert list(pick_frames(gap, 3, "even")) == [0, 4, 9]
    with pytest.raises(ValueError):
        pick_frames(gap, 2, "random")


def test_strip_shows_open_and_closed_mouths_inside_speech(preview):
    info, _, _ = preview
    labels = np.array(info.strip_labels)
    assert list(labels).count("listening") == 1  # one listening face, labelled
    talking = info.strip_frames[labels == "speech"]
    assert len(talking) == 5 and info.speech[talking].all()  # every other face is in speech
    assert not info.speech[info.strip_frames[labels == "listening"]].any()
    gaps = info.lip_gap_mm[talking]
    assert gaps.max() - gaps.min() > 5.0  # open and closed mouths while speaking
    assert gaps.max() > np.percentile(info.lip_gap_mm[info.speech], 75)


def test_pick_speech_frames_alternates_inside_speech_and_adds_listening():
    from a2llm_ros.tools.demo.preview import pick_speech_frames
    gap = np.array([0, 0, 0, 5, 1, 7, 2, 0, 0, 0, 0, 0, 6, 1, 9, 3, 0, 0], float)
    speech = gap > 0
    listening = ~speech
    chosen, labels = pick_speech_frames(gap, speech, 5, listening)
    assert labels.count("listening") == 1
    assert chosen[labels.index("listening")] == 9  # the middle of the longest pause
    talking = [c for c, lab in zip(chosen, labels) if lab == "speech"]
    assert len(talking) == 4 and speech[talking].all()
    assert list(gap[talking]) == [5, 2, 6, 3]  # open, closed, open, closed per quarter
    quiet, quiet_labels = pick_speech_frames(np.zeros(10), np.zeros(10, bool), 3)
    assert len(quiet) == 3 and set(quiet_labels) == {"listening"}
