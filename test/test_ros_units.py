"""Pieces of the ROS layer without DDS: parameter mirroring, output scheduling,
message conversions (the latter need the built messages)."""
import types

import numpy as np
import pytest
from conftest import require_ros

from a2llm_ros.conversation.output import NS_PER_FRAME, OutputScheduler, sample_time_ns
from a2llm_ros.ros.params import (A2llmNodeConfig, ParamError, build_config, coerce,
                                  field_kinds, flatten)

MS = 1_000_000


# ----------------------------------------------------------------------------- parameters

def test_flatten_and_build_round_trip():
    cfg = A2llmNodeConfig()
    flat = flatten(cfg)
    kinds = field_kinds(cfg)
    assert set(flat) == set(kinds)
    assert kinds["vad.threshold"] == "float" and kinds["turn.barge_in"] == "str"
    assert kinds["listening.blink_interval_s"] == "float_list"
    assert kinds["audio.frontend.max_message_bytes"] == "int"
    assert flat["listening.blink_interval_s"] == [3.0, 6.0]
    rebuilt = build_config(cfg, flat)
    assert flatten(rebuilt) == flat
    # YAML ints are fine for floats; tuples come back as tuples.
    changed = build_config(cfg, {"vad.min_silence_ms": 300, "listening.blink_interval_s": [2, 4]})
    assert changed.vad.min_silence_ms == 300.0 and isinstance(changed.vad.min_silence_ms, float)
    assert changed.listening.blink_interval_s == (2.0, 4.0)
    assert changed.turn.barge_in_min_speech_ms == 96.0


@pytest.mark.parametrize("name,value,words", [
    ("vad.threshold", 1.5, "threshold"),
    ("vad.threshold", "high", "number"),
    ("generation.top_k", 2.5, "integer"),
    ("model.warmup", 1, "true or false"),
    ("turn.barge_in", "shout", "barge_in"),
    ("audio.message", "opus", "audio.message"),
    ("output.lead_s", float("nan"), "finite"),
    ("listening.blink_interval_s", "3,6", "list"),
    ("backend.kind", "cuda", "kind"),
    ("nonexistent.name", 1, "unknown parameters"),
])
def test_invalid_values_give_reasons(name, value, words):
    with pytest.raises(ParamError) as err:
        build_config(A2llmNodeConfig(), {name: value})
    assert words in str(err.value)


def test_coerce_lists_and_scalars():
    assert coerce("x", "float_list", [1, 2.5]) == (1.0, 2.5)
    assert coerce("x", "int", 3.0) == 3
    with pytest.raises(ParamError):
        coerce("x", "int", True)
    with pytest.raises(ParamError):
        coerce("x", "str", 3)


# ----------------------------------------------------------------------------- output

def _sched(lead_ms=100, chunk=640, gain=None):
    return OutputScheduler(lead_ms * MS, chunk, gain=gain)


def test_scheduler_releases_lead_before_presentation_in_time_order():
    out = _sched()
    out.push_audio(1, np.ones(3200, np.float32), abs_sample=25 * 640)     # frame 25 = 1.0 s
    out.push_flame(1, np.zeros((5, 58), np.float32), abs_frame=25, first_index=0,
                   source="speech")
    out.push_now("state", 1, state="speaking", reason="first_output")
    first = out.due(0)
    assert [i.kind for i in first] == ["state"]
    assert out.due(899 * MS) == []
    batch = out.due(900 * MS)  # 1.0 s - 100 ms lead
    assert [i.kind for i in batch] == ["audio", "flame_chunk", "flame_frame"]
    assert batch[0].t_ns == batch[2].t_ns == 1000 * MS  # frame f and sample 640 f: one stamp
    rest = out.due(2000 * MS)
    assert [i.kind for i in rest].count("audio") == 4
    assert [i.payload["abs_frame"] for i in rest if i.kind == "flame_frame"] == [26, 27, 28, 29]
    audio = [i for i in batch + rest if i.kind == "audio"]
    assert all(b.t_ns == a.t_ns + sample_time_ns(640, 16000) for a, b in zip(audio, audio[1:]))


def test_late_outputs_are_counted_with_their_worst_lateness():
    out = _sched()
    out.push_audio(1, np.ones(640, np.float32), abs_sample=25 * 640)  # due at 1.0 s
    out.push_flame(1, np.zeros((1, 58), np.float32), abs_frame=25, first_index=0,
                   source="speech")
    kinds = [i.kind for i in out.due(900 * MS)]
    assert kinds == ["audio", "flame_chunk", "flame_frame"]
    assert not any(k.startswith("late") for k in out.counters)  # on time: nothing counted
    out.push_audio(1, np.ones(640, np.float32), abs_sample=50 * 640)  # due at 2.0 s
    out.push_flame(1, np.zeros((1, 58), np.float32), abs_frame=50, first_index=25,
                   source="speech")
    out.due(2250 * MS)  # released 250 ms after the stamp
    assert out.counters["late_audio_chunks"] == 1 and out.counters["late_flame_frames"] == 1
    assert out.counters["late_flame_chunks"] == 1
    assert out.counters["late_ms_max.audio"] == out.counters["late_ms_max.flame_frame"] == 250


