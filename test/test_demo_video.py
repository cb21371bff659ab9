"""``a2llm demo``'s answers.mp4 and preview.png from a replay's results (no ROS needed):
the whole span of the answers, listening face between them, one video and one audio stream
of the same length; the preview's faces lie in the answers' speech."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from a2llm_ros.tools.commands import demo
from a2llm_ros.constants import FLAME_FPS, NS_PER_S, SAMPLE_RATE
from a2llm_ros.flame.layout import DEFAULT_LAYOUT as LAYOUT
from a2llm_ros.tools.render.video import probe

T0 = 1_800_000_000 * NS_PER_S
FRAME_NS = NS_PER_S // FLAME_FPS
ANSWERS = ((1, 0.0, 0.8), (2, 1.6, 0.8))  # (turn, start s, length s): listening in between
CHUNK = SAMPLE_RATE // 10  # samples per published audio message


def _fake_replay():
    """What graph_run returns, as far as the demo's outputs read it."""
    answered, rows = [], []
    rng = np.random.default_rng(0)
    for turn, start, length in ANSWERS:
        n = int(length * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
                 ).astype(np.float32)
        stamps = [T0 + int((start + a / SAMPLE_RATE) * NS_PER_S) for a in range(0, n, CHUNK)]
        answered.append(SimpleNamespace(turn_id=turn, audio=audio, audio_stamps=stamps,
                                        audio_sizes=[min(CHUNK, n - a)
                                                     for a in range(0, n, CHUNK)]))
    for k in range(-10, int(2.6 * FLAME_FPS)):  # listening frames from 0.4 s before
        stamp = T0 + k * FRAME_NS
        frame = np.zeros(LAYOUT.dim, np.float32)
        turn = 0
        for tid, start, length in ANSWERS:
            if start <= k / FLAME_FPS < start + length:
                turn = tid
                frame[LAYOUT.jaw.start] = 0.25 * (np.sin(2 * np.pi * 3 * k / FLAME_FPS) > 0)
        frame[:3] = 0.1 * rng.normal(size=3)
        rows.append((None, stamp, turn, frame))
    return SimpleNamespace(answered=answered, frames=rows)


def test_demo_writes_answers_mp4_over_the_whole_replay(tmp_path, monkeypatch):
    res = _fake_replay()
    wave, t0 = demo._answer_timeline(res)
    assert t0 == T0 and abs(len(wave) / SAMPLE_RATE - 2.4) < 0.01
    path = demo._write_video(tmp_path / "answers.mp4", res, wave, t0)
    info = probe(path)
    assert sorted(info.streams) == [("audio", "aac"), ("video", "h264")]
    assert abs(info.video_s - info.audio_s) < 0.2, info
    assert abs(info.video_frames - FLAME_FPS * len(wave) / SAMPLE_RATE) <= 1, info

    from a2llm_ros.tools.demo import preview
    drawn = []
    real = preview.render_preview
    monkeypatch.setattr(preview, "render_preview",
                        lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    png = demo._write_preview(tmp_path / "preview.png", res, wave, t0)
    assert png.stat().st_size > 0
    (info,) = drawn
    times = info.strip_times_s
    in_answer = [any(s <= t < s + n for _, s, n in ANSWERS) for t in times]
    labels = list(info.strip_labels)
    assert labels.count("listening") == 1 and not in_answer[labels.index("listening")]
    talking = [k for k, lab in enumerate(labels) if lab == "speech"]
    assert len(talking) == 7 and all(in_answer[k] for k in talking)
    jaw = info.jaw_pitch[info.strip_frames[talking]]
    assert jaw.max() > 0.2 and jaw.min() < 0.05  # open and closed mouths while speaking
