"""Streaming generation: question audio -> text, speech audio and FLAME frames, in lockstep.

:class:`StreamingGenerator` runs one answer ("turn") at a time with an
explicit :class:`GeneratorState`:

* :meth:`~StreamingGenerator.start` validates the question wave, computes its
  log-mel, runs the audio encoder and adaptor and prefills the LLM with
  Step-Audio-2's chat prompt (see :mod:`a2llm_ros.model.chat`), the
  adaptor outputs in place of the ``<audio_patch>`` tokens.
* :meth:`~StreamingGenerator.step` takes ONE answer token (chosen by the backend
  in the previous call as :class:`TokenChooser` asked: with
  ``InterleaveConfig.enforce`` masked to the kind the
  :class:`~a2llm_ros.model.chat.Schedule` expects), reads it
  (:class:`AnswerReader`: text and speech ids by range, padding dropped,
  ``<|EOT|>`` ends the answer), feeds it to the LLM with the KV cache and returns the events it
  caused, in time order: a :class:`TextEvent` per text token; every ``SPEECH_TOKENS_PER_SEGMENT``
  (5) speech tokens go through ``Token2Wav.step`` (an :class:`AudioEvent` when
  audio is ready: 640 samples per token one token late for the tiny codec (its
  refiner's lookahead), so 4 x 640 after the first segment and 5 x 640 after each
  later one; per 25-token chunk after 3 tokens of lookahead for Step's codec at
  24 kHz), then
  one :class:`FlameEvent` (connector step on the five speech tokens' hidden
  states -> 6 RVQ codes -> MotionTokenizer.decode_step -> 5 frames); at the
  end ``Token2Wav.flush`` releases the held-back audio, then an :class:`EndEvent`.
  FLAME frames are held until the audio under them has been emitted, so events
  always leave in time order (a codec with lookahead delays the motion with its
  voice); what a step releases leaves as one FlameEvent, split mid-segment when
  the audio covers only part of it (the tiny codec's one token of lookahead:
  4 frames, then 5 per step).
* :meth:`~StreamingGenerator.cancel` (barge-in) ends the turn at once with
  reason ``"cancel"``; :meth:`~StreamingGenerator.reset` drops all state.

Timing is derived from counts, never from the wall clock: after N speech
tokens the audio covers exactly ``N * samples_per_token`` samples at the
codec's rate (N x 40 ms: 640 at 16 kHz, 960 at 24 kHz) and the motion N
frames at 25 fps; ``start_sample`` counts at the codec's rate.  When the
answer ends after a partial group of r < 5 speech tokens, their audio is
decoded as is and the motion segment is completed by repeating the last
speech token's hidden state; only the first r of its 5 frames are kept, so
FLAME frames == audio seconds x 25 exactly.

The answer ends with ``"eos"`` at ``<|EOT|>`` (or, with an enforced schedule,
once both ``<tts_pad>`` and ``<tts_end>`` ended their streams), or with
``"cap"`` after ``max_speech_tokens`` speech tokens (``max_text_tokens``
forces the text end under an enforced schedule and caps text otherwise).

All model calls go through the narrow, array-typed
:class:`~a2llm_ros.engines.backend.Backend` interface (PyTorch, ONNX Runtime,
TensorRT): the backend samples each token on its device as a
:class:`~a2llm_ros.engines.backend.Pick` says and returns its id and hidden
state, so this module never imports torch.  The non-incremental reference the
streaming path is tested against is
:func:`a2llm_ros.engines.torch_backend.generate_batch`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional

import numpy as np

from a2llm_ros.audio.signals import resample
from a2llm_ros.configbase import ConfigBase, at_least
from a2llm_ros.constants import (FLAME_FPS, MEL_WINDOW, MIN_QUESTION_SECONDS, SAMPLE_RATE,
                                 SPEECH_TOKEN_RATE, SPEECH_TOKENS_PER_SEGMENT)
from a2llm_ros.engines.backend import Backend, Pick
from a2llm_ros.events import AudioEvent, EndEvent, Event, FlameEvent, TextEvent
from a2llm_ros.model.chat import SPEECH, TEXT, Schedule


@dataclass
class GenerationConfig(ConfigBase):
    """Sampling and length limits of one answer."""

    max_speech_tokens: int = 750      # 30 s cap on the answer audio
    #: Cap on the answer's text tokens.
    max_text_tokens: int = 256
    min_speech_tokens: int = 0        # <speech_end> is masked before this many
    #: LLM sampling temperature (ignored with ``greedy``).
    temperature: float = 0.8
    #: LLM sampling: keep the k most likely tokens (0 = all).
    top_k: int = 50
    #: Seed of the per-turn sampling generators (reproducible answers).
    seed: int = 0
    #: Always take the most likely token (argmax) instead of sampling.
    greedy: bool = False
    motion_temperature: float = 0.0   # connector sampling; 0 = greedy
    #: Connector sampling: keep the k most likely motion codes (0 = all).
    motion_top_k: int = 0

    BOUNDS = {"max_speech_tokens": at_least(1), "max_text_tokens": at_least(0),
              "min_speech_tokens": at_least(0), "temperature": at_least(0.0),
              "top_k": at_least(0), "motion_temperature": at_least(0.0),
              "motion_top_k": at_least(0)}


# events (TextEvent, AudioEvent, FlameEvent, EndEvent) live in a2llm_ros.events


@dataclass
class TurnResult:
    """Everything one turn produced."""

    text: str
    text_ids: List[int]
    speech_codes: List[int]
    audio: np.ndarray          # float32 [n_speech * samples_per_token]
    frames: np.ndarray         # float32 [n_speech, D]
    end_reason: str
    events: List[Event] = field(default_factory=list)
    sample_rate: int = SAMPLE_RATE  # of ``audio`` (the codec's output rate)

    def audio_at(self, rate: int) -> np.ndarray:
        """``audio`` resampled to ``rate`` (as is when equal)."""
        return resample(self.audio, self.sample_rate, rate)


# ----------------------------------------------------------------------------- helpers

def check_question(wave) -> np.ndarray:
    """Validate a question wave: float32 mono [N], finite, at least 0.1 s."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"question audio must be mono [N], got shape {wave.shape}")
    if wave.size < max(int(MIN_QUESTION_SECONDS * SAMPLE_RATE), MEL_WINDOW):
        raise ValueError(f"question audio too short: {wave.size} samples "
                         f"(need >= {MIN_QUESTION_SECONDS} s)")
    if not np.isfinite(wave).all():
        raise ValueError("question audio contains NaN or Inf samples")
    return wave


