"""Streaming generation: equals the non-incremental reference, lockstep timing, cancel, cap."""
import numpy as np
import pytest
import torch

from a2llm_ros.checkpoint import init_model
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.generation import (AudioEvent, EndEvent, FlameEvent, GenerationConfig,
                                  StreamingGenerator, TextEvent, check_question)
from a2llm_ros.engines.torch_backend import TorchBackend, generate_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return init_model(A2LLMConfig.preset("tiny"), seed=4)


def question(seconds=1.5, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.mark.parametrize("cfg", [
    GenerationConfig(greedy=True, max_speech_tokens=33),
    GenerationConfig(seed=7, temperature=1.0, top_k=20, max_speech_tokens=27,
                     motion_temperature=1.0, motion_top_k=8),
])
def test_streaming_equals_batch(model, cfg):
    stream = StreamingGenerator(TorchBackend(model), cfg).generate(question())
    batch = generate_batch(model, question(), cfg)
    assert stream.text == batch.text and stream.text_ids == batch.text_ids
    assert stream.speech_codes == batch.speech_codes
    assert stream.end_reason == batch.end_reason
    np.testing.assert_allclose(stream.audio, batch.audio, atol=1e-6, rtol=0)
    assert stream.frames.shape == batch.frames.shape
    np.testing.assert_allclose(stream.frames, batch.frames, atol=1e-5, rtol=0)


def test_lockstep_timing_and_cap(model):
    cfg = GenerationConfig(greedy=True, max_speech_tokens=23)
    gen = StreamingGenerator(TorchBackend(model), cfg)
    gen.start(question())
    n_audio = n_frames = 0
    order = []
    while gen.active:
        events = gen.step()
        for e in events:
            order.append(type(e).__name__)
            if isinstance(e, AudioEvent):
                assert e.start_sample == n_audio and e.start_time == n_audio / 16000
                n_audio += e.samples.shape[0]
                assert e.samples.dtype == np.float32
            if isinstance(e, FlameEvent):
                assert e.start_frame == n_frames and e.frames.shape[1] == 58
                n_frames += e.frames.shape[0]
                # motion never runs ahead of the audio
                assert n_frames * 640 <= n_audio
    assert order[-1] == "EndEvent"
    n_speech = len(gen.state.speech_codes)
    assert n_speech == 23 and gen.state.end_reason == "cap"
    assert n_audio == n_speech * 640  # N tokens -> exactly N x 40 ms
    assert n_frames == n_speech  # 25 fps == 25 Hz speech tokens (partial group padded)


def test_every_full_segment_emits_audio_then_flame(model):
    gen = StreamingGenerator(TorchBackend(model),
                             GenerationConfig(greedy=True, max_speech_tokens=15))
    gen.start(question())
    lookahead = model.token2wav.lookahead_tokens
    assert lookahead == 1  # the tiny codec's refiner: a token's audio waits for the next
    first = True
    while gen.active:
        events = gen.step()
        kinds = [type(e) for e in events]
        if AudioEvent in kinds and EndEvent not in kinds:
            # the frames under the audio leave with it: the first segment's first four
            # at once (not one segment later), the fifth with the next segment's audio
            n = 5 - lookahead if first else 5
            assert kinds[-2:] == [AudioEvent, FlameEvent]
            assert events[-1].frames.shape[0] == n and events[-2].samples.shape[0] == n * 640
            first = False
    assert not first


def test_cancel_then_reset_new_turn(model):
    gen = StreamingGenerator(TorchBackend(model),
                             GenerationConfig(greedy=True, max_speech_tokens=40))
    first = gen.start(question())
    for _ in range(12):
        gen.step()
    with pytest.raises(RuntimeError, match="cancel"):
        gen.start(question())
    events = gen.cancel()
    assert len(events) == 1 and isinstance(events[0], EndEvent)
    assert events[0].reason == "cancel" and events[0].turn_id == first
    assert gen.step() == [] and not gen.active
    gen.reset()
    second = gen.start(question(seed=1))
    result = list(gen.events())
    assert second == first + 1
    assert all(e.turn_id == second for e in result)
    assert isinstance(result[-1], EndEvent) and result[-1].reason in ("eos", "cap")


def test_eos_and_text_cap(model):
    """min/max limits: no <speech_end> before min, <text_end> forced at max_text_tokens."""
    cfg = GenerationConfig(greedy=True, max_speech_tokens=30, min_speech_tokens=30,
                           max_text_tokens=3)
    res = StreamingGenerator(TorchBackend(model), cfg).generate(question())
    texts = [e for e in res.events if isinstance(e, TextEvent)]
    assert len(texts) <= 3 and len(res.speech_codes) == 30


def test_same_seed_same_answer_different_seed_differs(model):
    cfg = GenerationConfig(seed=3, max_speech_tokens=20, temperature=1.0, top_k=0)
    a = StreamingGenerator(TorchBackend(model), cfg).generate(question())
    b = StreamingGenerator(TorchBackend(model), cfg).generate(question())
    c = StreamingGenerator(TorchBackend(model), GenerationConfig(
        seed=4, max_speech_tokens=20, temperature=1.0, top_k=0)).generate(question())
    assert a.speech_codes == b.speech_codes and a.text == b.text
    assert a.speech_codes != c.speech_codes


def test_backend_interface_used(model):
    calls = []

    class Spy(TorchBackend):
        def decode(self, token, cache, pick, rng):
            calls.append(token)
            return super().decode(token, cache, pick, rng)

    res = StreamingGenerator(Spy(model), GenerationConfig(greedy=True,
                                                          max_speech_tokens=10)).generate(
        question())
    speech = [model.vocab.speech_code(c) for c in calls if model.vocab.is_speech(c)]
    assert speech == res.speech_codes  # every speech token went through Backend.decode
    assert [c for c in calls if model.vocab.is_text(c)] == res.text_ids


def test_bad_question_rejected():
    with pytest.raises(ValueError, match="too short"):
        check_question(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        check_question(np.full(4000, np.nan, np.float32))


def test_bench_core_smoke(model):
    from a2llm_ros.tools.bench.core import benchmark, synthetic_question
    res = benchmark(model, synthetic_question(1.0), speech_tokens=10, runs=1, warmup=0)
    assert res["audio_s"]["mean"] == pytest.approx(0.4)
    assert res["decode_ms"]["n"] >= 10 and res["token2wav_ms"]["n"] == 2
    for key in ("ttft_ms", "ttfa_ms", "ttff_ms", "rtf", "prefill_ms"):
        assert res[key]["mean"] > 0
    assert res["ttff_ms"]["mean"] >= res["ttfa_ms"]["mean"]


class _Scripted(TorchBackend):
    """Torch backend whose logits follow a script of token ids (Step-style output)."""

    def __init__(self, model, script):
        super().__init__(model)
        self.script, self.i = list(script), 0

    def _forced(self, logits):
        logits = torch.full_like(logits, -1e4)
        logits[self.script[min(self.i, len(self.script) - 1)]] = 0.0
        self.i += 1
        return logits

    def llm_prefill(self, embeds, tail=0):
        logits, hidden, cache = super().llm_prefill(embeds, tail)
        return self._forced(logits), hidden, cache

    def llm_decode(self, token_id, cache):
        logits, hidden, cache = super().llm_decode(token_id, cache)
        return self._forced(logits), hidden, cache


def test_free_reading_of_step_interleaved_output():
    """Without an enforced schedule the generator reads the backbone's own output: text and
    speech by id range, <tts_pad> / the padding code / <tts_end> dropped, <|EOT|> ends it."""
    import dataclasses
    free = A2LLMConfig.preset("tiny")
    free = dataclasses.replace(
        free, interleave=dataclasses.replace(free.interleave, enforce=False))
    model = init_model(free, seed=4)
    v, tok = model.vocab, model.text_tokenizer
    hi = tok.encode("Hi")
    script = (hi + [v.speech_id(c) for c in (3, 4, 5)] + [v.tts_pad, v.speech_pad]
              + [v.speech_id(c) for c in (6, 7, 8, 9)] + [v.tts_end, v.eot])
    res = StreamingGenerator(_Scripted(model, script), GenerationConfig(greedy=True)).generate(
        question())
    assert res.text == "Hi" and res.speech_codes == [3, 4, 5, 6, 7, 8, 9]
    assert res.end_reason == "eos" and res.audio.shape[0] == 7 * 640
    assert res.frames.shape[0] == 7  # one FLAME frame per speech token: lockstep