def test_flush_turn_and_monotonic_frames_after_barge_in():
    out = _sched()
    for start in (10, 15):  # two 200 ms motion segments, as the generator emits them
        out.push_flame(1, np.zeros((5, 58), np.float32), start, start - 10, "speech")
    out.push_audio(1, np.zeros(6400, np.float32), 10 * 640)
    released = out.due(10 * NS_PER_FRAME)  # lead 100 ms: up to frame 12
    assert max(i.payload["abs_frame"] for i in released if i.kind == "flame_frame") == 12
    assert [i.payload["abs_frame"] for i in released if i.kind == "flame_chunk"] == [10]
    assert max(i.payload["abs_sample"] for i in released if i.kind == "audio") == 12 * 640
    dropped = out.flush_turn(1)
    assert dropped == 7 + 1 + 7 and out.depth == 0
    # The listening face resumes at the barge-in (frame 11): per-frame output goes on
    # after frame 12, chunks after frame 14 (the released chunk covered 10..14).
    out.push_flame(0, np.zeros((3, 58), np.float32), 11, 11, "listening")
    out.push_flame(0, np.zeros((2, 58), np.float32), 14, 14, "listening")
    later = out.due(14 * NS_PER_FRAME)
    assert [i.payload["abs_frame"] for i in later if i.kind == "flame_frame"] == [13, 14, 15]
    chunks = [i for i in later if i.kind == "flame_chunk"]
    assert len(chunks) == 1 and chunks[0].payload["abs_frame"] == 15
    assert len(chunks[0].payload["frames"]) == 1 and chunks[0].t_ns == 15 * NS_PER_FRAME
    assert out.counters["dropped_overlapping_frames"] == 2


def test_duck_gain_applies_to_queued_audio_and_is_restored():
    gain = {"now": 1.0}
    out = _sched(lead_ms=0, gain=lambda: gain["now"])
    out.push_audio(1, np.full(1280, 0.5, np.float32), 0, gain=1.0)
    out.push_audio(1, np.full(640, 0.15, np.float32), 1280, gain=0.3)  # emitted while ducked
    gain["now"] = 0.3
    (first,) = out.due(0)
    assert np.allclose(first.payload["samples"], 0.15)
    gain["now"] = 1.0
    second, third = out.due(2000 * MS)
    assert np.allclose(second.payload["samples"], 0.5)
    assert np.allclose(third.payload["samples"], 0.5)


# ----------------------------------------------------------------------------- messages

@pytest.mark.ros
def test_flame_messages_round_trip():
    require_ros()
    from a2llm_ros.ros import msgconv as mc
    frames = np.random.default_rng(0).standard_normal((5, 58)).astype(np.float32)
    msg = mc.flame_chunk_msg(frames, 7 * 10**9, turn_id=3, first_index=10, source="speech",
                             frame_id="head")
    assert msg.source == msg.SOURCE_SPEECH and msg.first_frame_index == 10
    back, stamps = mc.frames_from_chunk(msg)
    np.testing.assert_allclose(back, frames, atol=1e-6)
    assert stamps.tolist() == [7 * 10**9 + i * NS_PER_FRAME for i in range(5)]
    assert msg.frames[2].flame_version == 2020 and list(msg.frames[2].eye_pose) == [0.0] * 6


@pytest.mark.ros
def test_speech_audio_messages_and_input_formats():
    require_ros(interfaces=False, audio="any")
    from a2llm_ros.audio.frontend import AudioFormat, AudioFormatError, AudioFrontEnd
    from a2llm_ros.interfaces import detect_audio_flavour
    from a2llm_ros.ros import msgconv as mc
    wave = 0.5 * np.sin(np.linspace(0, 40 * np.pi, 640)).astype(np.float32)
    if detect_audio_flavour() == "ros_drivers":
        msgs = mc.speech_audio_msgs("ros_drivers", wave, 123, "head", "S16LE")
        raw = mc.raw_bytes(msgs["stamped"].audio.data)
        assert bytes(msgs["unstamped"].data) == raw and len(raw) == 1280
        np.testing.assert_allclose(np.frombuffer(raw, "<i2") / 32767.0, wave, atol=1e-4)
        info = mc.audio_info_msg("F32LE")
        assert (info.channels, info.sample_rate, info.sample_format) == (1, 16000, "F32LE")
        info = mc.audio_info_msg("S16LE", sample_rate=24000)   # the output rate, reported
        assert (info.sample_rate, info.bitrate) == (24000, 24000 * 16)
        fmt = mc.ros_drivers_format(types.SimpleNamespace(
            channels=1, sample_rate=48000, sample_format="f32le", coding_format="WAVE"))
        assert fmt == AudioFormat(1, 48000, "F32LE", "wave")
    # mgonzs13 messages (duck-typed: that flavour is not installed here).
    audio = types.SimpleNamespace(
        info=types.SimpleNamespace(format=8, channels=2, rate=32000, chunk=4),
        audio_data=types.SimpleNamespace(int16_data=[1000, 1000, -1000, -1000]))
    data, fmt = mc.mgonzs13_payload(types.SimpleNamespace(audio=audio))
    assert fmt == AudioFormat(2, 32000, "S16LE", "pcm") and list(data) == [1000] * 2 + [-1000] * 2
    front = AudioFrontEnd()
    chunk = front.process(np.asarray(data, np.int16), fmt)
    assert chunk is not None and len(chunk.samples) in (0, 1, 2)
    audio.info.format = 99
    with pytest.raises(AudioFormatError):
        mc.mgonzs13_payload(types.SimpleNamespace(audio=audio))
