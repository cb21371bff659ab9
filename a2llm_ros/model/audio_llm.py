"""Audio LLM backbone, vocabulary layout and the text/speech interleaving schedule.

Backbone
--------
A Hugging Face ``Qwen2ForCausalLM``.  ``tiny`` builds it from a ``Qwen2Config``
(random weights); ``edge`` / ``paper`` load it from a LOCAL directory in
Hugging Face layout (``LLMConfig.hf_path``: config.json + safetensors +
tokenizer files) with ``from_pretrained(path, local_files_only=True)`` and
extend the vocabulary with ``resize_token_embeddings``.

* ``edge``: Qwen2.5-0.5B shape (Qwen2.5-0.5B facts: hidden 896, 24 layers,
  14 heads, 2 KV heads, FFN 4864, vocab 151936, tied embeddings, rope_theta
  1e6).  Chosen over 1.5B for Jetson Orin memory and latency.
* ``paper``: Qwen2.5-7B shape, the LLM of Step-Audio-2-mini (Qwen2.5-7B facts:
  hidden 3584, 28 layers, 28 heads, 4 KV heads, FFN 18944, rope_theta 1e6,
  untied embeddings, vocab 152064 in the released config).
* ``tiny``: hidden 256, 4 layers, 4 heads, 2 KV heads, FFN 768 (CPU tests).

Vocabulary layout (:class:`VocabLayout`)
---------------------------------------
``[text 0 .. T-1][specials: SPECIAL_TOKENS][speech 0 .. n_codes-1]`` with
``T = LLMConfig.text_vocab_size`` (>= the text tokenizer's size; for HF
backbones the base model's embedding rows).

Sequence and interleaving (:class:`Schedule`)
---------------------------------------------
(Training also uses ``... <audio_in_end> <transcribe> question text <text_end>``,
an auxiliary speech-recognition task that teaches the audio path what was
said; generation always continues after ``<answer>``.)

``<bos> <audio_in_start> [audio embeddings, 12.5 Hz] <audio_in_end> <answer>``
then groups of ``text_per_group`` text tokens followed by ``speech_per_group``
speech tokens.  The text stream is the answer's text ids followed by
``<text_end>``; the speech stream is the answer's speech tokens followed by
``<speech_end>``.  A text phase ends after ``text_per_group`` tokens or at
``<text_end>``; a speech phase ends after ``speech_per_group`` tokens; once
``<text_end>`` was emitted only speech follows, once ``<speech_end>`` was
emitted only text follows, and the answer is complete when both ended.
:func:`build_answer_sequence` (training targets) and the generator use the
same :class:`Schedule`, so both always agree on the kind of every position;
decoding masks the logits to the allowed range (text + ``<text_end>`` or
speech + ``<speech_end>``).

Default groups: ``tiny`` (characters) 4 text : 5 speech.  Measured on the 50
FLAME-QA answers spoken by espeak-ng: 30.4 characters in 1.97 s on average,
i.e. 0.62 characters per 25 Hz speech token, so 4:5 (0.8) keeps the text
ahead of the speech (3:5 = 0.6 would fall behind).  ``edge`` / ``paper``
(BPE, ~4 characters per token -> ~0.15 tokens per speech token) use 2:5.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

from a2llm_ros.configbase import ConfigBase

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<audio_in_start>", "<audio_in_end>",
                  "<answer>", "<text_end>", "<speech_end>", "<transcribe>")
TEXT, SPEECH = "text", "speech"
#: Label value ignored by the cross-entropy.
IGNORE_INDEX = -100


@dataclass
class LLMConfig(ConfigBase):
    """Qwen2 backbone shape, or a local Hugging Face directory (``hf_path``)."""

    hidden_size: int = 896
    n_layers: int = 24
    n_heads: int = 14
    n_kv_heads: int = 2
    intermediate_size: int = 4864
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    #: Text ids occupy [0, text_vocab_size); specials and speech follow.
    text_vocab_size: int = 151936
    #: Local HF directory of the pretrained backbone ("" = build from this config).
    hf_path: str = ""

    PRESETS = {
        "tiny": dict(hidden_size=256, n_layers=4, n_heads=4, n_kv_heads=2,
                     intermediate_size=768, max_position_embeddings=4096,
                     tie_word_embeddings=False, text_vocab_size=128, hf_path=""),
        "edge": dict(hidden_size=896, n_layers=24, n_heads=14, n_kv_heads=2,
                     intermediate_size=4864, max_position_embeddings=32768,
                     tie_word_embeddings=True, text_vocab_size=151936,
                     hf_path="llm"),
        "paper": dict(hidden_size=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                      intermediate_size=18944, max_position_embeddings=32768,
                      tie_word_embeddings=False, text_vocab_size=152064,
                      hf_path="llm"),
    }


@dataclass
class InterleaveConfig(ConfigBase):
    """Text/speech group sizes of the answer (see module docstring)."""

    text_per_group: int = 4
    speech_per_group: int = 5

    PRESETS = {
        "tiny": dict(text_per_group=4, speech_per_group=5),
        "edge": dict(text_per_group=2, speech_per_group=5),
        "paper": dict(text_per_group=2, speech_per_group=5),
    }

    def __post_init__(self):
        if self.text_per_group < 1 or self.speech_per_group < 1:
            raise ValueError("InterleaveConfig: group sizes must be >= 1")


# ----------------------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class VocabLayout:
    """Id ranges of the extended vocabulary."""

    n_text: int
    n_speech: int
    specials: Tuple[str, ...] = SPECIAL_TOKENS

    @property
    def special_start(self) -> int:
        return self.n_text

    @property
    def speech_start(self) -> int:
        return self.n_text + len(self.specials)

    @property
    def size(self) -> int:
        return self.speech_start + self.n_speech

    def special(self, name: str) -> int:
        """Id of a special token, e.g. ``special("<bos>")``."""
        return self.n_text + self.specials.index(name)

    def speech_id(self, code):
        """Speech code(s) ``0..n_speech-1`` -> vocabulary id(s)."""
        return code + self.speech_start

    def speech_code(self, token_id):
        """Vocabulary id(s) -> speech code(s)."""
        return token_id - self.speech_start

    def is_speech(self, token_id: int) -> bool:
        return self.speech_start <= token_id < self.size

    def is_text(self, token_id: int) -> bool:
        return 0 <= token_id < self.n_text

    def kind_mask(self, kind: str, n_text_used: Optional[int] = None,
                  device=None) -> torch.Tensor:
        """Bool [size]: ids allowed when the next token is of ``kind``."""
        mask = torch.zeros(self.size, dtype=torch.bool, device=device)
        if kind == TEXT:
            mask[:n_text_used if n_text_used is not None else self.n_text] = True
            mask[self.special("<text_end>")] = True
        else:
            mask[self.speech_start:] = True
            mask[self.special("<speech_end>")] = True
        return mask


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
    n_text: int = 0       # text ids pushed (without <text_end>)
    n_speech: int = 0     # speech tokens pushed (without <speech_end>)

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
    """Answer ids after ``<answer>`` with the kind of each position."""

    ids: List[int] = field(default_factory=list)
    is_text: List[bool] = field(default_factory=list)     # text id or <text_end>
    is_speech_token: List[bool] = field(default_factory=list)  # speech id (not the end)


def build_answer_sequence(text_ids: Sequence[int], speech_codes: Sequence[int],
                          vocab: VocabLayout, cfg: InterleaveConfig) -> AnswerSequence:
    """Interleave text ids and speech codes (0..n_codes-1) into the answer sequence."""
    text = list(text_ids) + [vocab.special("<text_end>")]
    speech = [vocab.speech_id(int(c)) for c in speech_codes] + [vocab.special("<speech_end>")]
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
    return out


# ----------------------------------------------------------------------------- backbone

def qwen2_config(cfg: LLMConfig, vocab_size: int):
    """``transformers.Qwen2Config`` for a backbone built from ``cfg``."""
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_kv_heads, rope_theta=cfg.rope_theta,
                       rms_norm_eps=cfg.rms_norm_eps,
                       max_position_embeddings=cfg.max_position_embeddings,
                       tie_word_embeddings=cfg.tie_word_embeddings,
                       use_sliding_window=False, attention_dropout=0.0)


def resolve_hf_path(hf_path: str, base_dir: Optional[str]) -> str:
    """Absolute backbone directory: ``hf_path`` as is, or relative to ``base_dir``."""
    if os.path.isabs(hf_path) or base_dir is None:
        return hf_path
    return os.path.join(base_dir, hf_path)


def check_backbone_shape(cfg: LLMConfig, hf_cfg) -> None:
    """Raise ValueError naming the fields where the HF backbone differs from ``cfg``."""
    pairs = {"hidden_size": hf_cfg.hidden_size, "n_layers": hf_cfg.num_hidden_layers,
             "n_heads": hf_cfg.num_attention_heads, "n_kv_heads": hf_cfg.num_key_value_heads,
             "intermediate_size": hf_cfg.intermediate_size}
    bad = [f"{k} (config {getattr(cfg, k)}, backbone {v})" for k, v in pairs.items()
           if getattr(cfg, k) != v]
    if bad:
        raise ValueError("LLM backbone does not match LLMConfig: " + ", ".join(bad))


def build_llm(cfg: LLMConfig, vocab: VocabLayout, base_dir: Optional[str] = None,
              dtype: torch.dtype = torch.float32):
    """The backbone with ``vocab.size`` embedding rows (HF weights when ``hf_path``)."""
    from transformers import Qwen2ForCausalLM
    if not cfg.hf_path:
        model = Qwen2ForCausalLM(qwen2_config(cfg, vocab.size))
        return model.to(dtype)
    path = resolve_hf_path(cfg.hf_path, base_dir)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"LLM backbone directory {path!r} has no config.json "
                                f"(LLMConfig.hf_path={cfg.hf_path!r})")
    model = Qwen2ForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    check_backbone_shape(cfg, model.config)
    n_base = model.get_input_embeddings().weight.shape[0]
    if n_base != cfg.text_vocab_size:
        raise ValueError(f"LLM backbone at {path} has {n_base} embedding rows but "
                         f"LLMConfig.text_vocab_size is {cfg.text_vocab_size}")
    model.resize_token_embeddings(vocab.size, mean_resizing=False)
    return model


def base_causal_lm(llm):
    """The ``Qwen2ForCausalLM`` inside a possible PEFT wrapper."""
    return llm.get_base_model() if hasattr(llm, "peft_config") else llm


def llm_hidden(llm, inputs_embeds, attention_mask=None, cache=None):
    """Backbone without the LM head: -> last hidden [B, T, H] after the final norm.

    ``cache`` (a ``transformers`` ``DynamicCache``) is extended in place.
    """
    lm = base_causal_lm(llm)  # PEFT injects its LoRA layers into this model in place
    out = lm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                   cache=cache, use_cache=cache is not None)
    return out.last_hidden_state


def llm_logits(llm, hidden):
    """LM head: hidden [..., H] -> logits [..., V]."""
    return base_causal_lm(llm).lm_head(hidden)


def llm_hidden_and_logits(llm, inputs_embeds, attention_mask=None, cache=None):
    """Run the backbone: -> (last hidden [B, T, H] after the final norm, logits [B, T, V])."""
    hidden = llm_hidden(llm, inputs_embeds, attention_mask, cache)  # [B, T, H]
    return hidden, llm_logits(llm, hidden)


def new_cache(llm):
    """An empty KV cache for incremental decoding."""
    from transformers import DynamicCache
    return DynamicCache(config=base_causal_lm(llm).config)
