"""Tests for the ROS-free conversation session (fake generator, scripted VAD)."""
import itertools
import threading
import time

import numpy as np
import pytest
from conftest import wait_for

from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.conversation.session import (SAMPLES_PER_FRAME, ConversationSession,
                                            SessionSink, TurnConfig)
from a2llm_ros.conversation.vad import VadConfig
from a2llm_ros.events import AudioEvent, EndEvent, FlameEvent, TextEvent
from a2llm_ros.flame.layout import FRAME_DIM

CHUNK = 512


class FakeGenerator:
    """One 200 ms segment (text, 3200 samples of 0.1, 5 frames of 1.0) per step."""

    def __init__(self, n_segments=5, endless=False, crash_at=None, crash_on_start=False):
        self.n_segments, self.endless = n_segments, endless
        self.crash_at, self.crash_on_start = crash_at, crash_on_start
        self.starts, self.cancels, self.resets = [], 0, 0
        self.active, self.k = False, 0

    def start(self, wave, turn_id):
        if self.crash_on_start:
            self.crash_on_start = False
            raise RuntimeError("prefill exploded")
        self.starts.append(len(wave))
        self.active, self.k = True, 0

    def step(self):
        if not self.active:
            return []
        if self.crash_at is not None and self.k == self.crash_at:
            self.crash_at = None
            raise RuntimeError("decoder exploded")
        k = self.k
        events = [TextEvent(0, f"w{k} ", k),
                  AudioEvent(0, np.full(3200, 0.1, np.float32), SAMPLE_RATE, k * 0.2, k * 3200),
                  FlameEvent(0, np.ones((5, FRAME_DIM), np.float32), 25, k * 0.2, k * 5)]
        self.k += 1
        if self.k >= self.n_segments and not self.endless:
            self.active = False
            events.append(EndEvent(0, "eos", self.k * 5, self.k * 5))
        return events

    def cancel(self):
        self.cancels += 1
        self.active = False

    def reset(self):
        self.resets += 1
        self.active = False


class AmplitudeBackend:
    name = "amp"

    def reset(self):
        pass

    def __call__(self, chunk):
        return 1.0 if np.abs(chunk).max() > 0.5 else 0.0


class Recorder(SessionSink):
    def __init__(self):
        self.log = []
        self.now = 0  # sample clock of the driver, for latency checks

    def on_state(self, state, turn_id, reason):
        self.log.append(("state", self.now, state, turn_id, reason))

    def on_text(self, turn_id, text, final):
        self.log.append(("text", self.now, turn_id, text, final))

    def on_audio(self, turn_id, samples, start_sample):
        self.log.append(("audio", self.now, turn_id, samples.copy(), start_sample))

    def on_flame(self, turn_id, frames, start_frame, source):
        self.log.append(("flame", self.now, turn_id, frames.copy(), start_frame, source))

    def on_error(self, turn_id, message):
        self.log.append(("error", self.now, turn_id, message))

    def kinds(self, kind):
        return [e for e in self.log if e[0] == kind]

    def states(self):
        return [(e[2], e[4]) for e in self.kinds("state")]


def _make(gen, output_rate=SAMPLE_RATE, **turn_kwargs):
    rec = Recorder()
    vad_cfg = VadConfig(min_speech_ms=150, min_silence_ms=400, speech_pad_ms=100)
    session = ConversationSession(lambda: gen, rec, TurnConfig(**turn_kwargs), vad_cfg,
                                  vad_backend=AmplitudeBackend(), output_rate=output_rate)
    return session, rec


def _audio(*parts):
    """parts: (seconds, loud?) pairs -> 16 kHz wave."""
    return np.concatenate([np.full(int(s * SAMPLE_RATE), 0.9 if loud else 0.0, np.float32)
                           for s, loud in parts])


