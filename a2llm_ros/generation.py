"""Streaming generation: question audio -> text, speech audio and FLAME frames, in lockstep.

:class:`StreamingGenerator` runs one answer ("turn") at a time with an
explicit :class:`GeneratorState`:

* :meth:`~StreamingGenerator.start` validates the question wave, computes its
  log-mel, runs the audio encoder and adaptor and prefills the LLM with
  Step-Audio-2's chat prompt (see :mod:`a2llm_ros.model.audio_llm`), the
  adaptor outputs in place of the ``<audio_patch>`` tokens.
* :meth:`~StreamingGenerator.step` samples ONE answer token, reads it
  (:class:`AnswerReader`: text and speech ids by range, padding dropped,
  ``<|EOT|>`` ends the answer; with ``InterleaveConfig.enforce`` the logits
  are masked to the kind the :class:`~a2llm_ros.model.audio_llm.Schedule`
  expects), feeds it to the LLM with the KV cache and returns the events it
  caused, in time order: a :class:`TextEvent` per text token; every ``SPEECH_TOKENS_PER_SEGMENT``
  (5) speech tokens go through ``Token2Wav.step`` (an :class:`AudioEvent` when
  audio is ready: at once for the tiny codec, 5 x 640 samples = 200 ms; per
  25-token chunk after 3 tokens of lookahead for Step's codec at 24 kHz), then
  one :class:`FlameEvent` (connector step on the five speech tokens' hidden
  states -> 6 RVQ codes -> MotionTokenizer.decode_step -> 5 frames); at the
  end ``Token2Wav.flush`` releases the held-back audio, then an :class:`EndEvent`.
  A FlameEvent is held until the audio under its frames has been emitted, so
  events always leave in time order (a codec with lookahead delays the motion
  with its voice).
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

All model calls go through the small :class:`Backend` interface
(:class:`TorchBackend` here); an ONNX Runtime or TensorRT engine implements
the same methods.  :func:`generate_batch` is the non-incremental reference
(full-sequence forward passes without KV cache, whole-utterance decoders) used
to test the streaming path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Union

import numpy as np
import torch

from a2llm_ros.configbase import ConfigBase, at_least
from a2llm_ros.constants import (FLAME_FPS, MEL_WINDOW, MIN_QUESTION_SECONDS, SAMPLE_RATE,
                                 SPEECH_TOKEN_RATE, SPEECH_TOKENS_PER_SEGMENT)
from a2llm_ros.events import AudioEvent, EndEvent, Event, FlameEvent, TextEvent
from a2llm_ros.model.a2llm import A2LLM
from a2llm_ros.model.audio_encoder import n_positions
from a2llm_ros.model.audio_llm import (SPEECH, TEXT, Schedule, llm_hidden, llm_logits,
                                       splice_audio)
from a2llm_ros.model.connector import sample_codes


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
        from a2llm_ros.audio.features import resample
        return resample(self.audio, self.sample_rate, rate)


# ----------------------------------------------------------------------------- backend

class Backend:
    """Per-step model calls used by the generator (Torch, ONNX Runtime, TensorRT...).

    Shapes: H = LLM hidden, V = vocabulary, L = RVQ levels, D = FLAME dims.
    ``model`` is the :class:`A2LLM` for the PyTorch backend; engine backends
    give a :class:`a2llm_ros.engines.model_info.ModelInfo` with the same
    tokenizers, vocabulary, configs, layout and codec but no networks.
    """

    kind: str = "base"
    model: A2LLM  # tokenizers, vocabulary, configs and codec metadata

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [M, T] -> audio embeddings [1, A, H]."""
        raise NotImplementedError

    def embed_tokens(self, ids: List[int]) -> torch.Tensor:
        """Token ids -> embeddings [1, n, H]."""
        raise NotImplementedError

    def prefill(self, embeds: torch.Tensor):
        """Prompt embeddings [1, P, H] -> (logits [V], hidden [H], cache)."""
        raise NotImplementedError

    def decode(self, token_id: int, cache):
        """Feed one token -> (logits [V], hidden [H], cache)."""
        raise NotImplementedError

    def init_connector_state(self) -> Any:
        raise NotImplementedError

    def connector_step(self, hidden: torch.Tensor, state, temperature: float,
                       generator: Optional[torch.Generator], top_k: int):
        """Hidden [1, 5, H] -> (codes [1, L], state)."""
        raise NotImplementedError

    def init_motion_state(self) -> Any:
        raise NotImplementedError

    def motion_decode_step(self, codes: torch.Tensor, state):
        """Codes [1, n, L] -> (frames [1, 5n, D], state)."""
        raise NotImplementedError

    def init_token2wav_state(self) -> Any:
        raise NotImplementedError

    def token2wav_step(self, tokens: torch.Tensor, state):
        """Speech codes [n] -> (audio float32 ready so far [m], state)."""
        raise NotImplementedError

    def token2wav_flush(self, state):
        """End of the answer: (the audio still held back [m], state)."""
        return self.model.token2wav.flush(state)


