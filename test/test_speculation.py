"""Speculative answers at pauses (``VadConfig.speculate_after_ms``): started privately at
a pause, dropped when the user goes on, committed at the utterance end with output
identical to a run without speculation (fake generator, scripted VAD; and the default
model on an espeak-ng question with a pause inside it, silero VAD)."""
import hashlib

import numpy as np
import pytest
from test_session import CHUNK, AmplitudeBackend, Driver, Recorder, _audio

from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
from a2llm_ros.conversation.listening import ListeningConfig
from a2llm_ros.conversation.session import ConversationSession, TurnConfig
from a2llm_ros.conversation.turns import PauseStart, SpeechResumed, TurnDetector, UtteranceEnd
from a2llm_ros.conversation.vad import StreamingVad, VadConfig
from a2llm_ros.events import AudioEvent, EndEvent, FlameEvent, TextEvent
from a2llm_ros.flame.layout import FRAME_DIM

SPEC = dict(min_speech_ms=150, min_silence_ms=400, speech_pad_ms=100)


class WaveGenerator:
    """Answers depend on the question's samples (a hash), three segments per answer."""

    def __init__(self):
        self.starts, self.cancels, self.k, self.active = [], 0, 0, False

    def start(self, wave, turn_id):
        self.starts.append(np.asarray(wave).copy())
        self.seed = int(hashlib.sha1(np.asarray(wave).tobytes()).hexdigest()[:8], 16)
        self.k, self.active = 0, True

    def step(self):
        if not self.active:
            return []
        k, v = self.k, (self.seed % 1000) / 1000.0
        events = [TextEvent(0, f"{self.seed}-{k} ", k),
                  AudioEvent(0, np.full(3200, v, np.float32), SAMPLE_RATE, k * 0.2, k * 3200),
                  FlameEvent(0, np.full((5, FRAME_DIM), v, np.float32), 25, k * 0.2, k * 5)]
        self.k += 1
        if self.k == 3:
            self.active = False
            events.append(EndEvent(0, "eos", 15, 15))
        return events

    def cancel(self):
        self.cancels += 1
        self.active = False

    def reset(self):
        self.active = False


def _session(speculate_ms: float):
    gen, rec = WaveGenerator(), Recorder()
    vad = VadConfig(**SPEC, speculate_after_ms=speculate_ms)
    return ConversationSession(lambda: gen, rec, TurnConfig(), vad,
                               vad_backend=AmplitudeBackend()), gen, rec


def _run(audio, speculate_ms):
    session, gen, rec = _session(speculate_ms)
    Driver(session, rec).feed(audio)
    return session, gen, rec


#: Speech frames blended from the live listening face (ListeningConfig.crossfade_s at
#: 25 fps): they start from wherever the face is when the answer begins.
FADE_FRAMES = round(ListeningConfig().crossfade_s * FLAME_FPS)


def _answer(rec):
    """What the user got: states, text, speech audio and motion (turn-relative; the
    motion from the end of the cross-fade out of the listening face on)."""
    speech = np.concatenate([e[3] for e in rec.kinds("flame") if e[5] == "speech"])
    return (rec.states(), [e[2:] for e in rec.kinds("text")],
            [(e[2], e[4], e[3].tolist()) for e in rec.kinds("audio")],
            speech[FADE_FRAMES:].tolist())


def test_detector_pause_carries_the_segment_its_utterance_end_will_carry():
    cfg = VadConfig(**SPEC, speculate_after_ms=150)
    det = TurnDetector(cfg, StreamingVad(cfg, AmplitudeBackend()))
    audio = _audio((0.3, False), (1.0, True), (0.25, False), (0.5, True), (0.8, False))
    events = [e for i in range(0, len(audio), CHUNK) for e in det.process(audio[i:i + CHUNK])]
    kinds = [type(e) for e in events if not type(e).__name__ == "Activity"]
    assert kinds[1:] == [PauseStart, SpeechResumed, PauseStart, UtteranceEnd]
    pause, end = [e for e in events if isinstance(e, (PauseStart, UtteranceEnd))][1:]
    assert (pause.start_sample, pause.end_sample) == (end.start_sample, end.end_sample)
    assert np.array_equal(pause.segment, end.segment)


def test_speculation_committed_at_the_end_equals_the_plain_answer_and_comes_sooner():
    audio = _audio((0.5, False), (1.0, True), (1.5, False))
    plain_session, plain_gen, plain = _run(audio, 0.0)
    spec_session, spec_gen, spec = _run(audio, 150.0)
    assert _answer(spec) == _answer(plain)
    assert np.array_equal(spec_gen.starts[0], plain_gen.starts[0])
    counters = spec_session.counters
    assert (counters["speculations_started"], counters["speculations_committed"],
            counters["speculations_dropped"]) == (1, 1, 0)
    # the held answer is emitted at the utterance end, in the same chunk as `thinking`
    t_think = next(e[1] for e in spec.kinds("state") if e[2] == "thinking")
    assert spec.kinds("audio")[0][1] == t_think
    assert plain.kinds("audio")[0][1] > t_think  # one generator step later at least
    assert "speculations_started" not in plain_session.counters


