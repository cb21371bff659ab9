"""Conversation turn logic, independent of ROS (run by the a2llm node).

States (reported through ``sink.on_state(state, turn_id, reason)``)::

    idle --user speech confirmed--> listening --utterance end--> thinking
    thinking --first audio/motion--> speaking --end + playback done--> idle
    speaking/thinking --barge-in--> interrupted --> listening (user talking)
    any generator exception --> on_error, then listening/idle ("generator_error")

Threading: the node's executor thread calls :meth:`ConversationSession.submit_audio`
(bounded queue; when full the oldest or newest chunk is dropped by
``TurnConfig.queue_drop_policy`` and counted) and :meth:`~ConversationSession.tick`
(25 fps frame clock; emits listening frames).  One worker thread calls
:meth:`~ConversationSession.step` in a loop (:mod:`a2llm_ros.conversation.runtime`):
it drains the audio queue through the VAD/end-pointer and advances the
generator.  Generator calls run outside the session lock; state changes and
sink callbacks run under it, so sink methods must be quick and must not call
back into the session.

Timing: the session never reads a wall clock.  Speech audio ``start_sample``
and speech motion ``start_frame`` are relative to the turn; turn frame 0 sits
at the absolute frame :attr:`ConversationSession.speech_anchor_frame` of the
tick clock (fixed when ``speaking`` is entered), i.e. absolute output sample
``anchor * output_rate / 25 + start_sample``.  Listening frames carry absolute
tick-clock frame numbers.  The turn stays ``speaking`` until the generator has
ended and the tick clock has passed the last speech frame (or the end of its
audio); listening motion then resumes with a cross-fade.  On ``interrupted``
the node must flush any audio/motion it has scheduled for that turn.

Output rate: speech audio reaches the sink at
:attr:`ConversationSession.output_rate` (a multiple of 25 Hz, so frame ``f``
starts at output sample ``f * output_rate / 25``).  Generator audio at another
rate (the speech codec's) is resampled per turn by one streaming resampler
(:class:`~a2llm_ros.conversation.resample.TurnAudio`, soxr): its held-back
tail comes out at the turn's end event, and it is dropped with the turn on a
cancel or barge-in.  ``start_sample`` is the turn's cumulative output count,
so the timeline stays exact over the whole answer; ``max_response_s`` and the
end of playback are counted at the output rate.

Speculation (``VadConfig.speculate_after_ms`` > 0): at a :class:`~.turns.PauseStart`
while listening, the answer to the utterance so far starts as a *private* turn:
the generator runs, its events are held and nothing reaches the sink (the state
stays ``listening``).  If the pause reaches ``min_silence_ms`` the utterance end
carries the same samples and the turn is committed: the state goes to
``thinking`` and the held events are emitted as a non-speculative turn would emit
them.  A :class:`~.turns.SpeechResumed` drops the private turn (cancelled); the
utterance goes on.  With ``VadConfig.end_of_turn`` and an
:class:`~.end_of_turn.EndOfTurnHead`, the head reads the private turn's prompt
hidden state right after its prefill and commits at once (reason
``end_of_turn``) when it takes the pause for the end; ``min_silence_ms`` stays
the fallback.  Counted in ``counters``: ``speculations_started``,
``speculations_committed``, ``speculations_dropped``, ``end_of_turn_commits``.
If the user speaks again after such a commit (before ``min_silence_ms`` of
silence), barge-in (``TurnConfig.barge_in`` not ``off``) stops the answer with
reason ``question_continued`` and the end-pointer continues the same utterance
(:meth:`~.turns.TurnDetector.rejoin`): the next answer is to the whole question
(counted in ``end_of_turn_rejoins``).

Barge-in (``TurnConfig.barge_in``): ``off`` ignores the user while the avatar
thinks or speaks (the end-pointer is reset afterwards, so the avatar's own
voice is not taken as a question); ``stop`` interrupts once the user has been
voiced for ``barge_in_min_speech_ms``; ``duck`` additionally scales the
emitted audio by ``duck_gain`` from the first voiced chunk until the
interruption is confirmed (or the voice stops, restoring gain 1).  Without
acoustic echo cancellation the avatar's own voice may trigger barge-in.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Tuple

import numpy as np

from a2llm_ros.configbase import ConfigBase, above, at_least, between
from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from a2llm_ros.events import AudioEvent, EndEvent, Event, FlameEvent, TextEvent
from a2llm_ros.conversation.listening import ListeningConfig, ListeningFace
from a2llm_ros.conversation.resample import Piece, TurnAudio, check_output_rate
from a2llm_ros.conversation.end_of_turn import EndOfTurnHead
from a2llm_ros.conversation.turns import (Activity, PauseStart, SpeechResumed, SpeechStart,
                                          TurnDetector, UtteranceEnd)
from a2llm_ros.conversation.vad import CHUNK_MS, StreamingVad, VadConfig

__all__ = ["TurnConfig", "SessionSink", "NullSink", "TurnGenerator",
           "ConversationSession", "STATES", "SAMPLES_PER_FRAME"]

STATES = ("idle", "listening", "thinking", "speaking", "interrupted")
BARGE_IN_MODES = ("off", "stop", "duck")
#: After a cancelled answer, listening motion restarts this many frames before the
#: end of the speech motion emitted (frames due but not yet published when flushed).
FLUSH_MARGIN_FRAMES = 5
#: Input gaps up to this many samples are filled with zeros; longer ones reset.
MAX_GAP_FILL = SAMPLE_RATE


@dataclasses.dataclass
class TurnConfig(ConfigBase):
    """Turn-taking settings."""

    #: User speech while the avatar thinks or speaks: ``off`` (ignored), ``stop``
    #: (interrupts the answer) or ``duck`` (lowers the voice, then interrupts).
    barge_in: str = "stop"
    #: Voiced user speech needed before a barge-in interrupts (ms); 96 ms = three
    #: 32 ms VAD decisions, so output stops well inside 200 ms of the onset.
    barge_in_min_speech_ms: float = 96.0
    #: ``duck``: gain applied to the avatar's voice while the user talks over it.
    duck_gain: float = 0.3
    #: Longest answer; audio and motion past it are cut and the turn ends (s).
    max_response_s: float = 30.0
    #: Microphone chunks queued for the worker at most (then one is dropped).
    audio_queue_max: int = 200
    #: Which chunk a full queue drops: ``oldest`` or ``newest``.
    queue_drop_policy: str = "oldest"
    #: At most this many listening frames are emitted per tick (clock jumps skip).
    max_catchup_frames: int = 25

    BOUNDS = {"barge_in_min_speech_ms": at_least(0.0), "duck_gain": between(0.0, 1.0),
              "max_response_s": above(0.0), "audio_queue_max": at_least(1),
              "max_catchup_frames": at_least(1)}

    def __post_init__(self):
        self.check_bounds()
        if self.barge_in not in BARGE_IN_MODES:
            raise ValueError(f"TurnConfig.barge_in must be one of {BARGE_IN_MODES}, "
                             f"got {self.barge_in!r}")
        if self.queue_drop_policy not in ("oldest", "newest"):
            raise ValueError("TurnConfig.queue_drop_policy must be 'oldest' or 'newest'")


class SessionSink:
    """Output interface; subclass and override (defaults do nothing)."""

    def on_state(self, state: str, turn_id: int, reason: str) -> None:
        """State change; ``reason`` says why (e.g. ``barge_in``, ``end``)."""

    def on_text(self, turn_id: int, text: str, final: bool) -> None:
        """Text delta (``final=False``) or the whole answer text (``final=True``)."""

    def on_audio(self, turn_id: int, samples: np.ndarray, start_sample: int) -> None:
        """float32 ``[n]`` speech at the session's ``output_rate`` starting at turn
        output sample ``start_sample``."""

    def on_flame(self, turn_id: int, frames: np.ndarray, start_frame: int,
                 source: str) -> None:
        """``frames`` [n, 58]; ``source`` 'speech' (turn frames) or 'listening'."""

    def on_error(self, turn_id: int, message: str) -> None:
        """A generator failure (the session has recovered)."""


NullSink = SessionSink


class TurnGenerator(Protocol):
    """What the session needs from ``generation.StreamingGenerator``.

    ``start`` begins the answer to ``question_wave`` as turn ``turn_id``;
    ``step()`` returns the next :mod:`a2llm_ros.events` (dispatched by type).
    """

    def start(self, question_wave: np.ndarray, turn_id: int) -> Any: ...

    def step(self) -> List[Event]: ...

    def cancel(self) -> None: ...

    def reset(self) -> None: ...


#: Counters of speculative answers (module docstring, "Speculation").
SPECULATION_COUNTERS = ("speculations_started", "speculations_committed",
                        "speculations_dropped", "end_of_turn_commits", "end_of_turn_rejoins")


@dataclasses.dataclass
class _Turn:
    """Book-keeping of the response being generated/played."""

    turn_id: int
    text: List[str] = dataclasses.field(default_factory=list)
    anchor: Optional[int] = None       # absolute frame of turn frame 0
    n_frames: int = 0                  # speech motion frames emitted
    n_samples: int = 0                 # speech audio samples emitted (output rate)
    #: Generator audio -> output rate (created at the turn's first audio).
    audio: Optional[TurnAudio] = None
    last_frame: Optional[np.ndarray] = None
    gen_done: bool = False
    end_reason: str = "end"
    #: Utterance waiting to be passed to ``generator.start`` (worker, no lock).
    question: Optional[np.ndarray] = None
    #: Private (speculative) turn: its events are held, not emitted, until commit.
    speculative: bool = False
    #: (start_sample, end_sample) of the utterance a speculative turn answers.
    span: Optional[Tuple[int, int]] = None
    held: List[Event] = dataclasses.field(default_factory=list)
    #: Committed by the end-of-turn head at a pause (the user may still go on).
    early: bool = False

    @property
    def held_end(self) -> bool:
        """The held events include the generator's end (a speculative turn steps no more)."""
        return any(isinstance(event, EndEvent) for event in self.held)