class TorchBackend(Backend):
    """The PyTorch model with a growing key/value cache (one tensor pair per layer)."""

    kind = "torch"

    def __init__(self, model: A2LLM):
        self.model = model.eval()

    @torch.no_grad()
    def encode_audio(self, mel):
        return self.model.encode_audio(mel[None])  # [1, A, H]

    @torch.no_grad()
    def embed_tokens(self, ids):
        return self.model.embed_ids(list(ids))[None]  # [1, n, H]

    def _run(self, embeds, cache=None):
        hidden, cache = llm_hidden(self.model.llm, embeds, past=cache)  # [1, T, H]
        return llm_logits(self.model.llm, hidden[0, -1]).float(), hidden[0, -1], cache

    @torch.no_grad()
    def prefill(self, embeds):
        return self._run(embeds)

    @torch.no_grad()
    def decode(self, token_id, cache):
        return self._run(self.embed_tokens([token_id]), cache)

    @torch.no_grad()
    def forward_full(self, embeds):
        """Reference path without cache: embeds [1, T, H] -> (logits [T, V], hidden [T, H])."""
        hidden, _ = llm_hidden(self.model.llm, embeds)
        return llm_logits(self.model.llm, hidden[0]).float(), hidden[0]

    def init_connector_state(self):
        return self.model.connector.init_state(1)

    @torch.no_grad()
    def connector_step(self, hidden, state, temperature, generator, top_k):
        return self.model.connector.step(hidden.to(_connector_dtype(self.model)), state,
                                         temperature, generator, top_k)

    def init_motion_state(self):
        return self.model.motion_tokenizer.init_decode_state(1)

    @torch.no_grad()
    def motion_decode_step(self, codes, state):
        return self.model.motion_tokenizer.decode_step(codes, state)

    def init_token2wav_state(self):
        return self.model.token2wav.init_state()

    def token2wav_step(self, tokens, state):
        return self.model.token2wav.step(tokens.cpu(), state)

    def token2wav_flush(self, state):
        return self.model.token2wav.flush(state)


def _connector_dtype(model) -> torch.dtype:
    return next(model.connector.parameters()).dtype


def as_backend(model_or_backend: Union[A2LLM, Backend]) -> Backend:
    """A :class:`Backend` for a model (TorchBackend) or the backend itself."""
    if isinstance(model_or_backend, Backend):
        return model_or_backend
    return TorchBackend(model_or_backend)


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


def prompt_embeds(backend: Backend, wave) -> torch.Tensor:
    """Question wave -> prompt embeddings [1, P, H] (audio in the ``<audio_patch>`` rows)."""
    model = backend.model
    mel = model.log_mel(check_question(wave))  # [M, T]
    audio = backend.encode_audio(mel)  # [1, A, H]
    prompt = model.prompt(n_positions(mel.shape[1]))
    return splice_audio(prompt, backend.embed_tokens(prompt.ids), audio)  # [1, P, H]


class TokenChooser:
    """Masks logits (enforced schedule only) and samples (shared by both paths)."""

    def __init__(self, model: A2LLM, cfg: GenerationConfig):
        self.vocab, self.cfg = model.vocab, cfg
        self.enforce = bool(model.cfg.interleave.enforce)
        self.masks = {TEXT: self.vocab.kind_mask(TEXT), SPEECH: self.vocab.kind_mask(SPEECH)}

    def end_id(self, kind: str) -> int:
        """The enforced schedule's end marker of a stream."""
        return self.vocab.tts_pad if kind == TEXT else self.vocab.tts_end

    def choose(self, logits, schedule: Schedule, generator) -> int:
        """Logits [V] -> token id (of ``schedule.next_kind()`` when enforced)."""
        cfg = self.cfg
        logits = logits.detach().float().cpu()
        if self.enforce:
            kind = schedule.next_kind()
            mask = self.masks[kind]
            if kind == TEXT and schedule.n_text >= cfg.max_text_tokens:
                return self.end_id(TEXT)
            if kind == SPEECH and schedule.n_speech < cfg.min_speech_tokens:
                mask = mask.clone()
                mask[self.end_id(SPEECH)] = False
            logits = logits.masked_fill(~mask, float("-inf"))
        # sampling runs on the CPU with a CPU generator (same draws on every device)
        temperature = 0.0 if cfg.greedy else cfg.temperature
        return int(sample_codes(logits[None], temperature, generator, cfg.top_k)[0])


class AnswerReader:
    """What a generated token means: text, speech, nothing (padding, markers), the end."""

    def __init__(self, model: A2LLM, cfg: GenerationConfig):
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