def test_speculation_dropped_when_the_user_goes_on_and_nothing_leaks():
    # a 250 ms pause inside the question: speculated on (150 ms), then speech resumes
    audio = _audio((0.5, False), (1.0, True), (0.25, False), (0.6, True), (1.5, False))
    plain_session, plain_gen, plain = _run(audio, 0.0)
    spec_session, spec_gen, spec = _run(audio, 150.0)
    counters = spec_session.counters
    assert (counters["speculations_started"], counters["speculations_dropped"],
            counters["speculations_committed"]) == (2, 1, 1)
    assert spec_gen.cancels == 1 and len(spec_gen.starts) == 2
    assert len(spec_gen.starts[0]) < len(spec_gen.starts[1])  # the first guess was cut
    assert np.array_equal(spec_gen.starts[1], plain_gen.starts[0])  # the whole question
    assert _answer(spec) == _answer(plain)  # nothing of the dropped guess was emitted
    t_think = next(e[1] for e in spec.kinds("state") if e[2] == "thinking")
    assert all(e[1] >= t_think for e in spec.log if e[0] in ("audio", "text"))


def test_speculation_must_leave_time_before_the_utterance_end():
    with pytest.raises(ValueError, match="speculate_after_ms"):
        VadConfig(min_silence_ms=400, speculate_after_ms=400)
    with pytest.raises(ValueError, match="speculate_after_ms must be >= 0"):
        VadConfig(speculate_after_ms=-1)


def test_real_model_speculative_answer_equals_the_plain_one(default_model):
    """The default model, silero VAD, an espeak-ng question with a 300 ms pause before its
    last word: with speculation the pause is guessed on and dropped, the end committed,
    and the published answer equals the one without speculation, sample for sample."""
    from a2llm_ros.tools.data.pause_fixture import paused_question
    from a2llm_ros.generation import GenerationConfig, StreamingGenerator
    question = paused_question("What is your name?", 300.0)
    from a2llm_ros.engines.torch_backend import TorchBackend
    answers, counters = [], []
    for speculate_ms in (0.0, 200.0):
        rec = Recorder()
        cfg = GenerationConfig(greedy=True, max_speech_tokens=50)
        backend = TorchBackend(default_model)
        session = ConversationSession(lambda: StreamingGenerator(backend, cfg), rec,
                                      TurnConfig(), VadConfig(speculate_after_ms=speculate_ms))
        driver = Driver(session, rec)
        driver.feed(question.audio)
        driver.silence(4.0)  # one generator step per 32 ms chunk: let the answer finish
        answers.append(_answer(rec))
        counters.append(dict(session.counters))
    plain, spec = answers
    assert plain[1] and plain[1][-1][2], "no answer text"  # (turn, text, final)
    assert spec == plain
    # the 300 ms pause was guessed on and dropped, the end committed
    assert (counters[1]["speculations_started"], counters[1]["speculations_dropped"],
            counters[1]["speculations_committed"]) == (2, 1, 1)


def test_turn_bench_counts_false_cuts_and_endpointing_in_audio_time():
    """`python -m a2llm_ros.tools.bench.turns` figures on one question with a 300 ms pause
    (silero VAD): 600 ms of silence waits for the true end, 250 ms cuts the question."""
    from a2llm_ros.tools.bench.turns import measure
    from a2llm_ros.tools.data.pause_fixture import paused_question
    questions = [paused_question("What is your name?", 300.0)]
    plain = measure(questions, {}, WaveGenerator)
    assert plain["false_cut_pct"] == 0.0 and 600.0 <= plain["endpoint_ms_p50"] <= 700.0
    assert plain["speculations_started"] == 0
    spec = measure(questions, {"speculate_after_ms": 200.0}, WaveGenerator)
    assert spec["false_cut_pct"] == 0.0 and spec["endpoint_ms_p50"] == plain["endpoint_ms_p50"]
    assert (spec["speculations_committed"], spec["speculations_dropped"]) == (1, 1)
    eager = measure(questions, {"min_silence_ms": 250.0, "speculate_after_ms": 200.0},
                    WaveGenerator)
    assert eager["false_cut_pct"] == 100.0


class ConstantHead:
    """An end-of-turn head that always says ``p``."""

    threshold = 0.5

    def __init__(self, p):
        self.p, self.calls = p, 0

    def probability(self, hidden):
        self.calls += 1
        return self.p


class HiddenWaveGenerator(WaveGenerator):
    prompt_hidden = np.zeros(4, np.float32)