class Driver:
    """Feeds audio in real-time order: submit, step, tick the 25 fps clock."""

    def __init__(self, session, rec):
        self.session, self.rec, self.sample = session, rec, 0

    def feed(self, audio):
        for i in range(0, len(audio), CHUNK):
            piece = audio[i:i + CHUNK]
            self.rec.now = self.sample
            self.session.submit_audio(piece, self.sample)
            self.sample += len(piece)
            self.session.step()
            self.session.tick(self.sample // SAMPLES_PER_FRAME)

    def silence(self, seconds):
        self.feed(_audio((seconds, False)))


def test_state_sequence_and_outputs():
    gen = FakeGenerator(n_segments=5)
    session, rec = _make(gen)
    drv = Driver(session, rec)
    drv.feed(_audio((0.5, False), (1.0, True)))
    drv.silence(3.0)
    assert rec.states() == [("listening", "speech_start"), ("thinking", "utterance_end"),
                            ("speaking", "first_output"), ("idle", "eos")]
    assert {e[3] for e in rec.kinds("state")} == {1}
    assert len(gen.starts) == 1 and 1.0 * SAMPLE_RATE <= gen.starts[0] <= 1.3 * SAMPLE_RATE
    audio = rec.kinds("audio")
    assert [e[4] for e in audio] == [0, 3200, 6400, 9600, 12800]
    texts = rec.kinds("text")
    assert texts[-1][3:] == ("w0 w1 w2 w3 w4 ", True)
    # Listening frames (absolute) + speech frames (anchor + turn frame) tile the clock.
    anchor = None
    covered = []
    for e in rec.kinds("flame"):
        if e[5] == "listening":
            covered += list(range(e[4], e[4] + len(e[3])))
        else:
            anchor = anchor if anchor is not None else session_anchor(rec)
            covered += list(range(anchor + e[4], anchor + e[4] + len(e[3])))
    covered.sort()
    assert covered == list(range(covered[-1] + 1))
    assert session.state == "idle" and session.queue_depth == 0


def session_anchor(rec):
    """Anchor = first listening frame missing after speaking began."""
    listening = sorted(f for e in rec.kinds("flame") if e[5] == "listening"
                       for f in range(e[4], e[4] + len(e[3])))
    gaps = [a + 1 for a, b in zip(listening, listening[1:]) if b != a + 1]
    return gaps[0]


def test_speech_motion_cross_faded_in():
    gen = FakeGenerator(n_segments=3)
    session, rec = _make(gen)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(2.0)
    speech = np.concatenate([e[3] for e in rec.kinds("flame") if e[5] == "speech"])
    assert speech[0, 0] < 0.5 and speech[4, 0] < 1.0 and np.all(speech[5:] == 1.0)
    after = [e for e in rec.kinds("flame") if e[5] == "listening" and e[1] > 1.0 * SAMPLE_RATE
             and e[4] > session.listening.frame_count - 10]
    assert after  # listening resumed after the answer


def test_barge_in_stop_cuts_output_within_a_chunk():
    gen = FakeGenerator(endless=True)
    session, rec = _make(gen, barge_in="stop", barge_in_min_speech_ms=200)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(1.5)
    assert session.state == "speaking"
    barge_at = drv.sample
    drv.feed(_audio((0.6, True)))
    interrupted = [e for e in rec.kinds("state") if e[2] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0][4] == "barge_in"
    t_int = interrupted[0][1]
    assert t_int - barge_at <= 0.2 * SAMPLE_RATE + CHUNK
    old_turn = interrupted[0][3]
    pos = rec.log.index(interrupted[0])
    late = [e for e in rec.log[pos:]
            if e[0] == "audio" or (e[0] == "flame" and e[5] == "speech")]
    assert late == [] and gen.cancels >= 1
    assert any(e[0] == "audio" for e in rec.log[:pos])
    assert rec.states()[-1] == ("listening", "barge_in")
    drv.silence(1.0)
    gen.endless = False
    drv.silence(3.0)
    new_turns = {e[3] for e in rec.kinds("state") if e[2] == "thinking"}
    assert max(new_turns) > old_turn and len(gen.starts) == 2
    # listening frames resumed right after the interruption
    assert any(e[5] == "listening" and e[1] == t_int for e in rec.kinds("flame"))


def test_barge_in_duck_lowers_gain_on_short_speech():
    gen = FakeGenerator(endless=True)
    session, rec = _make(gen, barge_in="duck", duck_gain=0.25, barge_in_min_speech_ms=300)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(1.0)
    drv.feed(_audio((0.1, True)))   # shorter than the confirmation time
    drv.silence(0.5)
    peaks = [float(e[3].max()) for e in rec.kinds("audio")]
    assert pytest.approx(0.025) in peaks and peaks[-1] == pytest.approx(0.1)
    assert "interrupted" not in [s for s, _ in rec.states()]
    drv.feed(_audio((0.5, True)))   # confirmed
    assert "interrupted" in [s for s, _ in rec.states()]


def test_barge_in_off_ignores_user_while_speaking():
    gen = FakeGenerator(n_segments=40)
    session, rec = _make(gen, barge_in="off")
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(0.7)
    drv.feed(_audio((1.0, True), (1.0, False)))
    drv.silence(8.0)
    assert "interrupted" not in [s for s, _ in rec.states()]
    assert len(gen.starts) == 1 and session.state == "idle"


@pytest.mark.parametrize("where", ["step", "start"])
def test_generator_crash_recovers(where):
    gen = FakeGenerator(n_segments=3, crash_at=1 if where == "step" else None,
                        crash_on_start=where == "start")
    session, rec = _make(gen)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(1.5)
    errors = rec.kinds("error")
    assert len(errors) == 1 and "exploded" in errors[0][3]
    assert rec.states()[-1] == ("idle", "generator_error")
    assert session.counters["generator_errors"] == 1
    drv.feed(_audio((1.0, True)))
    drv.silence(3.0)
    assert rec.states()[-1] == ("idle", "eos")
    assert len(rec.kinds("error")) == 1


def test_max_response_caps_the_answer():
    gen = FakeGenerator(endless=True)
    session, rec = _make(gen, max_response_s=1.0)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(3.0)
    total = sum(len(e[3]) for e in rec.kinds("audio"))
    assert total == SAMPLE_RATE
    assert rec.states()[-1] == ("idle", "max_response") and gen.cancels == 1


def test_hundred_turns_without_growth():
    gen = FakeGenerator(n_segments=2)
    session, rec = _make(gen)
    drv = Driver(session, rec)
    for _ in range(100):
        drv.feed(_audio((0.3, True)))
        drv.silence(1.2)
        assert session.state == "idle"
        assert session.queue_depth == 0
        assert session.detector.buffered_samples < SAMPLE_RATE
        rec.log.clear()
    assert session.turn_id == 100 and len(gen.starts) == 100
    assert session.speech_anchor_frame is None
    assert dict(session.counters) == {}


def test_queue_bounded_with_drop_policy():
    session, _ = _make(FakeGenerator(), audio_queue_max=4, queue_drop_policy="oldest")
    for i in range(10):
        assert session.submit_audio(np.zeros(CHUNK, np.float32), i * CHUNK)
    assert session.queue_depth == 4 and session.counters["dropped_audio_chunks"] == 6
    newest, _ = _make(FakeGenerator(), audio_queue_max=4, queue_drop_policy="newest")
    results = [newest.submit_audio(np.zeros(CHUNK, np.float32)) for _ in range(6)]
    assert results == [True] * 4 + [False] * 2
    session.process_audio()
    assert session.queue_depth == 0 and session.counters["audio_gaps"] == 1


def test_worker_thread_and_tick_from_another_thread():
    gen = FakeGenerator(n_segments=3)
    session, rec = _make(gen)
    stop = threading.Event()

    def work():  # a worker thread as ConversationRuntime runs it
        while not stop.is_set():
            if not session.step():
                stop.wait(0.001)
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    audio = _audio((1.0, True), (2.5, False))
    try:
        for i in range(0, len(audio), CHUNK):
            session.submit_audio(audio[i:i + CHUNK], i)
            session.tick((i + CHUNK) // SAMPLES_PER_FRAME)
            time.sleep(0.001)  # sleep-ok: interleaves with the worker (what is tested)
        frames = itertools.count(len(audio) // SAMPLES_PER_FRAME + 1)

        def answered():  # the clock advances one frame per poll (simulated time)
            session.tick(next(frames))
            return (session.state == "idle" and "speaking" in [s for s, _ in rec.states()]
                    and not session.queue_depth)
        wait_for(answered, 5.0, "the answer to end and the worker to drain the audio",
                 poll=0.005)
    finally:
        stop.set()
        worker.join(2.0)
    assert not worker.is_alive()
    assert rec.states()[-1] == ("idle", "eos") and session.queue_depth == 0


def test_user_still_talking_when_answer_ends_starts_next_turn():
    gen = FakeGenerator(n_segments=2)
    # confirmation (600 ms) longer than min_speech: speech during the answer is not a barge-in
    session, rec = _make(gen, barge_in="duck", barge_in_min_speech_ms=600)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(0.45)
    assert session.state in ("thinking", "speaking")
    drv.feed(_audio((0.5, True)))
    drv.silence(1.5)
    assert ("listening", "speech_start") in rec.states()[3:]
    assert len(gen.starts) == 2


def test_reset_clears_everything():
    gen = FakeGenerator(endless=True)
    session, rec = _make(gen)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(1.0)
    session.submit_audio(np.zeros(CHUNK, np.float32))
    session.reset()
    assert session.state == "idle" and session.queue_depth == 0 and gen.cancels == 1
    assert rec.states()[-1] == ("idle", "reset")


def test_with_real_streaming_generator():
    torch = pytest.importorskip("torch")
    from a2llm_ros.checkpoint import init_model
    from a2llm_ros.config import A2LLMConfig
    from a2llm_ros.generation import GenerationConfig, StreamingGenerator
    torch.set_num_threads(1)
    from a2llm_ros.engines.torch_backend import TorchBackend
    model = init_model(A2LLMConfig.preset("tiny"), seed=4)
    gen = StreamingGenerator(TorchBackend(model), GenerationConfig(max_speech_tokens=20))
    session, rec = _make(gen)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    for _ in range(200):
        drv.silence(0.1)
        if rec.states() and rec.states()[-1][0] == "idle":
            break
    states = [s for s, _ in rec.states()]
    assert states[:3] == ["listening", "thinking", "speaking"] and states[-1] == "idle"
    assert rec.kinds("error") == []
    audio = rec.kinds("audio")
    n_samples = sum(len(e[3]) for e in audio)
    n_frames = sum(len(e[3]) for e in rec.kinds("flame") if e[5] == "speech")
    assert n_samples == n_frames * SAMPLES_PER_FRAME > 0
    assert [e[2] for e in audio] == [1] * len(audio)


def test_core_imports_no_torch_or_ros():
    import subprocess
    import sys
    code = ("import sys; import a2llm_ros.conversation.session as s, a2llm_ros.retarget, "
            "a2llm_ros.audio.frontend; s.ConversationSession(lambda: None); "
            "bad = [m for m in ('torch', 'rclpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_turn_config_validation():
    with pytest.raises(ValueError):
        TurnConfig(barge_in="maybe")
    with pytest.raises(ValueError):
        TurnConfig(queue_drop_policy="random")
    assert TurnConfig.preset("tiny").barge_in == "stop"


def test_listening_resumes_at_answer_end_when_worker_lags_the_clock():
    """The worker notices the end of an answer late (busy, or starved of the GIL while
    the clock ticks on): listening motion still starts right after the answer's last
    frame, so the 25 fps stream has no hole."""
    gen = FakeGenerator(n_segments=2)
    session, rec = _make(gen)
    drv = Driver(session, rec)
    drv.feed(_audio((0.3, False), (1.0, True)))
    while session.state != "speaking" or not session._turn.gen_done:
        drv.silence(0.05)
    anchor = session.speech_anchor_frame
    end_frame = anchor + 10                       # 2 segments x 5 frames
    for frame in range(drv.sample // SAMPLES_PER_FRAME, end_frame + 6):
        session.tick(frame)                       # the clock runs on ...
    session.step()                                # ... the worker sees the end late
    assert session.state == "idle"
    session.tick(end_frame + 7)
    covered = []
    for e in rec.kinds("flame"):
        first = e[4] if e[5] == "listening" else anchor + e[4]
        covered += range(first, first + len(e[3]))
    assert sorted(covered) == list(range(end_frame + 8))


def test_barge_in_on_a_lagging_answer_leaves_no_hole():
    """The generator runs slower than real time, so its speech motion ends before the
    clock when the user barges in: listening motion resumes where the speech motion
    stopped (a few frames early; the output drops the overlap), not at the clock."""
    gen = FakeGenerator(n_segments=5, endless=True)
    session, rec = _make(gen, barge_in="stop", barge_in_min_speech_ms=100)
    drv = Driver(session, rec)
    drv.feed(_audio((0.3, False), (1.0, True)))
    while session.state != "speaking":
        drv.silence(0.05)
    anchor = session.speech_anchor_frame
    emitted = session._turn.n_frames
    # The clock runs 0.4 s past the speech motion emitted so far, then the user speaks
    # (the session catches up at most ``max_catchup_frames``, 1 s, of listening motion).
    for frame in range(drv.sample // SAMPLES_PER_FRAME, anchor + emitted + 10):
        session.tick(frame)
    drv.sample = (anchor + emitted + 10) * SAMPLES_PER_FRAME
    loud = _audio((0.3, True))
    for i in range(0, len(loud), CHUNK):
        session.submit_audio(loud[i:i + CHUNK], drv.sample)
        drv.sample += CHUNK
        session.process_audio()
        if session.state == "listening":
            break
    assert session.state == "listening" and session.counters["barge_ins"] == 1
    session.tick(drv.sample // SAMPLES_PER_FRAME)
    speech_end = anchor + emitted
    covered = set()
    for e in rec.kinds("flame"):
        first = e[4] if e[5] == "listening" else anchor + e[4]
        if e[5] == "speech" and first + len(e[3]) > speech_end:
            continue  # emitted after the clock jump (not in this turn's plan)
        covered.update(range(first, first + len(e[3])))
    assert set(range(drv.sample // SAMPLES_PER_FRAME + 1)) <= covered


# ----------------------------------------------------------------------------- output rate

TONE_HZ = 440.0


class CodecGenerator(FakeGenerator):
    """Like FakeGenerator, but the audio is a continuous 440 Hz tone at the codec's ``rate``
    in uneven pieces (a codec with lookahead holds some back; the rest comes with the end);
    ``motion=False`` emits no FLAME at all."""

    def __init__(self, rate, n_segments=5, endless=False, motion=True, seed=0):
        super().__init__(n_segments=n_segments, endless=endless)
        self.rate, self.motion = rate, motion
        self.rng = np.random.default_rng(seed)
        self.sent = 0

    def start(self, wave, turn_id):
        super().start(wave, turn_id)
        self.sent = 0

    def tone(self, first, end):
        t = np.arange(first, end) / self.rate
        return (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)

    def _audio(self, upto):
        """Audio up to sample ``upto``, in one to three uneven events."""
        events = []
        cuts = sorted(self.rng.integers(self.sent, upto + 1, size=2).tolist()) + [upto]
        for cut in cuts:
            if cut > self.sent:
                events.append(AudioEvent(0, self.tone(self.sent, cut), self.rate,
                                         self.sent / self.rate, self.sent))
                self.sent = cut
        return events

    def step(self):
        if not self.active:
            return []
        k, per_segment = self.k, self.rate // 5                  # 200 ms of audio
        due = (k + 1) * per_segment
        events = [TextEvent(0, f"w{k} ", k)]
        events += self._audio(due - int(self.rng.integers(0, per_segment // 2)))
        if self.motion:
            events.append(FlameEvent(0, np.ones((5, FRAME_DIM), np.float32), 25, k * 0.2, k * 5))
        self.k += 1
        if self.k >= self.n_segments and not self.endless:
            self.active = False
            events += self._audio(due)
            events.append(EndEvent(0, "eos", self.k * 5, self.k * 5))
        return events


def _speech(rec, turn_id=None):
    """(concatenated sink audio, [(start, n)]) of one turn (default: all)."""
    audio = [e for e in rec.kinds("audio") if turn_id is None or e[2] == turn_id]
    if not audio:
        return np.zeros(0, np.float32), []
    return np.concatenate([e[3] for e in audio]), [(e[4], len(e[3])) for e in audio]


@pytest.mark.parametrize("codec_rate,output_rate", [(24000, 16000), (16000, 24000),
                                                    (24000, 24000), (16000, 16000)])
def test_codec_audio_at_the_output_rate_exact_and_continuous(codec_rate, output_rate):
    soxr = pytest.importorskip("soxr")
    gen = CodecGenerator(codec_rate, n_segments=8)
    session, rec = _make(gen, output_rate=output_rate)
    assert session.output_samples_per_frame == output_rate // 25
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(3.0)
    assert rec.states()[-1] == ("idle", "eos")
    audio, pieces = _speech(rec)
    # Contiguous on the turn's output timeline, each piece where the last ended ...
    assert [s for s, _ in pieces] == list(np.cumsum([0] + [n for _, n in pieces[:-1]]))
    # ... and exact over the turn: 40 frames of motion = 40 x rate / 25 samples.
    n_frames = sum(len(e[3]) for e in rec.kinds("flame") if e[5] == "speech")
    assert n_frames == 40 and len(audio) == n_frames * output_rate // 25
    whole = gen.tone(0, gen.sent)
    if codec_rate == output_rate:
        np.testing.assert_array_equal(audio, whole)
    else:
        np.testing.assert_allclose(audio, soxr.resample(whole, codec_rate, output_rate),
                                   atol=1e-5)
    edge = output_rate // 100   # the tone's own abrupt start and stop ring; joins must not
    step = 1.1 * 0.5 * 2 * np.pi * TONE_HZ / output_rate
    assert np.abs(np.diff(audio[edge:-edge])).max() < step


def test_playback_end_counts_frames_at_the_output_rate():
    """Audio without motion: the turn lasts its audio (at 24 kHz, 960 samples a frame)."""
    gen = CodecGenerator(16000, n_segments=5, motion=False)
    session, rec = _make(gen, output_rate=24000)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    while not (session._turn is not None and session._turn.gen_done):
        drv.silence(0.05)
    assert session.state == "speaking"
    audio, _ = _speech(rec)
    assert len(audio) == 24000                       # 1.0 s = 25 frames at 960
    end_frame = session.speech_anchor_frame + 25
    session.tick(end_frame - 2)
    session.step()
    assert session.state == "speaking"
    session.tick(end_frame - 1)
    session.step()
    assert rec.states()[-1] == ("idle", "eos")


@pytest.mark.parametrize("codec_rate,output_rate", [(16000, 24000), (24000, 16000)])
def test_max_response_cuts_at_the_output_rate(codec_rate, output_rate):
    gen = CodecGenerator(codec_rate, endless=True)
    session, rec = _make(gen, output_rate=output_rate, max_response_s=1.0)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(3.0)
    audio, _ = _speech(rec)
    assert len(audio) == output_rate
    assert rec.states()[-1] == ("idle", "max_response") and gen.cancels == 1


def test_barge_in_discards_the_turns_resampler():
    gen = CodecGenerator(24000, endless=True)
    session, rec = _make(gen, output_rate=16000, barge_in="stop",
                         barge_in_min_speech_ms=200)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(1.0)
    assert session.state == "speaking" and session._turn.audio.resampling
    drv.feed(_audio((0.6, True)))
    interrupted = [e for e in rec.kinds("state") if e[2] == "interrupted"]
    assert len(interrupted) == 1
    pos = rec.log.index(interrupted[0])
    assert not any(e[0] == "audio" for e in rec.log[pos:])   # no tail after the cut
    gen.endless, gen.n_segments = False, 5
    drv.silence(3.0)
    assert rec.states()[-1] == ("idle", "eos")
    second = interrupted[0][3] + 1
    audio, pieces = _speech(rec, second)
    assert pieces[0][0] == 0 and len(audio) == 25 * 640           # a fresh, exact turn


def test_output_rate_validated():
    for bad in (0, -24000, 24001, 10**7):
        with pytest.raises(ValueError):
            ConversationSession(lambda: None, output_rate=bad)


class ZeroRateGenerator(FakeGenerator):
    """Emits an audio event that claims a sample rate of 0 Hz."""

    def step(self):
        events = super().step()
        return [AudioEvent(0, e.samples, 0, 0.0, e.start_sample) if isinstance(e, AudioEvent)
                else e for e in events]


def test_malformed_audio_event_fails_the_turn_not_the_worker():
    gen = ZeroRateGenerator(n_segments=3)
    session, rec = _make(gen)
    drv = Driver(session, rec)
    drv.feed(_audio((1.0, True)))
    drv.silence(1.5)
    assert rec.states()[-1] == ("idle", "generator_error")
    assert "sample_rate" in rec.kinds("error")[0][3]