class TokenChooser:
    """The :class:`~a2llm_ros.engines.backend.Pick` for the next token: sampling settings,
    and with an enforced schedule the kind it expects (shared by both paths)."""

    def __init__(self, model, cfg: GenerationConfig):
        self.vocab, self.cfg = model.vocab, cfg
        self.enforce = bool(model.cfg.interleave.enforce)

    def end_id(self, kind: str) -> int:
        """The enforced schedule's end marker of a stream."""
        return self.vocab.tts_pad if kind == TEXT else self.vocab.tts_end

    def pick(self, schedule: Schedule) -> Pick:
        """How to choose the token after ``schedule``'s current position."""
        cfg = self.cfg
        temperature = 0.0 if cfg.greedy else float(cfg.temperature)
        if not self.enforce:
            return Pick(temperature, int(cfg.top_k))
        kind = schedule.next_kind()
        if kind == TEXT and schedule.n_text >= cfg.max_text_tokens:
            return Pick(forced=self.end_id(TEXT))
        banned = self.end_id(SPEECH) \
            if kind == SPEECH and schedule.n_speech < cfg.min_speech_tokens else None
        return Pick(temperature, int(cfg.top_k), allowed=kind, banned=banned)


class AnswerReader:
    """What a generated token means: text, speech, nothing (padding, markers), the end."""

    def __init__(self, model, cfg: GenerationConfig):
        self.vocab, self.cfg = model.vocab, cfg
        self.enforce = bool(model.cfg.interleave.enforce)
        self.schedule = Schedule.from_config(model.cfg.interleave)
        self.finished = False
        #: Tokens read; without an enforced schedule the answer also ends after
        #: ``max_speech_tokens + max_text_tokens`` of them.
        self.n_read = 0

    def read(self, tok: int) -> Optional[str]:
        """TEXT, SPEECH or None; sets :attr:`finished` at the answer's end."""
        v = self.vocab
        self.n_read += 1
        if not self.enforce and self.n_read >= self.cfg.max_speech_tokens \
                + self.cfg.max_text_tokens:
            self.finished = True
        if self.enforce:
            kind = self.schedule.next_kind()
            is_end = tok == (v.tts_pad if kind == TEXT else v.tts_end)
            self.schedule.push(is_end)
            self.finished = self.schedule.finished
            return None if is_end else kind
        if tok == v.eot:
            self.finished = True
            return None
        if v.is_speech(tok):
            return SPEECH
        if v.is_text(tok) and self.schedule.n_text < self.cfg.max_text_tokens:
            self.schedule.n_text += 1
            return TEXT
        return None  # <tts_pad>, the speech padding code, <tts_end>, other specials