def _generators(cfg: GenerationConfig, device):
    """Separate seeded generators: LLM tokens (CPU) and connector codes (model device)."""
    return (torch.Generator().manual_seed(int(cfg.seed)),
            torch.Generator(device=device).manual_seed(int(cfg.seed) + 1))


# ----------------------------------------------------------------------------- streaming

@dataclass
class GeneratorState:
    """Everything one turn of :class:`StreamingGenerator` carries between steps."""

    turn_id: int = 0
    active: bool = False
    reader: Optional[AnswerReader] = None
    cache: Any = None
    logits: Optional[torch.Tensor] = None        # [V] logits for the next token
    text_ids: List[int] = field(default_factory=list)
    text_emitted: str = ""
    speech_codes: List[int] = field(default_factory=list)
    pending_codes: List[int] = field(default_factory=list)        # not yet vocoded
    pending_hidden: List[torch.Tensor] = field(default_factory=list)  # [H] each
    n_samples: int = 0
    n_frames: int = 0
    #: FLAME events decoded ahead of the audio (codec lookahead), released once the
    #: audio covering them is out.
    held_motion: List["FlameEvent"] = field(default_factory=list)
    t2w_state: Any = None
    connector_state: Any = None
    motion_state: Any = None
    llm_generator: Optional[torch.Generator] = None
    motion_generator: Optional[torch.Generator] = None
    end_reason: Optional[str] = None
    #: The LLM's hidden state at the last prompt position [H] (end-of-turn head input).
    prompt_hidden: Optional[np.ndarray] = None


def host_vector(x) -> np.ndarray:
    """A hidden state (torch tensor or array) as a float32 host vector [H]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, np.float32).reshape(-1)


class StreamingGenerator:
    """Incremental answer generation with explicit state (see module docstring)."""

    def __init__(self, model: Union[A2LLM, Backend], cfg: Optional[GenerationConfig] = None):
        self.backend = as_backend(model)
        self.model = self.backend.model
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
        embeds = prompt_embeds(self.backend, question_wave)  # [1, P, H]
        logits, hidden, cache = self.backend.prefill(embeds)
        turn = self._next_turn if turn_id is None else int(turn_id)
        self._next_turn = turn + 1
        llm_gen, motion_gen = _generators(self.cfg, self.model.device)
        b = self.backend
        self.state = GeneratorState(
            turn_id=turn, active=True, reader=AnswerReader(self.model, self.cfg),
            cache=cache, logits=logits, t2w_state=b.init_token2wav_state(),
            connector_state=b.init_connector_state(), motion_state=b.init_motion_state(),
            llm_generator=llm_gen, motion_generator=motion_gen,
            prompt_hidden=host_vector(hidden))
        return turn

    @property
    def prompt_hidden(self) -> Optional[np.ndarray]:
        """The current turn's last prompt hidden state [H] (None before a start)."""
        return self.state.prompt_hidden

    def step(self) -> List[Event]:
        """Generate one token; returns the events it caused (empty when idle)."""
        s = self.state
        if not s.active:
            return []
        tok = self.chooser.choose(s.logits, s.reader.schedule, s.llm_generator)
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
            s.logits, hidden, s.cache = self.backend.decode(tok, s.cache)
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
        result = collect(self.events(), self.model)
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
        codes = torch.tensor(s.pending_codes, dtype=torch.long)  # [n]
        s.pending_codes = []
        audio = torch.zeros(0)
        if codes.numel():
            audio, s.t2w_state = self.backend.token2wav_step(codes, s.t2w_state)  # [m]
        if flush:
            rest, s.t2w_state = self.backend.token2wav_flush(s.t2w_state)
            audio = torch.cat([audio.reshape(-1).cpu(), rest.reshape(-1).cpu()])
        if audio.shape[0] == 0:
            return []
        rate = self.model.token2wav.sample_rate
        start = s.n_samples
        s.n_samples += audio.shape[0]
        return [AudioEvent(s.turn_id, audio.detach().cpu().numpy().astype(np.float32),
                           rate, start / rate, start)]

    def _release_motion(self, final: bool = False) -> List[Event]:
        """Held FLAME events whose frames the emitted audio already covers (all when
        ``final``): events leave in time order, audio first, so a consumer that
        anchors the turn at its first output never sees motion ahead of its voice."""
        s = self.state
        per_frame = self.model.token2wav.samples_per_token
        out = []
        while s.held_motion and (final or (s.held_motion[0].start_frame
                                           + len(s.held_motion[0].frames)) * per_frame
                                 <= s.n_samples):
            out.append(s.held_motion.pop(0))
        return out

    def _motion(self, keep: int = SPEECH_TOKENS_PER_SEGMENT) -> List[Event]:
        s = self.state
        hidden = torch.stack(s.pending_hidden)[None]  # [1, 5, H]
        s.pending_hidden = []
        codes, s.connector_state = self.backend.connector_step(
            hidden, s.connector_state, self.cfg.motion_temperature, s.motion_generator,
            self.cfg.motion_top_k)  # [1, L]
        frames, s.motion_state = self.backend.motion_decode_step(codes[:, None], s.motion_state)
        frames = frames[0, :keep].detach().float().cpu().numpy()  # [keep, D]
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


