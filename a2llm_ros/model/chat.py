"""The chat side of Step-Audio-2: vocabulary, prompt and answer layout (torch-free).

Vocabulary (:class:`Vocab`, resolved by name from the tokenizer)
----------------------------------------------------------------
Text ids lie below ``<audio_start>`` (Step: 151688); speech code k is
``<audio_0>`` + k (Step: 151696 + k, 6561 codes); ``<audio_{n_codes}>`` is the
speech padding code.  ``<|BOT|>``, ``<|EOT|>``, ``<audio_start>``,
``<audio_end>``, ``<audio_patch>``, ``<tts_start>``, ``<tts_end>``,
``<tts_pad>`` come from the tokenizer files.

Chat format (:func:`chat_pieces`, Step-Audio-2's official examples; every
piece tokenised on its own, no BOS)::

    <|BOT|>system\\nYou are a helpful assistant.<|EOT|>   <|BOT|>human\\n
    <audio_start> <audio_patch> x n <audio_end>   <|EOT|>   <|BOT|>assistant\\n<tts_start>

The adaptor's first n outputs replace the embeddings of the n
``<audio_patch>`` tokens.  The training-only transcription task puts
:data:`ASR_INSTRUCTION` after the audio and ends with ``<|BOT|>assistant\\n``.

Answer (:func:`build_answer_sequence`)
--------------------------------------
The ids after ``<tts_start>``: groups of ``text_per_group`` text ids, then
``speech_per_group`` speech ids (:class:`InterleaveConfig`), ``<|EOT|>`` last.
Two layouts, chosen by ``InterleaveConfig.enforce``:

* **Enforced schedule** (``tiny``): each stream ends with its own marker, the
  text with one ``<tts_pad>``, the speech with ``<tts_end>``, and the other
  stream goes on alone (:class:`Schedule`).  Decoding masks the logits to the
  kind the schedule expects.
* **Step-Audio-2's layout** (not enforced: ``edge``, ``paper``; StepFun calls
  it "TA4"): the groups go on until both streams are used up; a used-up text
  stream fills its slots with ``<tts_pad>``, a used-up speech stream with the
  padding code ``<audio_{n_codes}>`` (so every group is whole), and a single
  ``<tts_end>`` follows the last group.  Decoding reads whatever comes: text
  and speech by id range, both paddings and ``<tts_end>`` dropped, until
  ``<|EOT|>``.

Step's groups are 1 text id : 4 speech ids (:data:`STEP_TEXT_PER_GROUP`,
:data:`STEP_SPEECH_PER_GROUP`).  Source: StepFun's vLLM fork
(github.com/stepfun-ai/vllm), which re-encodes an earlier spoken answer into
the prompt in this layout: branch ``step-audio2-mini`` (2025-08-29),
``vllm/transformers_utils/tokenizers/step_audio_2_tokenizer.py``,
``build_tts_interleave_data(..., chunk=4)``; its output parser
``vllm/audio_parser/step_audio_2_tts_ta4_parser.py`` splits the same section by
id range and drops ``<tts_pad>`` and ``<audio_6561>``.  The speech padding of
the last group follows the later version of that function (branch
``feat/step-audio-support``, ``vllm/tokenizers/step_audio_2.py``: speech padded
to whole groups; the 2025 version padded it only up to as many ids as groups,
so its last group could be short).
The Step-Audio 2 technical report (arXiv 2507.16632) says only that text and
audio tokens are interleaved; none of these sources is the training code.

Default groups: ``tiny`` (characters) 4 text : 5 speech.  Measured on the 50
FLAME-QA answers spoken by espeak-ng: 30.4 characters in 1.97 s on average,
i.e. 0.62 characters per 25 Hz speech token, so 4:5 (0.8) keeps the text
ahead of the speech.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

from a2llm_ros.model.configs import InterleaveConfig
from a2llm_ros.model.text_tokenizer import TextTokenizer, speech_token

TEXT, SPEECH = "text", "speech"
#: Label value ignored by the cross-entropy.
IGNORE_INDEX = -100
#: System prompt of Step-Audio-2's examples (and of every A²-LLM prompt).
SYSTEM_PROMPT = "You are a helpful assistant."
#: Instruction after the question audio in the training-only transcription task.
ASR_INSTRUCTION = "Transcribe the speech."
#: Prompt tasks: answer with speech (``<tts_start>``) or transcribe the question.
TASK_ANSWER, TASK_TRANSCRIBE = 0, 1


# ----------------------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class Vocab:
    """Ids of the named tokens and the text / speech ranges (see module docstring)."""

    size: int
    n_speech: int
    bot: int
    eot: int
    audio_start: int
    audio_end: int
    audio_patch: int
    tts_start: int
    tts_end: int
    tts_pad: int
    speech_start: int
    speech_pad: int
    unk: int = -1

    @classmethod
    def from_tokenizer(cls, tok: TextTokenizer, n_speech: int, size: int) -> "Vocab":
        """Resolve every named token; raise naming what does not fit ``size``."""
        start = tok.token_id(speech_token(0))
        pad_name = speech_token(n_speech)
        pad = tok.token_id(pad_name) if tok.has_token(pad_name) else start + n_speech
        v = cls(size=size, n_speech=n_speech, bot=tok.token_id("<|BOT|>"),
                eot=tok.token_id("<|EOT|>"), audio_start=tok.token_id("<audio_start>"),
                audio_end=tok.token_id("<audio_end>"),
                audio_patch=tok.token_id("<audio_patch>"),
                tts_start=tok.token_id("<tts_start>"), tts_end=tok.token_id("<tts_end>"),
                tts_pad=tok.token_id("<tts_pad>"), speech_start=start, speech_pad=pad,
                unk=-1 if tok.unk_id is None else tok.unk_id)
        if pad != start + n_speech:
            raise ValueError(f"tokenizer: {pad_name} is id {pad}, expected {start + n_speech} "
                             f"(speech tokens must be contiguous)")
        if pad >= size or v.audio_start >= start:
            raise ValueError(f"tokenizer ids do not fit the LLM: speech ids {start}..{pad} "
                             f"(audio_start {v.audio_start}) with {size} embedding rows")
        return v

    @property
    def text_limit(self) -> int:
        """Text ids are below this (``<audio_start>``)."""
        return self.audio_start

    def speech_id(self, code):
        """Speech code(s) ``0..n_speech-1`` -> vocabulary id(s)."""
        return code + self.speech_start

    def speech_code(self, token_id):
        """Vocabulary id(s) -> speech code(s)."""
        return token_id - self.speech_start

    def is_speech(self, token_id: int) -> bool:
        return self.speech_start <= token_id < self.speech_start + self.n_speech

    def is_text(self, token_id: int) -> bool:
        return (0 <= token_id < self.text_limit and token_id not in (self.bot, self.eot)
                and token_id != self.unk)

    def is_padding(self, token_id: int) -> bool:
        return token_id in (self.tts_pad, self.speech_pad)

    def kind_mask(self, kind: str) -> np.ndarray:
        """Bool [size]: ids allowed when the enforced schedule expects ``kind``."""
        mask = np.zeros(self.size, dtype=bool)
        if kind == TEXT:
            mask[:self.text_limit] = True
            for i in (self.bot, self.eot, self.unk):
                if 0 <= i < self.size:
                    mask[i] = False
            mask[self.tts_pad] = True  # text end
        else:
            mask[self.speech_start:self.speech_start + self.n_speech] = True
            mask[self.tts_end] = True  # speech end
        return mask


# ----------------------------------------------------------------------------- chat format

def n_positions(n_mel_frames: int) -> int:
    """``<audio_patch>`` count for a piece of ``n_mel_frames`` frames (Step's formula)."""
    e = (n_mel_frames - 2 + 1) // 2 // 2
    return max((e + 2 - 3) // 2 + 1, 0)


#: Marks the audio piece in :func:`chat_pieces` (``n_patches`` copies of ``<audio_patch>``).
AUDIO_PIECE = -1


def chat_pieces(n_patches: int, task: int = TASK_ANSWER,
                system: str = SYSTEM_PROMPT) -> List[Tuple[str, int]]:
    """Prompt pieces ``(text, n)``: text pieces have n = 0; the audio piece is
    ``("<audio_patch>", AUDIO_PIECE)`` between ``<audio_start>`` and ``<audio_end>``."""
    pieces = [(f"<|BOT|>system\n{system}<|EOT|>", 0), ("<|BOT|>human\n", 0),
              ("<audio_start>", 0), ("<audio_patch>", AUDIO_PIECE), ("<audio_end>", 0)]
    if task == TASK_TRANSCRIBE:
        return pieces + [(ASR_INSTRUCTION, 0), ("<|EOT|>", 0), ("<|BOT|>assistant\n", 0)]
    return pieces + [("<|EOT|>", 0), ("<|BOT|>assistant\n<tts_start>", 0)]


@dataclass
class Prompt:
    """Prompt ids with the slice of ``<audio_patch>`` positions."""

    ids: List[int]
    patch_start: int
    n_patches: int

    @property
    def tail(self) -> int:
        """Positions from the last ``<audio_patch>`` to the end of the prompt (the same for
        every audio length): the prefill's hidden states the end-of-turn head reads."""
        return len(self.ids) - (self.patch_start + self.n_patches) + 1


def prompt_tail(model) -> int:
    """:attr:`Prompt.tail` of ``model``'s chat template (an ``A2LLM`` or an engine's
    ``ModelInfo``): the prefill's hidden states the end-of-turn head reads."""
    return model.prompt(1).tail


def build_prompt(tok: TextTokenizer, vocab: Vocab, n_patches: int,
                 task: int = TASK_ANSWER, system: str = SYSTEM_PROMPT) -> Prompt:
    """Token ids of the chat prompt (each piece tokenised on its own)."""
    ids: List[int] = []
    start = 0
    for text, n in chat_pieces(n_patches, task, system):
        if n == AUDIO_PIECE:
            start = len(ids)
            ids += [vocab.audio_patch] * n_patches
        else:
            ids += tok.encode(text)
    return Prompt(ids, start, n_patches)


def splice_audio(prompt: Prompt, prompt_embeds, audio_embeds):
    """Replace the ``<audio_patch>`` rows: prompt embeds [.., P, H], audio [.., A, H] ->
    a new [.., P, H] with the first ``n_patches`` audio rows in place (A >= n_patches).

    Works on torch tensors (differentiable) and NumPy arrays alike; the audio rows take
    the prompt embeddings' dtype.
    """
    a, n = prompt.patch_start, prompt.n_patches
    out = prompt_embeds.clone() if hasattr(prompt_embeds, "clone") else prompt_embeds.copy()
    out[..., a:a + n, :] = audio_embeds[..., :n, :]
    return out


# ----------------------------------------------------------------------------- schedule

@dataclass
class Schedule:
    """Which kind of token comes next in the answer; advance with :meth:`push`."""

    text_per_group: int
    speech_per_group: int
    text_done: bool = False
    speech_done: bool = False
    phase: str = TEXT
    in_group: int = 0
    n_text: int = 0       # text ids pushed (without the end)
    n_speech: int = 0     # speech tokens pushed (without the end)

    @classmethod
    def from_config(cls, cfg: InterleaveConfig) -> "Schedule":
        return cls(cfg.text_per_group, cfg.speech_per_group)

    @property
    def finished(self) -> bool:
        return self.text_done and self.speech_done

    def next_kind(self) -> str:
        """``"text"`` or ``"speech"``: the kind of the next answer token."""
        if self.finished:
            raise RuntimeError("answer already finished")
        if self.text_done:
            return SPEECH
        if self.speech_done:
            return TEXT
        return self.phase

    def push(self, is_end: bool) -> None:
        """Record one token of :meth:`next_kind` (``is_end``: it was that stream's end)."""
        kind = self.next_kind()
        if kind == TEXT:
            self.text_done |= is_end
            self.n_text += 0 if is_end else 1
            limit = self.text_per_group
        else:
            self.speech_done |= is_end
            self.n_speech += 0 if is_end else 1
            limit = self.speech_per_group
        self.in_group += 1
        if is_end or self.in_group >= limit:
            self.phase = SPEECH if kind == TEXT else TEXT
            self.in_group = 0


@dataclass
class AnswerSequence:
    """Answer ids after the prompt with the kind of each position."""

    ids: List[int] = field(default_factory=list)
    is_text: List[bool] = field(default_factory=list)     # text target (text id or an end)
    is_speech_token: List[bool] = field(default_factory=list)  # speech id (not the end)


def build_answer_sequence(text_ids: Sequence[int], speech_codes: Sequence[int],
                          vocab: Vocab, cfg: InterleaveConfig) -> AnswerSequence:
    """Interleave text ids and speech codes into the answer, ``<|EOT|>`` last: the
    enforced schedule's layout, or Step-Audio-2's (not enforced; module docstring)."""
    if not cfg.enforce:
        return build_step_answer(text_ids, speech_codes, vocab, cfg)
    text = list(text_ids) + [vocab.tts_pad]
    speech = [vocab.speech_id(int(c)) for c in speech_codes] + [vocab.tts_end]
    sched, out = Schedule.from_config(cfg), AnswerSequence()
    ti = si = 0
    while not sched.finished:
        if sched.next_kind() == TEXT:
            tok, ti, is_end = text[ti], ti + 1, ti == len(text) - 1
            out.is_speech_token.append(False)
            out.is_text.append(True)
        else:
            tok, si, is_end = speech[si], si + 1, si == len(speech) - 1
            out.is_speech_token.append(not is_end)
            out.is_text.append(False)
        out.ids.append(tok)
        sched.push(is_end)
    out.ids.append(vocab.eot)
    out.is_text.append(True)
    out.is_speech_token.append(False)
    return out


def step_group_count(n_text: int, n_speech: int, cfg: InterleaveConfig) -> int:
    """Groups of Step-Audio-2's layout: enough for both streams (ceil of each)."""
    return max(-(-n_text // cfg.text_per_group), -(-n_speech // cfg.speech_per_group))


def build_step_answer(text_ids: Sequence[int], speech_codes: Sequence[int],
                      vocab: Vocab, cfg: InterleaveConfig) -> AnswerSequence:
    """Step-Audio-2's layout: whole groups of ``text_per_group`` text slots, then
    ``speech_per_group`` speech slots, until both streams are used up; empty text
    slots hold ``<tts_pad>``, empty speech slots the padding code; then
    ``<tts_end>`` and ``<|EOT|>``.

    Kinds: text slots and ``<|EOT|>`` are text targets; speech slots and
    ``<tts_end>`` speech targets; only real speech ids are speech tokens (the
    motion queries)."""
    n_groups = step_group_count(len(text_ids), len(speech_codes), cfg)
    t, s = cfg.text_per_group, cfg.speech_per_group
    text = list(text_ids) + [vocab.tts_pad] * (n_groups * t - len(text_ids))  # [G * t]
    speech = [vocab.speech_id(int(c)) for c in speech_codes]
    speech += [vocab.speech_pad] * (n_groups * s - len(speech))  # [G * s]
    out = AnswerSequence()
    for g in range(n_groups):
        out.ids += text[g * t:(g + 1) * t]
        out.is_text += [True] * t
        out.is_speech_token += [False] * t
        group = speech[g * s:(g + 1) * s]
        out.ids += group
        out.is_text += [False] * s
        out.is_speech_token += [tok != vocab.speech_pad for tok in group]
    out.ids += [vocab.tts_end, vocab.eot]
    out.is_text += [False, True]
    out.is_speech_token += [False, False]
    return out


def text_sequence(text_ids: Sequence[int], vocab: Vocab) -> AnswerSequence:
    """A text-only target (transcription): ``text <|EOT|>``."""
    ids = list(text_ids) + [vocab.eot]
    n = len(ids)
    return AnswerSequence(ids=ids, is_text=[True] * n, is_speech_token=[False] * n)


# ----------------------------------------------------------------------------- backbone