# ----------------------------------------------------------------------------- streaming

@dataclass
class GeneratorState:
    """Everything one turn of :class:`StreamingGenerator` carries between steps."""

    turn_id: int = 0
    active: bool = False
    reader: Optional[AnswerReader] = None
    cache: Any = None
    #: The next answer token, chosen by the backend in the last prefill / decode.
    next_token: int = -1
    text_ids: List[int] = field(default_factory=list)
    text_emitted: str = ""
    speech_codes: List[int] = field(default_factory=list)
    pending_codes: List[int] = field(default_factory=list)        # not yet vocoded
    pending_hidden: List[Any] = field(default_factory=list)  # backend hidden states [H]
    n_samples: int = 0
    n_frames: int = 0
    #: FLAME events decoded ahead of the audio (codec lookahead), released once the
    #: audio covering them is out.
    held_motion: List["FlameEvent"] = field(default_factory=list)
    t2w_state: Any = None
    motion_state: Any = None
    #: The backend's random generators: LLM tokens (seed) and motion codes (seed + 1).
    llm_rng: Any = None
    motion_rng: Any = None
    end_reason: Optional[str] = None
    #: The LLM's hidden states at the prompt's last positions [E, H] (``Prompt.tail``: the
    #: last audio position and the chat template after it; end-of-turn head input).
    prompt_hidden: Optional[np.ndarray] = None