def collect(events, model: A2LLM) -> TurnResult:
    """Gather a turn's events into a :class:`TurnResult`."""
    evs = list(events)
    text = "".join(e.text for e in evs if isinstance(e, TextEvent))
    audio = [e.samples for e in evs if isinstance(e, AudioEvent)]
    frames = [e.frames for e in evs if isinstance(e, FlameEvent)]
    end = [e for e in evs if isinstance(e, EndEvent)]
    D = model.layout.dim
    return TurnResult(
        text=text, text_ids=[], speech_codes=[],
        audio=np.concatenate(audio) if audio else np.zeros(0, np.float32),
        frames=np.concatenate(frames) if frames else np.zeros((0, D), np.float32),
        end_reason=end[-1].reason if end else "", events=evs,
        sample_rate=model.token2wav.sample_rate)


# ----------------------------------------------------------------------------- reference

@torch.no_grad()
def generate_batch(model: Union[A2LLM, TorchBackend], question_wave,
                   cfg: Optional[GenerationConfig] = None) -> TurnResult:
    """Non-incremental reference: full forward passes (no KV cache) for every token,
    then one full pass for the speech hidden states, ``connector.generate``,
    whole-sequence motion decode and ``token2wav.decode``."""
    backend = as_backend(model)
    model, cfg = backend.model, cfg or GenerationConfig()
    chooser = TokenChooser(model, cfg)
    llm_gen, motion_gen = _generators(cfg, model.device)
    reader = AnswerReader(model, cfg)
    embeds = prompt_embeds(backend, question_wave)  # [1, P, H]
    fed, text_ids, codes = [], [], []
    reason = "eos"
    while True:
        logits, _ = backend.forward_full(
            torch.cat([embeds, backend.embed_tokens(fed)], dim=1) if fed else embeds)
        tok = chooser.choose(logits[-1], reader.schedule, llm_gen)
        kind = reader.read(tok)
        if kind == TEXT:
            text_ids.append(tok)
        if kind == SPEECH:
            codes.append(int(model.vocab.speech_code(tok)))
        if reader.finished:
            break
        fed.append(tok)
        if kind == SPEECH and len(codes) >= cfg.max_speech_tokens:
            reason = "cap"
            break
    hidden = hidden_states_for_connector(backend, embeds, fed)  # [n_speech, H]
    assert hidden.shape[0] == len(codes)
    frames = _batch_motion(model, hidden, cfg, motion_gen)
    audio = model.token2wav.decode(torch.tensor(codes, dtype=torch.long))
    text = model.text_tokenizer.decode(text_ids)
    return TurnResult(text, text_ids, codes, audio.numpy().astype(np.float32), frames, reason,
                      sample_rate=model.token2wav.sample_rate)


@torch.no_grad()
def hidden_states_for_connector(backend: TorchBackend, prompt: torch.Tensor,
                                answer_ids: List[int]) -> torch.Tensor:
    """LLM last hidden states [n_speech, H] at the input positions of the speech tokens.

    ``prompt`` [1, P, H] from :func:`prompt_embeds`; ``answer_ids`` are the
    answer tokens fed after it.  This is the connector's input, the same as
    ``A2LLM.forward_train`` uses and as :meth:`Backend.decode` returns step
    by step (an exported engine can be checked against it).
    """
    vocab = backend.model.vocab
    full = torch.cat([prompt, backend.embed_tokens(answer_ids)], dim=1) if answer_ids \
        else prompt
    _, hidden = backend.forward_full(full)  # [T, H]
    pos = [prompt.shape[1] + i for i, t in enumerate(answer_ids) if vocab.is_speech(t)]
    return hidden[pos]


def _batch_motion(model: A2LLM, hidden, cfg: GenerationConfig, generator) -> np.ndarray:
    """Speech hidden [n, H] -> frames [n, D] (last partial segment padded with the last state)."""
    n, P = hidden.shape[0], SPEECH_TOKENS_PER_SEGMENT
    if n == 0:
        return np.zeros((0, model.layout.dim), np.float32)
    pad = (-n) % P
    hidden = torch.cat([hidden, hidden[-1:].expand(pad, -1)])[None]  # [1, 5S, H]
    codes = model.connector.generate(hidden, cfg.motion_temperature, generator,
                                     cfg.motion_top_k)  # [1, S, L]
    frames = model.motion_tokenizer.decode(codes)[0, :n]  # [n, D]
    return frames.float().cpu().numpy()


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
