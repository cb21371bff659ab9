"""Tests for ROS audio message decoding, streaming resampling and the front-end."""
import numpy as np
import pytest
import scipy.signal

from a2llm_ros.audio.frontend import (KEPT_AUDIO_REASONS, AudioFormat, AudioFormatError,
                                      AudioFrontEnd, FrontEndConfig, StreamingResampler,
                                      decode_pcm, downmix, mgonzs13_field, stamp_gap_ns)
from a2llm_ros.constants import SAMPLE_RATE


def _sine(freq, seconds, rate, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_format_constructors():
    fmt = AudioFormat.from_ros_drivers(2, 44100, "s16le", "WAVE")
    assert fmt == AudioFormat(2, 44100, "S16LE", "wave")
    assert fmt.frame_bytes == 4
    m = AudioFormat.from_mgonzs13(8, 1, 16000)
    assert (m.sample_format, m.channels, m.sample_rate) == ("S16LE", 1, 16000)
    assert AudioFormat.from_mgonzs13(1, 1, 48000).sample_format == "F32LE"
    assert mgonzs13_field(32) == "uint8_data"
    with pytest.raises(AudioFormatError) as err:
        AudioFormat.from_mgonzs13(4, 1, 16000)  # paInt24: unsupported
    assert err.value.reason == "unsupported_sample_format"


@pytest.mark.parametrize("sample_format,dtype,scale,offset", [
    ("S16LE", "<i2", 32768.0, 0), ("S32LE", "<i4", 2 ** 31, 0), ("F32LE", "<f4", 1.0, 0),
    ("U8", "u1", 128.0, 128), ("S8", "i1", 128.0, 0)])
def test_decode_pcm_formats(sample_format, dtype, scale, offset):
    ref = np.array([[0.0, 0.5], [-0.5, 0.25], [0.75, -1.0]])  # [3 frames, 2 ch]
    ints = np.round(ref * scale + offset)
    ints = np.clip(ints, np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype != "<f4" else ref
    raw = ints.astype(dtype).tobytes()
    fmt = AudioFormat(2, 16000, sample_format, "wave")
    out = decode_pcm(raw, fmt)
    assert out.shape == (3, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1.0 / scale + 1e-7)
    typed = decode_pcm(ints.astype(dtype).reshape(-1), fmt)  # mgonzs13 typed array
    np.testing.assert_allclose(typed, out)


@pytest.mark.parametrize("fmt,data,reason", [
    (AudioFormat(1, 16000, "S16LE", "mp3"), b"\x00" * 64, "unsupported_coding"),
    (AudioFormat(1, 16000, "S24LE", "wave"), b"\x00" * 64, "unsupported_sample_format"),
    (AudioFormat(2, 16000, "S16LE", "wave"), b"\x00" * 6, "odd_byte_count"),
    (AudioFormat(1, 16000, "S16LE", "wave"), b"", "empty"),
    (AudioFormat(1, 16000, "F32LE", "wave"),
     np.array([0.1, np.nan], "<f4").tobytes(), "non_finite"),
    (AudioFormat(1, 100, "S16LE", "wave"), b"\x00" * 2002, "oversized"),
])
def test_decode_pcm_errors(fmt, data, reason):
    with pytest.raises(AudioFormatError) as err:
        decode_pcm(data, fmt)
    assert err.value.reason == reason
    assert reason in str(err.value)


def test_rclpy_array_types():
    import array
    fmt = AudioFormat(1, 16000, "S16LE", "wave")
    ints = np.array([0, 16384, -16384], "<i2")
    raw_u8 = array.array("B", ints.tobytes())     # ros-drivers uint8[] field
    typed = array.array("h", ints.tolist())        # mgonzs13 int16_data field
    expected = [[0.0], [0.5], [-0.5]]
    np.testing.assert_allclose(decode_pcm(raw_u8, fmt), expected)
    np.testing.assert_allclose(decode_pcm(typed, fmt), expected)


def test_oversized_by_bytes():
    with pytest.raises(AudioFormatError) as err:
        decode_pcm(b"\x00" * 4096, AudioFormat(1, 16000, "S16LE"), max_bytes=1024)
    assert err.value.reason == "oversized"


def test_downmix():
    frames = np.array([[1.0, 0.0], [0.5, -0.5]], np.float32)
    np.testing.assert_allclose(downmix(frames), [0.5, 0.0])


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000, 16000])
def test_streaming_resampler_chunked_equals_whole(rate):
    x = np.random.default_rng(0).standard_normal(rate // 2).astype(np.float32) * 0.3
    whole = StreamingResampler(rate)
    ref = np.concatenate([whole.process(x), whole.flush()])
    chunked = StreamingResampler(rate)
    rng = np.random.default_rng(1)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 2000))
        parts.append(chunked.process(x[i:i + n]))
        i += n
    parts.append(chunked.flush())
    out = np.concatenate(parts)
    assert len(out) == len(ref) == -(-len(x) * SAMPLE_RATE // rate)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    if rate != SAMPLE_RATE:  # same filter family as scipy's one-shot resample_poly
        up, down = whole.up, whole.down
        np.testing.assert_allclose(out, scipy.signal.resample_poly(x, up, down), atol=1e-5)


def test_resampler_preserves_tone():
    x = _sine(440.0, 1.0, 44100)
    r = StreamingResampler(44100)
    y = np.concatenate([r.process(x[:20000]), r.process(x[20000:]), r.flush()])
    np.testing.assert_allclose(y[1000:-1000], _sine(440.0, 1.0, SAMPLE_RATE)[1000:-1000],
                               atol=2e-3)


def _s16(wave):
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def test_frontend_stereo_48k_to_16k_with_clock():
    fe = AudioFrontEnd()
    fmt = AudioFormat(2, 48000, "S16LE", "wave")
    mono = _sine(300.0, 1.0, 48000)
    stereo = np.stack([mono, mono], axis=1)
    chunks = [fe.process(_s16(stereo[i:i + 4800]), fmt) for i in range(0, 48000, 4800)]
    starts = [c.start_sample for c in chunks]
    lengths = [len(c.samples) for c in chunks]
    assert starts == list(np.cumsum([0] + lengths[:-1]))
    total = sum(lengths)
    assert SAMPLE_RATE - 20 <= total <= SAMPLE_RATE and fe.sample_count == total
    out = np.concatenate([c.samples for c in chunks])
    np.testing.assert_allclose(out[500:15000], _sine(300.0, 1.0, SAMPLE_RATE)[500:15000],
                               atol=3e-3)


def test_frontend_carry_option_keeps_byte_stream_behaviour():
    """audio.frontend.carry_partial_frames: frames split across messages are joined."""
    problems = []
    fe = AudioFrontEnd(FrontEndConfig(carry_partial_frames=True),
                       on_problem=lambda r, m: problems.append(r))
    fmt = AudioFormat(1, 16000, "S16LE", "wave")
    wave = _sine(200.0, 0.1, 16000)
    raw = _s16(wave)
    cuts = [0, 101, 333, 334, 2001, len(raw)]
    out = [fe.process(raw[a:b], fmt) for a, b in zip(cuts[:-1], cuts[1:])]
    samples = np.concatenate([c.samples for c in out if c is not None])
    np.testing.assert_allclose(samples, np.frombuffer(raw, "<i2") / 32768.0, atol=1e-6)
    assert fe.counters["odd_byte_count"] == problems.count("odd_byte_count") >= 2
    assert "partial_frame_bytes_dropped" not in fe.warnings


def _stereo_frames(n, seed=0):
    """[n, 2] int16 frames of noise (left and right differ)."""
    return np.random.default_rng(seed).integers(-20000, 20000, (n, 2)).astype("<i2")


def _mono16k(frames):
    """What the 16 kHz stereo front end returns for int16 ``frames [n, 2]`` (pass-through)."""
    return frames.astype(np.float32).mean(axis=1) / 32768.0


@pytest.mark.parametrize("extra", [1, 2, 3])
def test_frontend_partial_trailing_frame_dropped_next_message_aligned(extra):
    """A message ending in a partial frame loses only that frame; the next one is aligned."""
    problems = []
    fe = AudioFrontEnd(on_problem=lambda r, m: problems.append(r))
    fmt = AudioFormat(2, 16000, "S16LE", "wave")  # 4-byte frames, no resampling
    frames = _stereo_frames(300)
    raw = frames.tobytes()
    first = raw[:100 * 4 + extra]              # 100 frames + a partial 101st
    lost_byte = raw[100 * 4 + 4:200 * 4 - 1]   # frames 101..198 + 3 bytes of frame 199
    third = raw[200 * 4:]                      # frames 200..299, aligned
    chunks = [fe.process(m, fmt) for m in (first, lost_byte, third)]
    out = np.concatenate([c.samples for c in chunks])
    kept = np.concatenate([frames[:100], frames[101:199], frames[200:]])
    np.testing.assert_allclose(out, _mono16k(kept), atol=1e-6)
    assert [c.start_sample for c in chunks] == [0, 100, 198]
    assert fe.counters == {"odd_byte_count": 2}
    assert fe.warnings == {"partial_frame_bytes_dropped": extra + 3}
    assert problems == ["odd_byte_count", "odd_byte_count"]


def test_frontend_message_shorter_than_a_frame_is_dropped():
    fe = AudioFrontEnd()
    fmt = AudioFormat(2, 16000, "S16LE", "wave")
    assert fe.process(b"\x01\x02\x03", fmt) is None
    chunk = fe.process(_stereo_frames(10).tobytes(), fmt)
    assert chunk.start_sample == 0 and len(chunk.samples) == 10
    assert fe.counters == {"odd_byte_count": 1}
    assert fe.warnings == {"partial_frame_bytes_dropped": 3}


@pytest.mark.parametrize("carry", [False, True])
def test_frontend_empty_message_counted_and_skipped(carry):
    problems = []
    fe = AudioFrontEnd(FrontEndConfig(carry_partial_frames=carry),
                       on_problem=lambda r, m: problems.append(r))
    fmt = AudioFormat(2, 16000, "S16LE", "wave")
    frames = _stereo_frames(20)
    raw = frames.tobytes()
    outs = [fe.process(m, fmt) for m in (b"", raw[:40], b"", np.zeros(0, np.int16), raw[40:])]
    assert outs[0] is None and outs[2] is None and outs[3] is None
    assert fe.counters == {"empty": 3} and problems == ["empty"] * 3
    np.testing.assert_allclose(np.concatenate([outs[1].samples, outs[4].samples]),
                               _mono16k(frames), atol=1e-6)
    # an empty message of another format is no format change
    assert fe.process(b"", AudioFormat(1, 48000, "F32LE", "wave")) is None
    assert "format_change" not in fe.counters and fe.sample_count == 20


def test_frontend_empty_message_keeps_carry():
    fe = AudioFrontEnd(FrontEndConfig(carry_partial_frames=True))
    fmt = AudioFormat(2, 16000, "S16LE", "wave")
    frames = _stereo_frames(4)
    raw = frames.tobytes()
    outs = [fe.process(m, fmt) for m in (raw[:6], b"", raw[6:])]
    np.testing.assert_allclose(np.concatenate([outs[0].samples, outs[2].samples]),
                               _mono16k(frames), atol=1e-6)


def test_frontend_non_finite_floats_zeroed_and_counted():
    import array
    problems = []
    fe = AudioFrontEnd(on_problem=lambda r, m: problems.append(r))
    fmt = AudioFormat(2, 16000, "F32LE", "wave")
    values = np.array([[0.5, 0.25], [np.nan, 0.5], [0.5, np.inf], [-np.inf, -0.5]], "<f4")
    chunk = fe.process(values.tobytes(), fmt)                      # ros-drivers bytes
    np.testing.assert_allclose(chunk.samples, [0.375, 0.25, 0.25, -0.25], atol=1e-7)
    typed = array.array("f", values.reshape(-1).tolist())         # mgonzs13 float32_data
    mg = AudioFormat.from_mgonzs13(1, 2, 16000)
    again = fe.process(typed, mg)
    np.testing.assert_allclose(again.samples, chunk.samples, atol=1e-7)
    assert again.start_sample == 4 and np.isfinite(again.samples).all()
    assert fe.counters == {"format_change": 1}                     # "wave" -> "pcm"
    assert fe.warnings == {"non_finite": 2, "non_finite_samples_zeroed": 6}
    assert problems.count("non_finite") == 2
    assert set(problems) - {"format_change"} <= set(KEPT_AUDIO_REASONS)


def test_decode_pcm_allow_non_finite():
    raw = np.array([0.1, np.nan], "<f4").tobytes()
    out = decode_pcm(raw, AudioFormat(1, 16000, "F32LE"), allow_non_finite=True)
    assert out.shape == (2, 1) and np.isnan(out[1, 0])


MS = 1_000_000  # ns


def test_frontend_stamp_gap_counted():
    """10 ms messages: jitter within the tolerance is fine, a lost message is counted."""
    problems = []
    fe = AudioFrontEnd(on_problem=lambda r, m: problems.append((r, m)))
    fmt = AudioFormat(1, 16000, "S16LE", "wave")
    msg = np.zeros(160, "<i2").tobytes()
    stamps = [1000 * MS + i * 10 * MS for i in range(5)]            # regular
    stamps += [stamps[-1] + 14 * MS, stamps[-1] + 20 * MS]          # jitter: +4 ms, -4 ms
    for stamp in stamps:
        assert fe.process(msg, fmt, stamp) is not None
    assert fe.warnings == {}
    fe.process(msg, fmt, stamps[-1] + 30 * MS)                      # 2 messages missing
    assert fe.warnings == {"stamp_gap": 1, "stamp_gap_ms": 20}
    fe.process(msg, fmt, stamps[-1] + 20 * MS)                      # backwards: node's job
    fe.process(msg, fmt, 0)                                         # unknown: ignored
    fe.process(msg, fmt, None)
    fe.process(msg, fmt, stamps[-1] + 30 * MS)
    assert fe.warnings == {"stamp_gap": 1, "stamp_gap_ms": 20}
    assert [r for r, _ in problems] == ["stamp_gap"] and "20 ms" in problems[0][1]
    assert fe.counters == {} and fe.sample_count == 12 * 160        # audio kept


def test_frontend_stamp_gap_after_empty_and_dropped_messages():
    """Empty messages do not move the stamp reference; a missing message shows as a gap."""
    fe = AudioFrontEnd()
    fmt = AudioFormat(1, 16000, "S16LE", "wave")
    msg = np.zeros(160, "<i2").tobytes()
    fe.process(msg, fmt, 100 * MS)
    fe.process(b"", fmt, 105 * MS)                                  # empty, in between
    fe.process(msg, fmt, 110 * MS)
    assert fe.warnings == {}
    fe.process(msg, fmt, 130 * MS)                                  # the 120 ms one is lost
    assert fe.warnings == {"stamp_gap": 1, "stamp_gap_ms": 10}


def test_stamp_gap_tolerance():
    assert stamp_gap_ns(0, 10 * MS, 14 * MS, 10 * MS) == 0          # 4 ms late: jitter
    assert stamp_gap_ns(0, 10 * MS, 16 * MS, 10 * MS) == 6 * MS
    assert stamp_gap_ns(0, 100 * MS, 149 * MS, 100 * MS) == 0       # half a message
    assert stamp_gap_ns(0, 100 * MS, 151 * MS, 100 * MS) == 51 * MS
    assert stamp_gap_ns(50 * MS, 10 * MS, 0, 10 * MS) == 0          # backwards


def test_frontend_format_change_flushes_and_continues_clock():
    fe = AudioFrontEnd()
    a = AudioFormat(1, 44100, "S16LE", "wave")
    b = AudioFormat(1, 16000, "S16LE", "wave")
    first = fe.process(_s16(_sine(300.0, 0.5, 44100)), a)
    second = fe.process(_s16(_sine(300.0, 0.5, 16000)), b)
    assert fe.counters["format_change"] == 1
    assert second.start_sample == len(first.samples)
    # flushed tail of the 44.1 kHz stream + 8000 new samples
    assert len(first.samples) + len(second.samples) == 8000 + 8000
