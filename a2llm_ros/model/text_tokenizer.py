"""Pluggable text tokenizers for the answer text of the audio LLM.

* :class:`CharTokenizer` — one id per character, vocabulary generated from a
  list of texts (or printable ASCII), stored as JSON in the checkpoint
  (``tokenizer.json``).  Id 0 is the unknown character.  Default of ``tiny``.
* :class:`HFTokenizer` — a Hugging Face tokenizer loaded from a LOCAL directory
  (``AutoTokenizer.from_pretrained(dir, local_files_only=True)``); used by the
  ``edge`` / ``paper`` presets whose LLM backbone ships its own tokenizer.

Both give plain text-token ids in ``[0, vocab_size)``; the LLM vocabulary
layout (:class:`a2llm_ros.model.audio_llm.VocabLayout`) places its special and
speech tokens after ``LLMConfig.text_vocab_size`` so that the text ids never
change meaning.
"""
from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from typing import Iterable, List, Sequence

from a2llm_ros.configbase import ConfigBase

#: Printable ASCII without the vertical whitespace characters.
PRINTABLE = "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")
UNK = "\ufffd"


@dataclass
class TextTokenizerConfig(ConfigBase):
    """Which text tokenizer to use: ``kind`` is ``"char"`` or ``"hf"``.

    For ``"hf"`` the tokenizer files are read from ``LLMConfig.hf_path``.
    """

    kind: str = "char"

    PRESETS = {"tiny": dict(kind="char"), "edge": dict(kind="hf"), "paper": dict(kind="hf")}

    def __post_init__(self):
        if self.kind not in ("char", "hf"):
            raise ValueError(f"TextTokenizerConfig.kind must be 'char' or 'hf', got {self.kind!r}")


class TextTokenizer:
    """Interface: text <-> ids in ``[0, vocab_size)``."""

    kind = "base"

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> List[int]:
        """Text -> token ids (no special tokens)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text."""
        raise NotImplementedError


class CharTokenizer(TextTokenizer):
    """Character-level tokenizer; id 0 is the unknown character."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = [c for c in dict.fromkeys(chars) if c != UNK]
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer: every vocabulary entry must be one character")
        self.chars = [UNK] + chars
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], base: str = PRINTABLE) -> "CharTokenizer":
        """Vocabulary = ``base`` characters plus every other character seen in ``texts``."""
        seen = list(base)
        for text in texts:
            seen.extend(text)
        return cls(seen)

    @classmethod
    def printable_ascii(cls) -> "CharTokenizer":
        """The default tiny vocabulary: printable ASCII (96 ids with UNK)."""
        return cls(PRINTABLE)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> List[int]:
        return [self.index.get(c, 0) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] if 0 <= i < len(self.chars) else UNK for i in ids)

    def to_json(self) -> str:
        """JSON text stored as ``tokenizer.json`` in a checkpoint."""
        return json.dumps({"kind": "char", "chars": self.chars[1:]}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        data = json.loads(text)
        if data.get("kind") != "char" or not isinstance(data.get("chars"), list):
            raise ValueError("tokenizer.json is not a char tokenizer vocabulary")
        return cls(data["chars"])


#: ``tokenizer_class`` values meaning "a plain tokenizer.json" (not tied to a model type).
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_hf_tokenizer(path: str):
    """Tokenizer of a local HF directory, without downloads.

    ``AutoTokenizer`` normally; when ``tokenizer_config.json`` declares a
    generic fast tokenizer it is loaded as ``PreTrainedTokenizerFast``
    (``AutoTokenizer`` would pick the model type's class from ``config.json``
    and ignore a custom ``tokenizer.json``).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    cfg_path = os.path.join(path, "tokenizer_config.json")
    declared = None
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            declared = json.load(f).get("tokenizer_class")
    if declared in GENERIC_TOKENIZER_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


class HFTokenizer(TextTokenizer):
    """A Hugging Face tokenizer from a local directory (no downloads)."""

    kind = "hf"

    def __init__(self, path: str):
        self.path = path
        self.tok = load_hf_tokenizer(path)

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> List[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True,
                               clean_up_tokenization_spaces=False)
