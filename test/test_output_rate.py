"""Speech output at the codec's or a chosen rate: streaming resampler (exact lengths, no
join clicks), the output timeline at rates that do not divide 1e9, and the
``output.sample_rate`` parameter."""
import numpy as np
import pytest
import scipy.signal
from conftest import require_ros

from a2llm_ros.conversation.output import (NS_PER_FRAME, NS_PER_S, OutputScheduler,
                                           frame_first_sample, sample_time_ns)
from a2llm_ros.conversation.resample import (StreamResampler, TurnAudio, check_output_rate,
                                             resampled_length)
from a2llm_ros.ros.params import A2llmNodeConfig, ParamError, build_config

soxr = pytest.importorskip("soxr")

MS = 1_000_000
TONE_HZ = 440.0
AMPLITUDE = 0.5


def _tone(n, rate, first=0):
    t = np.arange(first, first + n) / rate
    return (AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def _uneven_chunks(n, seed, most=1500):
    """Random chunk sizes in 1..most summing to ``n``."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(min(n - sum(sizes), rng.integers(1, most))))
    return sizes


def _max_step(rate):
    """Largest sample-to-sample step of the tone at ``rate`` (slope x period), +10 %."""
    return 1.1 * AMPLITUDE * 2 * np.pi * TONE_HZ / rate


# ----------------------------------------------------------------------------- resampler

@pytest.mark.parametrize("in_rate,out_rate", [(24000, 16000), (16000, 24000),
                                              (24000, 44100), (16000, 48000)])
def test_stream_resampler_exact_length_matches_one_shot_without_join_clicks(in_rate, out_rate):
    n = 3 * in_rate + 123  # a 3 s turn, odd length
    wave = _tone(n, in_rate)
    stream = StreamResampler(in_rate, out_rate)
    pieces, fed = [], 0
    for size in _uneven_chunks(n, seed=in_rate + out_rate):
        pieces.append(stream.process(wave[fed:fed + size]))
        fed += size
        # Never ahead of the input: the timeline of what came out is final.
        assert stream.n_out == sum(len(p) for p in pieces)
        assert stream.n_out <= resampled_length(fed, in_rate, out_rate)
    assert len(pieces) > 50
    pieces.append(stream.finish())
    out = np.concatenate(pieces)
    # round(n * out / in), ties (the odd n at 16 -> 24 kHz) up, as soxr's one-shot does.
    one_shot = soxr.resample(wave, in_rate, out_rate)
    assert len(out) == resampled_length(n, in_rate, out_rate) == len(one_shot)
    assert len(out) == int(np.floor(n * out_rate / in_rate + 0.5))
    np.testing.assert_allclose(out, one_shot, atol=1e-5)
    # A continuous tone stays continuous across the joins (the signal's own ends, where
    # the tone starts and stops abruptly, ring in any resampler: left out).
    edge = out_rate // 100
    assert np.abs(np.diff(out[edge:-edge])).max() < _max_step(out_rate)
    # (The check is sensitive: resampling each chunk on its own clicks at the joins.)
    sizes = _uneven_chunks(n, seed=1)
    naive = np.concatenate([scipy.signal.resample_poly(wave[a:a + size], out_rate, in_rate)
                            for a, size in zip(np.cumsum([0] + sizes[:-1]), sizes)])
    assert np.abs(np.diff(naive[edge:-edge])).max() > 2 * _max_step(out_rate)


def test_resampled_length_rounds_half_up_and_finish_is_idempotent():
    assert resampled_length(38423, 16000, 24000) == 57635      # 57634.5
    assert resampled_length(3, 24000, 16000) == 2
    assert resampled_length(0, 24000, 16000) == 0
    stream = StreamResampler(16000, 24000)
    assert len(stream.process(np.zeros(0, np.float32))) == 0
    head = stream.process(np.ones(10, np.float32))
    tail = stream.finish()
    assert len(head) + len(tail) == stream.n_out == 15 and len(stream.finish()) == 0
    with pytest.raises(RuntimeError):
        stream.process(np.ones(4, np.float32))


@pytest.mark.parametrize("rate", [-16000, 0, 7999, 16001, 24010, 1_000_000, 2.5, True,
                                  "24000", None, float("inf")])
def test_check_output_rate_rejects_negative_absurd_and_off_grid(rate):
    with pytest.raises(ValueError):
        check_output_rate(rate)


def test_check_output_rate_accepts_common_rates():
    for rate in (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 192000):
        assert check_output_rate(rate) == rate


def test_turn_audio_passes_through_and_handles_gaps_overlaps_rate_changes():
    same = TurnAudio(16000)
    (piece,) = same.push(np.ones(640, np.float32), 16000, 1280)
    assert piece[1] == 1280 and len(piece[0]) == 640 and same.finish() == []

    turn = TurnAudio(16000)
    wave = _tone(4800, 24000)
    out = turn.push(wave[:2400], 24000, 0) + turn.push(wave[2400:], 24000, 2400)
    out += turn.push(wave[4000:], 24000, 4000)        # overlap: only the new part counts
    assert turn.counters["overlaps"] == 1
    out += turn.push(_tone(2400, 24000, 7200), 24000, 7200)  # 2400-sample gap
    assert turn.counters["gaps"] == 1
    out += turn.finish()
    starts = [s for _, s in out]
    assert starts == sorted(starts) and starts[0] == 0
    before_gap = [(p, s) for p, s in out if s < 4800]
    assert sum(len(p) for p, _ in before_gap) == 3200              # 4800 @ 24k -> 16k
    after_gap = [(p, s) for p, s in out if s >= 4800]
    assert after_gap[0][1] == 4800 and sum(len(p) for p, _ in after_gap) == 1600
    assert turn.out_end == 6400 and turn.next_start(16000) == 6400

    # A change of rate ends the run (its tail comes out first); the event is placed as is.
    mixed = TurnAudio(16000)
    run = mixed.push(_tone(2400, 24000), 24000, 0)
    assert mixed.resampling and mixed.next_start(24000) == 2400
    after = mixed.push(np.ones(320, np.float32), 16000, 1600)
    assert mixed.counters["rate_changes"] == 1 and not mixed.resampling
    assert sum(len(p) for p, _ in run + after[:-1]) == 1600 and after[-1][1] == 1600


# ----------------------------------------------------------------------------- timeline

def test_sample_times_are_exact_at_24khz():
    rate = 24000  # 1e9 / 24000 = 41666.67 ns: no ns-per-sample constant works
    for frame in (0, 1, 7, 25, 1234, 90_000):
        sample = frame_first_sample(frame, rate)
        assert sample == 960 * frame
        assert sample_time_ns(sample, rate) == frame * NS_PER_FRAME
    assert sample_time_ns(1, rate) == 41666 and sample_time_ns(2, rate) == 83333
    assert sample_time_ns(24000 * 3600, rate) == 3600 * NS_PER_S   # no drift over an hour
    assert sample_time_ns(640, 16000) == 40 * MS                    # 16 kHz unchanged


def test_scheduler_at_24khz_stamps_frame_and_sample_identically():
    out = OutputScheduler(100 * MS, 960, sample_rate=24000)
    assert out.frame_sample(25) == 24000
    # Uneven resampler pieces, contiguous on the timeline (1.0 s ... 1.5 s).
    sizes, start = [1000, 333, 7, 5000, 5660], out.frame_sample(25)
    for size in sizes:
        out.push_audio(1, np.ones(size, np.float32), start)
        start += size
    out.push_flame(1, np.zeros((13, 58), np.float32), abs_frame=25, first_index=0,
                   source="speech")
    items = out.due(10 * NS_PER_S)
    audio = [i for i in items if i.kind == "audio"]
    frames = {i.payload["abs_frame"]: i.t_ns for i in items if i.kind == "flame_frame"}
    assert sum(len(i.payload["samples"]) for i in audio) == sum(sizes) == 12000
    for item in audio:
        assert item.t_ns == item.payload["abs_sample"] * NS_PER_S // 24000
    by_sample = {i.payload["abs_sample"]: i.t_ns for i in audio}
    for f, t_ns in frames.items():
        assert t_ns == f * NS_PER_FRAME
        if 960 * f in by_sample:
            assert by_sample[960 * f] == t_ns
    assert by_sample[24000] == frames[25] == NS_PER_S
    with pytest.raises(ValueError):
        OutputScheduler(0, 960, sample_rate=24001)


def test_scheduler_trims_overlapping_audio_at_24khz_on_exact_stamps():
    out = OutputScheduler(0, 960, sample_rate=24000)
    out.push_audio(1, np.ones(1000, np.float32), 0)
    first = out.due(0)
    assert [i.payload["abs_sample"] for i in first] == [0]
    out.push_audio(2, np.ones(960, np.float32), 500)       # overlaps released audio
    (trimmed,) = out.due(NS_PER_S)
    assert trimmed.payload["abs_sample"] == 960 and trimmed.t_ns == NS_PER_FRAME


# ----------------------------------------------------------------------------- parameter

def test_output_sample_rate_parameter():
    assert A2llmNodeConfig().output.sample_rate == 0   # the codec's rate as is
    assert build_config(A2llmNodeConfig(), {"output.sample_rate": 44100}).output.sample_rate \
        == 44100
    for bad in (-16000, 1_000_000, 24001, 100):
        with pytest.raises(ParamError) as err:
            build_config(A2llmNodeConfig(), {"output.sample_rate": bad})
        assert "output.sample_rate" in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(ParamError, match="integer"):
        build_config(A2llmNodeConfig(), {"output.sample_rate": 24000.5})


@pytest.mark.ros
def test_output_rate_resolved_from_the_codec():
    require_ros(interfaces=False)
    import types

    from a2llm_ros.ros.a2llm_node import codec_sample_rate, output_rate_for

    def backend(rate):
        return types.SimpleNamespace(model=types.SimpleNamespace(
            token2wav=types.SimpleNamespace(sample_rate=rate)))

    assert codec_sample_rate(backend(24000)) == 24000
    assert codec_sample_rate(types.SimpleNamespace(model=None)) is None
    assert output_rate_for(0, backend(24000)) == 24000
    assert output_rate_for(0, backend(16000)) == 16000
    assert output_rate_for(0, types.SimpleNamespace(model=None)) == 16000
    assert output_rate_for(48000, backend(24000)) == 48000
    with pytest.raises(ValueError, match="output.sample_rate"):
        output_rate_for(0, backend(22051))