class ConversationSession:
    """Turn logic over a VAD end-pointer, a generator and a listening face.

    ``output_rate``: sample rate of the speech audio passed to the sink (Hz, a
    multiple of 25 in 8000..192000); generator audio at another rate is resampled.
    """

    def __init__(self, generator_factory: Callable[[], TurnGenerator],
                 sink: Optional[SessionSink] = None,
                 turn_config: Optional[TurnConfig] = None,
                 vad_config: Optional[VadConfig] = None,
                 listening_config: Optional[ListeningConfig] = None,
                 vad_backend=None, output_rate: int = SAMPLE_RATE,
                 end_of_turn: Optional[EndOfTurnHead] = None):
        self.output_rate = check_output_rate(output_rate, "ConversationSession output_rate")
        self.config = turn_config or TurnConfig()
        self.sink = sink or SessionSink()
        self._factory = generator_factory
        self._gen: Optional[TurnGenerator] = None
        vad_config = vad_config or VadConfig()
        #: Commits a speculated pause at once when it says "end" (``vad.end_of_turn``).
        self.end_of_turn = end_of_turn if vad_config.end_of_turn else None
        self.detector = TurnDetector(vad_config, StreamingVad(vad_config, vad_backend))
        self.listening = ListeningFace(listening_config)
        self._lock = threading.RLock()
        self._queue: Deque[Tuple[np.ndarray, Optional[int]]] = collections.deque()
        self._qlock = threading.Lock()
        self.counters: Dict[str, int] = collections.defaultdict(int)
        if vad_config.speculate_after_ms > 0:  # shown in diagnostics from the start
            for name in SPECULATION_COUNTERS:
                if not name.startswith("end_of_turn") or self.end_of_turn is not None:
                    self.counters[name] = 0
        self.state = "idle"
        self.turn_id = 0
        self._turn: Optional[_Turn] = None
        self._next_sample = 0        # expected start of the next input chunk
        self._clock = -1             # last tick frame
        self._listen_next = 0        # next absolute frame for listening motion
        self._voiced_ms = 0.0        # consecutive voiced time while thinking/speaking
        self._gain = 1.0

    @property
    def gain(self) -> float:
        """Output gain now: ``duck_gain`` while the user talks over the answer, else 1."""
        return self._gain

    # ------------------------------------------------------------------ inputs

    @property
    def output_samples_per_frame(self) -> int:
        """Output samples per 25 fps frame (640 at 16 kHz, 960 at 24 kHz)."""
        return self.output_rate // FLAME_FPS

    def submit_audio(self, samples: np.ndarray, start_sample: Optional[int] = None) -> bool:
        """Queue 16 kHz mono float32 ``[n]`` (any thread); False if it was dropped."""
        item = (np.asarray(samples, dtype=np.float32).reshape(-1), start_sample)
        with self._qlock:
            accepted = True
            if len(self._queue) >= self.config.audio_queue_max:
                self.counters["dropped_audio_chunks"] += 1
                if self.config.queue_drop_policy == "newest":
                    accepted = False
                else:
                    self._queue.popleft()
            if accepted:
                self._queue.append(item)
        return accepted

    @property
    def queue_depth(self) -> int:
        with self._qlock:
            return len(self._queue)

    @property
    def speech_anchor_frame(self) -> Optional[int]:
        """Absolute tick frame of turn frame 0 of the current response, if speaking."""
        turn = self._turn
        return None if turn is None else turn.anchor

    def tick(self, now_frame: int) -> int:
        """Advance the 25 fps clock; emit due listening frames; return how many."""
        with self._lock:
            self._clock = int(now_frame)
            last = self._clock
            turn = self._turn
            if turn is not None and turn.anchor is not None:
                last = min(last, turn.anchor - 1)  # speech motion owns later frames
            n = last - self._listen_next + 1
            if n > self.config.max_catchup_frames:
                skip = n - self.config.max_catchup_frames
                self.counters["skipped_listening_frames"] += skip
                self._listen_next += skip
                n -= skip
            if n <= 0:
                return 0
            frames = self.listening.next_frames(n)  # [n, 58]
            self.sink.on_flame(self.turn_id, frames, self._listen_next, "listening")
            self._listen_next += n
            return n

    def reset(self) -> None:
        """Cancel any turn, drop queued audio, restart VAD/end-pointer (worker thread)."""
        with self._qlock:
            self._queue.clear()
        with self._lock:
            self._close_turn(cancel=self._turn is not None)
            self.detector.reset(self._next_sample)
            self.listening.set_user_speaking(False)
            self._set_state("idle", "reset")

    # ------------------------------------------------------------------ worker

    def step(self) -> bool:
        """One unit of worker work: drain audio, advance the generator."""
        worked = self.process_audio() > 0
        turn = self._turn
        if turn is not None and not turn.gen_done and not turn.held_end:
            self._step_generator()
            worked = True
        self._check_playback_done()
        return worked

    def process_audio(self) -> int:
        """Run queued audio through the end-pointer; return chunks processed."""
        n = 0
        while True:
            with self._qlock:
                if not self._queue:
                    return n
                samples, start = self._queue.popleft()
            self._feed(samples, start)
            n += 1

    def _feed(self, samples: np.ndarray, start: Optional[int]) -> None:
        if start is not None and start != self._next_sample:
            gap = start - self._next_sample
            self.counters["audio_gaps"] += 1
            if 0 < gap <= MAX_GAP_FILL:
                self._feed(np.zeros(gap, dtype=np.float32), None)
            else:
                self.detector.reset(start)
                self._next_sample = start
        self._next_sample += len(samples)
        for event in self.detector.process(samples):
            with self._lock:
                self._on_turn_event(event)
        with self._lock:
            if self.state == "listening" and self.detector.state == "silence":
                self._set_state("idle", "no_speech")

    # ---------------------------------------------------------- turn events

    def _on_turn_event(self, event) -> None:
        busy = self.state in ("thinking", "speaking")
        if isinstance(event, Activity):
            self.listening.set_user_speaking(event.voiced)
            if busy:
                self._barge_in_check(event.voiced)
        elif busy:
            return
        elif isinstance(event, SpeechStart) and self.state == "idle":
            self.turn_id += 1
            self._set_state("listening", "speech_start")
        elif isinstance(event, PauseStart) and self.state == "listening" and self._turn is None:
            self._turn = _Turn(self.turn_id, question=event.segment, speculative=True,
                               span=(event.start_sample, event.end_sample))
            self.counters["speculations_started"] += 1
        elif isinstance(event, SpeechResumed) and self._speculating():
            self.counters["speculations_dropped"] += 1
            self._drop_speculation()
        elif isinstance(event, UtteranceEnd) and self.state == "listening":
            if self._speculating():
                if self._turn.span == (event.start_sample, event.end_sample):
                    self._commit(event)
                    return
                self.counters["speculations_dropped"] += 1
                self._drop_speculation()
            self._start_turn(event)

    def _speculating(self) -> bool:
        return self._turn is not None and self._turn.speculative

    def _drop_speculation(self) -> None:
        """Cancel the private turn (nothing of it was emitted)."""
        self._turn = None
        self._cancel_generator(self.turn_id)

    def _cancel_generator(self, turn_id: int) -> None:
        """``generator.cancel()``; a failure is reported and the generator rebuilt next turn."""
        if self._gen is None:
            return
        try:
            self._gen.cancel()
        except Exception as err:  # noqa: BLE001
            self.sink.on_error(turn_id, f"generator cancel failed: {err!r}")
            self._gen = None

    def _commit(self, utterance: Optional[UtteranceEnd]) -> None:
        """The pause became the utterance end (``None``: the end-of-turn head said so):
        the private turn goes public."""
        turn = self._turn
        self.counters["speculations_committed"] += 1
        if utterance is None:
            self.counters["end_of_turn_commits"] += 1
            self.detector.end_utterance()
            turn.early = True
        reason = ("end_of_turn" if utterance is None
                  else "forced_end" if utterance.forced else "utterance_end")
        self._set_state("thinking", reason)
        self._voiced_ms, self._gain = 0.0, 1.0
        turn.speculative = False
        held, turn.held = turn.held, []
        self._emit_events(turn, held)

    def _barge_in_check(self, voiced: bool) -> None:
        cfg = self.config
        if cfg.barge_in == "off":
            return
        if not voiced:
            self._voiced_ms, self._gain = 0.0, 1.0
            return
        self._voiced_ms += CHUNK_MS
        if cfg.barge_in == "duck":
            self._gain = cfg.duck_gain
        if self._voiced_ms >= cfg.barge_in_min_speech_ms:
            self._interrupt("barge_in")

    def _set_state(self, state: str, reason: str) -> None:
        self.state = state
        self.sink.on_state(state, self.turn_id, reason)

    def _start_turn(self, utterance: UtteranceEnd) -> None:
        self._set_state("thinking", "forced_end" if utterance.forced else "utterance_end")
        self._turn = _Turn(self.turn_id, question=utterance.segment)
        self._voiced_ms, self._gain = 0.0, 1.0

    def _interrupt(self, reason: str) -> None:
        self.counters["barge_ins"] += 1
        if self._turn is not None and self._turn.early and self.detector.rejoin():
            # The head took a pause for the end and the user went on: the answer is
            # dropped and the question continues (it is answered whole).
            self.counters["end_of_turn_rejoins"] += 1
            reason = "question_continued"
        self._set_state("interrupted", reason)
        self._close_turn(cancel=True)
        self.turn_id += 1
        self._set_state("listening", reason)

    def _close_turn(self, cancel: bool, resume_frame: Optional[int] = None) -> None:
        """Stop output of the current turn; listening motion resumes at ``resume_frame``
        (default: the next clock frame, or where the speech motion stopped if earlier).

        A turn that played out passes its end frame: the worker may notice the end
        some frames late, and resuming at the clock would leave those frames empty.
        """
        turn, self._turn = self._turn, None
        self._voiced_ms, self._gain = 0.0, 1.0
        if cancel:
            self._cancel_generator(self.turn_id)
        if turn is not None and turn.last_frame is not None:
            self.listening.resume_after_speech(turn.last_frame)
        if resume_frame is None:
            resume_frame = self._clock + 1
            if turn is not None and turn.anchor is not None:
                # Speech motion may lag the clock (a slow generator): resume where it
                # stopped, a few frames early for frames that were due but not yet
                # published when the output was flushed.  The output scheduler drops
                # listening frames that overlap published speech frames.
                resume_frame = min(resume_frame, turn.anchor + turn.n_frames
                                   - FLUSH_MARGIN_FRAMES)
        self._listen_next = max(self._listen_next, resume_frame)
        if self.config.barge_in == "off":
            self.detector.reset(self._next_sample)

    def _fail(self, err: BaseException) -> None:
        self.counters["generator_errors"] += 1
        self.sink.on_error(self.turn_id, f"generator failed: {err!r}")
        self._close_turn(cancel=False)
        try:
            if self._gen is not None:
                self._gen.cancel()
                self._gen.reset()
        except Exception:  # noqa: BLE001 (rebuilt by the factory next turn)
            self._gen = None
        talking = self.detector.state != "silence"
        if talking:
            self.turn_id += 1
        self._set_state("listening" if talking else "idle", "generator_error")

    # ---------------------------------------------------------- generator

    def _step_generator(self) -> None:
        """Start or step the generator outside the lock; emit under it."""
        turn = self._turn
        try:
            if turn.question is not None:
                if self._gen is None:
                    self._gen = self._factory()
                question, turn.question = turn.question, None
                self._gen.start(question, turn.turn_id)
                events = []
                if turn.speculative and self.end_of_turn is not None:
                    hidden = getattr(self._gen, "prompt_hidden", None)
                    if hidden is not None and \
                            self.end_of_turn.probability(hidden) >= self.end_of_turn.threshold:
                        with self._lock:
                            if self._turn is turn and turn.speculative:
                                self._commit(None)
            else:
                events = self._gen.step()
        except Exception as err:  # noqa: BLE001 (generator failures are recovered)
            with self._lock:
                if self._turn is turn:
                    self._fail(err)
            return
        with self._lock:
            if self._turn is turn and turn.speculative:
                turn.held.extend(events or ())  # private until committed
                return
            self._emit_events(turn, events or ())

    def _emit_events(self, turn: _Turn, events) -> None:
        """Generator events of ``turn`` to the sink (under the lock)."""
        for event in events:
            if self._turn is not turn:  # interrupted meanwhile: drop
                self.counters["dropped_events"] += 1
                continue
            try:
                self._on_generator_event(turn, event)
            except Exception as err:  # noqa: BLE001 (a malformed event fails the turn)
                self._fail(err)

    def _on_generator_event(self, turn: _Turn, event: Event) -> None:
        if isinstance(event, FlameEvent):
            self._emit_motion(turn, event)
        elif isinstance(event, AudioEvent):
            self._emit_audio(turn, event)
        elif isinstance(event, TextEvent):
            turn.text.append(str(event.text))
            self.sink.on_text(turn.turn_id, str(event.text), False)
        elif isinstance(event, EndEvent):
            self._end_turn(turn, str(event.reason))
        else:
            raise TypeError(f"generator event of unknown type {type(event).__name__}")

    def _end_turn(self, turn: _Turn, reason: str) -> None:
        """The generator's end event: the resampler's tail, then the final text."""
        if turn.gen_done:  # already ended early (max_response)
            return
        if turn.audio is not None:
            self._emit_pieces(turn, turn.audio.finish())
        if not turn.gen_done:  # the tail may have hit max_response_s (ended there)
            turn.gen_done, turn.end_reason = True, reason
            self.sink.on_text(turn.turn_id, "".join(turn.text), True)

    def _begin_speaking(self, turn: _Turn) -> None:
        if turn.anchor is None:
            turn.anchor = max(self._listen_next, self._clock + 1)
            self._set_state("speaking", "first_output")

    def _emit_audio(self, turn: _Turn, event: AudioEvent) -> None:
        """Generator audio (at its own rate) -> sink audio at ``output_rate``."""
        samples = np.asarray(event.samples, dtype=np.float32).reshape(-1)
        rate, start = int(event.sample_rate), int(event.start_sample)
        if turn.audio is None:
            turn.audio = TurnAudio(self.output_rate)
        self._begin_speaking(turn)
        self._emit_pieces(turn, turn.audio.push(samples, rate, start))

    def _emit_pieces(self, turn: _Turn, pieces: List[Piece]) -> None:
        """Output-rate audio to the sink, cut at ``max_response_s`` (which ends the turn)."""
        limit = int(self.config.max_response_s * self.output_rate)
        for samples, start in pieces:
            if start + len(samples) > limit:
                samples = samples[:max(0, limit - start)]
                self._end_early(turn, "max_response")
            if len(samples):
                turn.n_samples = max(turn.n_samples, start + len(samples))
                self.sink.on_audio(turn.turn_id, samples * self._gain, start)

    def _emit_motion(self, turn: _Turn, event: FlameEvent) -> None:
        frames = np.asarray(event.frames, dtype=np.float32)  # [n, 58]
        start = int(event.start_frame)
        self._begin_speaking(turn)
        limit = int(self.config.max_response_s * FLAME_FPS)
        if start + len(frames) > limit:
            frames = frames[:max(0, limit - start)]
            self._end_early(turn, "max_response")
        if len(frames):
            frames = self.listening.crossfade_into_speech(frames, start)
            turn.n_frames = max(turn.n_frames, start + len(frames))
            turn.last_frame = frames[-1].copy()
            self.sink.on_flame(turn.turn_id, frames, start, "speech")

    def _end_early(self, turn: _Turn, reason: str) -> None:
        if not turn.gen_done:
            turn.gen_done, turn.end_reason = True, reason
            turn.audio = None  # its resampler's tail lies beyond the cut
            self._cancel_generator(turn.turn_id)
            self.sink.on_text(turn.turn_id, "".join(turn.text), True)

    def _check_playback_done(self) -> None:
        with self._lock:
            turn = self._turn
            if turn is None or turn.speculative or not turn.gen_done:
                return
            if turn.anchor is None:  # ended without any output
                self._close_turn(cancel=False)
                self._set_state("idle", "empty_response")
                self._resume_user_speech()
                return
            n_frames = max(turn.n_frames, -(-turn.n_samples // self.output_samples_per_frame))
            end_frame = turn.anchor + n_frames
            if self._clock >= end_frame - 1:
                self._close_turn(cancel=False, resume_frame=end_frame)
                self._set_state("idle", turn.end_reason)
                self._resume_user_speech()

    def _resume_user_speech(self) -> None:
        """The user is mid-utterance (not a barge-in): it becomes the next turn."""
        if self.state == "idle" and self.detector.in_speech:
            self.turn_id += 1
            self._set_state("listening", "speech_start")