def test_end_of_turn_head_commits_at_the_pause_or_leaves_it_to_the_silence():
    audio = _audio((0.5, False), (1.0, True), (1.5, False))
    results = {}
    for p in (0.9, 0.1):
        gen, rec, head = HiddenWaveGenerator(), Recorder(), ConstantHead(p)
        vad = VadConfig(**SPEC, speculate_after_ms=150, end_of_turn=True)
        session = ConversationSession(lambda: gen, rec, TurnConfig(), vad,
                                      vad_backend=AmplitudeBackend(), end_of_turn=head)
        Driver(session, rec).feed(audio)
        think = next(e for e in rec.kinds("state") if e[2] == "thinking")
        results[p] = (think[1], think[4], dict(session.counters), _answer(rec)[1:], head.calls)
    early, late = results[0.9], results[0.1]
    assert early[1] == "end_of_turn" and late[1] == "utterance_end"
    # committed at the speculation point (150 ms of silence), not after min_silence (400 ms)
    assert late[0] - early[0] >= (400 - 150 - 32) * SAMPLE_RATE / 1000
    assert early[2]["end_of_turn_commits"] == 1 and late[2]["end_of_turn_commits"] == 0
    assert early[3] == late[3]  # the same answer (text, audio, motion)
    assert early[4] == late[4] == 1
    with pytest.raises(ValueError, match="end_of_turn needs speculate_after_ms"):
        VadConfig(end_of_turn=True)


def test_a_pause_wrongly_taken_for_the_end_is_stopped_and_the_whole_question_answered():
    """The head takes a 250 ms pause inside the question for its end (a false cut): the
    answer goes public, the user goes on, barge-in stops it within 200 ms of the voice
    coming back, and the next answer is to the whole question (the samples a run
    without speculation answers)."""
    audio = _audio((0.5, False), (1.0, True), (0.25, False), (0.6, True), (1.5, False))
    _, plain_gen, _ = _run(audio, 0.0)
    gen, rec = HiddenWaveGenerator(), Recorder()
    vad = VadConfig(**SPEC, speculate_after_ms=150, end_of_turn=True)
    session = ConversationSession(lambda: gen, rec, TurnConfig(barge_in="stop"), vad,
                                  vad_backend=AmplitudeBackend(), end_of_turn=ConstantHead(0.9))
    Driver(session, rec).feed(audio)
    resumed = int(1.75 * SAMPLE_RATE)  # the voice comes back
    states = [(e[2], e[4]) for e in rec.kinds("state")]
    assert states[:4] == [("listening", "speech_start"), ("thinking", "end_of_turn"),
                          ("speaking", "first_output"), ("interrupted", "question_continued")]
    assert states[4:7] == [("listening", "question_continued"), ("thinking", "end_of_turn"),
                           ("speaking", "first_output")]
    t_stop = next(e[1] for e in rec.kinds("state") if e[2] == "interrupted")
    assert 0 < t_stop - resumed <= 0.2 * SAMPLE_RATE
    early_turn = rec.kinds("state")[1][3]
    assert all(e[1] <= t_stop for e in rec.log if e[0] == "audio" and e[2] == early_turn)
    assert len(gen.starts) == 2 and np.array_equal(gen.starts[1], plain_gen.starts[0])
    counters = session.counters
    assert (counters["end_of_turn_commits"], counters["end_of_turn_rejoins"]) == (2, 1)


@pytest.mark.parametrize("gap_s, joins", [(0.25, True), (0.45, False)])
def test_detector_rejoins_only_speech_that_comes_back_before_min_silence(gap_s, joins):
    cfg = VadConfig(**SPEC, speculate_after_ms=150)
    det = TurnDetector(cfg, StreamingVad(cfg, AmplitudeBackend()))

    def feed(audio):
        return [e for i in range(0, len(audio), CHUNK) for e in det.process(audio[i:i + CHUNK])]
    feed(_audio((0.3, False), (1.0, True), (0.16, False)))  # a PauseStart has been emitted
    det.end_utterance()  # the session takes it for the end
    feed(_audio((gap_s - 0.16, False), (0.1, True)))
    assert det.can_rejoin is joins and det.rejoin() is joins
    events = feed(_audio((0.5, True), (0.5, False)))
    end = next(e for e in events if isinstance(e, UtteranceEnd))
    first_onset = int(0.3 * SAMPLE_RATE)
    assert (end.start_sample <= first_onset) is joins  # the whole question, or its tail