class StreamingGenerator:
    """Incremental answer generation with explicit state (see module docstring)."""

    def __init__(self, backend: Backend, cfg: Optional[GenerationConfig] = None):
        if not isinstance(backend, Backend):
            raise TypeError(f"StreamingGenerator needs a Backend (e.g. TorchBackend(model)), "
                            f"got {type(backend).__name__}")
        self.backend = backend
        self.model = backend.model
        self.cfg = cfg or GenerationConfig()
        self.chooser = TokenChooser(self.model, self.cfg)
        self.state = GeneratorState()
        self._next_turn = 0

    @property
    def active(self) -> bool:
        return self.state.active

    def start(self, question_wave, turn_id: Optional[int] = None) -> int:
        """Prefill with a (complete) question; returns the new turn id.

        Raises RuntimeError while a turn is running (call :meth:`cancel` first).
        """
        if self.state.active:
            raise RuntimeError(f"turn {self.state.turn_id} is still running; cancel() it first")
        wave = check_question(question_wave)
        b, reader = self.backend, AnswerReader(self.model, self.cfg)
        llm_rng, motion_rng = b.rng(self.cfg.seed), b.rng(int(self.cfg.seed) + 1)
        token, hidden, cache = b.prefill(wave, self.chooser.pick(reader.schedule), llm_rng)
        turn = self._next_turn if turn_id is None else int(turn_id)
        self._next_turn = turn + 1
        self.state = GeneratorState(
            turn_id=turn, active=True, reader=reader, cache=cache, next_token=token,
            t2w_state=b.init_codec_state(), motion_state=b.init_motion_state(),
            llm_rng=llm_rng, motion_rng=motion_rng,
            prompt_hidden=b.host(hidden).reshape(-1, self.model.cfg.llm.hidden_size))
        return turn

    @property
    def prompt_hidden(self) -> Optional[np.ndarray]:
        """The current turn's hidden states at the prompt's last positions [E, H] (None
        before a start)."""
        return self.state.prompt_hidden

    def step(self) -> List[Event]:
        """Generate one token; returns the events it caused (empty when idle)."""
        s = self.state
        if not s.active:
            return []
        tok = s.next_token
        kind = s.reader.read(tok)
        is_speech = kind == SPEECH
        events: List[Event] = []
        if kind == TEXT:
            events += self._text(tok)
        if is_speech:
            s.speech_codes.append(int(self.model.vocab.speech_code(tok)))
            s.pending_codes.append(s.speech_codes[-1])
            if len(s.pending_codes) == SPEECH_TOKENS_PER_SEGMENT:
                events += self._audio()
        finished = s.reader.finished
        capped = is_speech and len(s.speech_codes) >= self.cfg.max_speech_tokens
        if not finished:
            s.next_token, hidden, s.cache = self.backend.decode(
                tok, s.cache, self.chooser.pick(s.reader.schedule), s.llm_rng)
            if is_speech:
                s.pending_hidden.append(hidden)
                if len(s.pending_hidden) == SPEECH_TOKENS_PER_SEGMENT:
                    s.held_motion += self._motion()
                    events += self._release_motion()
        if finished or capped:
            events += self._finish("eos" if finished else "cap")
        return events

    def cancel(self) -> List[Event]:
        """Barge-in: stop the running turn now (no flush); returns its EndEvent."""
        s = self.state
        if not s.active:
            return []
        s.active, s.end_reason = False, "cancel"
        s.cache = None
        return [EndEvent(s.turn_id, "cancel", len(s.speech_codes), s.n_frames)]

    def reset(self) -> None:
        """Forget the current turn (a new :meth:`start` is needed)."""
        self.state = GeneratorState()

    def events(self) -> Iterator[Event]:
        """Step until the turn ends, yielding events."""
        while self.state.active:
            yield from self.step()

    def generate(self, question_wave) -> TurnResult:
        """Run a whole turn with the streaming path and collect the results."""
        self.start(question_wave)
        result = collect(self.events(), self.model.layout.dim,
                         self.model.token2wav.sample_rate)
        result.text_ids = list(self.state.text_ids)
        result.speech_codes = list(self.state.speech_codes)
        return result

    # -- event builders -------------------------------------------------------------------
    def _text(self, tok: int) -> List[Event]:
        s = self.state
        s.text_ids.append(tok)
        full = self.model.text_tokenizer.decode(s.text_ids)
        if full.endswith("\ufffd"):
            return []  # incomplete multi-byte character: wait for the next token
        delta = full[len(s.text_emitted):] if full.startswith(s.text_emitted) else full
        s.text_emitted = full
        return [TextEvent(s.turn_id, delta, len(s.text_ids) - 1)] if delta else []

    def _audio(self, flush: bool = False) -> List[Event]:
        """Pending codes through the codec (``flush``: then its held-back rest).

        Audio comes in uneven pieces when the codec has lookahead; ``start_sample``
        counts samples at the codec's rate, so over a turn sample
        ``k * samples_per_token`` starts speech token (and FLAME frame) ``k``.
        """
        s = self.state
        codes = np.asarray(s.pending_codes, np.int64)  # [n]
        s.pending_codes = []
        audio = np.zeros(0, np.float32)
        if codes.size:
            audio, s.t2w_state = self.backend.codec_step(codes, s.t2w_state)  # [m]
        if flush:
            rest, s.t2w_state = self.backend.codec_flush(s.t2w_state)
            audio = np.concatenate([audio, rest])
        if audio.shape[0] == 0:
            return []
        rate = self.model.token2wav.sample_rate
        start = s.n_samples
        s.n_samples += audio.shape[0]
        return [AudioEvent(s.turn_id, np.asarray(audio, np.float32), rate, start / rate,
                           start)]

    def _release_motion(self, final: bool = False) -> List[Event]:
        """The held FLAME frames the emitted audio already covers (all when ``final``), as
        one event: events leave in time order, audio first, so a consumer that anchors the
        turn at its first output never sees motion ahead of its voice.  A segment only
        partly covered (a codec with lookahead) is split; its rest stays held."""
        s = self.state
        covered = s.n_samples // self.model.token2wav.samples_per_token  # frames with audio
        parts: List[FlameEvent] = []
        while s.held_motion:
            ev = s.held_motion[0]
            n = len(ev.frames) if final else min(len(ev.frames), covered - ev.start_frame)
            if n <= 0:
                break
            if n == len(ev.frames):
                parts.append(s.held_motion.pop(0))
                continue
            parts.append(FlameEvent(ev.turn_id, ev.frames[:n], ev.fps, ev.start_time,
                                    ev.start_frame))
            rest = ev.start_frame + n
            s.held_motion[0] = FlameEvent(ev.turn_id, ev.frames[n:], ev.fps, rest / ev.fps, rest)
        if not parts:
            return []
        first = parts[0]
        frames = np.concatenate([p.frames for p in parts]) if len(parts) > 1 else first.frames
        return [FlameEvent(first.turn_id, frames, first.fps, first.start_time,
                           first.start_frame)]

    def _motion(self, keep: int = SPEECH_TOKENS_PER_SEGMENT) -> List[Event]:
        s = self.state
        frames, s.motion_state = self.backend.motion_step(
            s.pending_hidden, s.motion_state, self.cfg.motion_temperature,
            self.cfg.motion_top_k, s.motion_rng)  # [5, D]
        s.pending_hidden = []
        frames = np.asarray(frames[:keep], np.float32)  # [keep, D]
        start = s.n_frames
        s.n_frames += frames.shape[0]
        return [FlameEvent(s.turn_id, frames, FLAME_FPS, start / FLAME_FPS, start)]

    def _finish(self, reason: str) -> List[Event]:
        s = self.state
        events: List[Event] = self._audio(flush=True)
        if s.pending_hidden:
            r = len(s.pending_hidden)
            s.pending_hidden += [s.pending_hidden[-1]] * (SPEECH_TOKENS_PER_SEGMENT - r)
            s.held_motion += self._motion(keep=r)
        events += self._release_motion(final=True)
        s.active, s.end_reason, s.cache = False, reason, None
        events.append(EndEvent(s.turn_id, reason, len(s.speech_codes), s.n_frames))
        return events