def test_end_of_turn_head_file_is_validated_and_the_shipped_one_loads(tmp_path, default_model):
    import json

    from a2llm_ros.checkpoint_files import DEFAULT_CHECKPOINT
    from a2llm_ros.conversation.end_of_turn import HEAD_FILE, EndOfTurnHead, load_end_of_turn
    head = load_end_of_turn(DEFAULT_CHECKPOINT)
    assert head is not None and 0.5 <= head.threshold < 1.0
    assert load_end_of_turn(str(tmp_path)) is None  # no file: no head
    head.check_model(default_model)  # reads the default model's prompt tail
    assert head.positions == default_model.prompt(1).tail
    good = EndOfTurnHead(np.zeros(3), np.ones(3), np.array([1.0, 0, 0]), 0.0, 0.6)
    assert good.probability([0, 0, 0]) == pytest.approx(0.5)
    assert good.probability([10, 0, 0]) > 0.99
    assert good.probability([[10, 0, 0], [0, 0, 0]]) == pytest.approx(0.5)  # the last row
    with pytest.raises(ValueError, match="last 1 prompt positions \\(3 values each\\), got 2"):
        good.probability([1, 2])
    with pytest.raises(ValueError, match="hidden size 256"):
        good.check_model(default_model)
    two = EndOfTurnHead(np.zeros(4), np.ones(4), np.array([0, 0, 1.0, 0]), 0.0, 0.6,
                        positions=2)
    assert two.probability([[9, 9], [5, 0], [0, 0]]) == pytest.approx(0.5)  # last two rows
    assert two.probability([[0, 0], [5, 0], [0, 0]]) == two.probability([[5, 0], [0, 0]])
    with pytest.raises(ValueError, match="last 2 prompt positions"):
        two.probability([0, 0])
    old = good.to_dict()
    del old["positions"]  # a head written before positions existed reads the last one
    (tmp_path / HEAD_FILE).write_text(json.dumps(old))
    assert load_end_of_turn(str(tmp_path)).positions == 1
    (tmp_path / HEAD_FILE).write_text(json.dumps(dict(good.to_dict(), positions=2)))
    with pytest.raises(ValueError, match="positions that do not divide"):
        load_end_of_turn(str(tmp_path))
    bad = dict(good.to_dict(), std=[1.0, 0.0, 1.0])
    (tmp_path / HEAD_FILE).write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="non-positive"):
        load_end_of_turn(str(tmp_path))
    (tmp_path / HEAD_FILE).write_text(json.dumps(dict(good.to_dict(), pad_ms=-96.0)))
    with pytest.raises(ValueError, match="negative pad_ms"):
        load_end_of_turn(str(tmp_path))
    (tmp_path / HEAD_FILE).write_text(json.dumps({"mean": [0.0]}))
    with pytest.raises(ValueError, match="not an end-of-turn head"):
        load_end_of_turn(str(tmp_path))


def test_shipped_head_answers_early_without_cutting_a_paused_question(default_model):
    """The default checkpoint's head with config/fast_turns.yaml on the held-out voice, six
    fixture questions (pauses of 300-600 ms inside): most ends taken ~100 ms after the
    speech, not 800 (the fallback); a pause taken for the end at most once, and then the
    whole question is answered."""
    from a2llm_ros.tools.bench.turns import measure, vad_overrides
    from a2llm_ros.conversation.end_of_turn import load_end_of_turn
    from a2llm_ros.tools.data.pause_fixture import PAUSES_MS, paused_question
    from a2llm_ros.tools.data.qa_text import QA_PAIRS
    from a2llm_ros.generation import GenerationConfig, StreamingGenerator
    from a2llm_ros.engines.torch_backend import TorchBackend
    head = load_end_of_turn(default_model.base_dir)
    cfg = GenerationConfig(greedy=True, max_speech_tokens=25)
    questions = [paused_question(p.question, PAUSES_MS[i % len(PAUSES_MS)])
                 for i, p in enumerate(QA_PAIRS[:6])]
    figures = measure(questions, vad_overrides(),
                      lambda: StreamingGenerator(TorchBackend(default_model), cfg), head)
    print(figures)
    assert figures["false_cuts"] <= 1 and figures["whole_after_cut"] == figures["false_cuts"]
    assert figures["answered_after_end"] == 6 and figures["end_of_turn_commits"] >= 4
    assert figures["endpoint_ms_p50"] < 200.0


def test_node_refuses_end_of_turn_without_the_head_file(tmp_path):
    """`vad.end_of_turn: true` on a checkpoint without end_of_turn.json: configure fails
    naming the file (the node's configure reports the exception's text)."""
    from conftest import require_ros
    require_ros()
    import types

    from a2llm_ros.ros.a2llm_node import A2llmNode
    from a2llm_ros.ros.params import A2llmNodeConfig
    cfg = A2llmNodeConfig(vad=VadConfig(speculate_after_ms=200.0, end_of_turn=True))
    backend = types.SimpleNamespace(model=types.SimpleNamespace(base_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="end_of_turn.json"):
        A2llmNode._end_of_turn_head(None, cfg, backend)
    assert A2llmNode._end_of_turn_head(None, A2llmNodeConfig(), backend) is None