def collect(events, flame_dim: int, sample_rate: int) -> TurnResult:
    """Gather a turn's events into a :class:`TurnResult` (FLAME width, the audio's rate)."""
    evs = list(events)
    text = "".join(e.text for e in evs if isinstance(e, TextEvent))
    audio = [e.samples for e in evs if isinstance(e, AudioEvent)]
    frames = [e.frames for e in evs if isinstance(e, FlameEvent)]
    end = [e for e in evs if isinstance(e, EndEvent)]
    D = flame_dim
    return TurnResult(
        text=text, text_ids=[], speech_codes=[],
        audio=np.concatenate(audio) if audio else np.zeros(0, np.float32),
        frames=np.concatenate(frames) if frames else np.zeros((0, D), np.float32),
        end_reason=end[-1].reason if end else "", events=evs, sample_rate=sample_rate)


def event_to_json(event: Event) -> dict:
    """JSON-able summary of an event (sizes and times, not the raw samples/frames)."""
    if isinstance(event, TextEvent):
        return {"type": "text", "turn_id": event.turn_id, "text": event.text,
                "token_index": event.token_index}
    if isinstance(event, AudioEvent):
        n = int(event.samples.shape[0])
        return {"type": "audio", "turn_id": event.turn_id, "start_time": event.start_time,
                "start_sample": event.start_sample, "n_samples": n,
                "sample_rate": event.sample_rate, "duration": n / event.sample_rate}
    if isinstance(event, FlameEvent):
        n = int(event.frames.shape[0])
        return {"type": "flame", "turn_id": event.turn_id, "start_time": event.start_time,
                "start_frame": event.start_frame, "n_frames": n, "fps": event.fps,
                "dim": int(event.frames.shape[1]), "duration": n / event.fps}
    return {"type": "end", "turn_id": event.turn_id, "reason": event.reason,
            "n_speech_tokens": event.n_speech_tokens, "n_frames": event.n_frames,
            "duration": event.n_speech_tokens / SPEECH_TOKEN_RATE}
