"""The LLM's tokenizer: Hugging Face tokenizer files, special tokens resolved by name.

Every preset reads tokenizer files (``tokenizer.json`` + ``tokenizer_config.json``)
with ``transformers`` and no downloads:

* a Step-Audio-2-mini folder ships its own (Qwen2 BPE plus added tokens);
* ``tiny`` has its own small one, made by :func:`make_tiny_tokenizer` and stored in
  the checkpoint directory: one id per printable ASCII character (and newline),
  then the same named special tokens as Step's, then the speech tokens
  ``<audio_0>`` ... ``<audio_{n}>`` (the last one is the padding code).

The chat and speech tokens are always looked up by name (:data:`CHAT_TOKENS`,
:func:`speech_token`), never by number.
"""
from __future__ import annotations

import json
import os
import string
from typing import List, Sequence


#: Named tokens of Step-Audio-2's chat format that every tokenizer must have.
CHAT_TOKENS = ("<|BOT|>", "<|EOT|>", "<audio_start>", "<audio_end>", "<audio_patch>",
               "<tts_start>", "<tts_end>", "<tts_pad>")
#: Characters of the tiny tokenizer (printable ASCII without vertical whitespace, plus \n).
TINY_CHARS = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")
UNK = "\ufffd"
#: Files a tokenizer directory holds.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def speech_token(code: int) -> str:
    """Name of speech code ``code`` in Step's vocabulary (``<audio_{code}>``)."""
    return f"<audio_{int(code)}>"


class TokenizerError(ValueError):
    """Tokenizer files are missing or lack a required token."""


class TextTokenizer:
    """A Hugging Face tokenizer with the chat/speech tokens resolved by name."""

    def __init__(self, tok, path: str = ""):
        self.tok, self.path = tok, path
        vocab = tok.get_vocab()
        missing = [t for t in CHAT_TOKENS if t not in vocab]
        if missing:
            raise TokenizerError(f"tokenizer {path or '(in memory)'} lacks the special tokens "
                                 f"{', '.join(missing)} (Step-Audio-2 chat format)")
        if speech_token(0) not in vocab:
            raise TokenizerError(f"tokenizer {path or '(in memory)'} has no speech token "
                                 f"{speech_token(0)}")
        self._vocab = vocab
        unk = getattr(tok, "unk_token_id", None)
        self.unk_id = int(unk) if unk is not None else None

    @classmethod
    def load(cls, path: str) -> "TextTokenizer":
        """Tokenizer files of a local directory (no downloads)."""
        from transformers import PreTrainedTokenizerFast
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            raise TokenizerError(f"{path}: no tokenizer.json (tokenizer files expected here)")
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"{path}: cannot read the tokenizer files: {exc}") from exc
        return cls(tok, path)

    def save(self, path: str) -> None:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` into ``path``."""
        os.makedirs(path, exist_ok=True)
        self.tok.save_pretrained(path)

    def token_id(self, name: str) -> int:
        """Id of a named token, e.g. ``token_id("<tts_start>")``."""
        if name not in self._vocab:
            raise TokenizerError(f"tokenizer {self.path} has no token {name!r}")
        return int(self._vocab[name])

    def has_token(self, name: str) -> bool:
        return name in self._vocab

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> List[int]:
        """Text -> ids (named special tokens in the text are recognised; no BOS added)."""
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text ids -> text."""
        return self.tok.decode(list(ids), skip_special_tokens=True,
                               clean_up_tokenization_spaces=False)


def make_tiny_tokenizer(n_codes: int) -> TextTokenizer:
    """The ``tiny`` tokenizer: characters, the chat tokens, ``<audio_0..n_codes>``.

    Layout: ``[UNK, chars...][<|BOT|> <|EOT|>][<audio_start> ... <tts_pad>]
    [<audio_0> ... <audio_{n_codes}>]``, so, as in Step's, text ids lie below
    ``<audio_start>`` and speech code k is ``<audio_0>`` + k.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    chars = [UNK] + list(dict.fromkeys(TINY_CHARS))
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[],
                                unk_token=UNK))
    core.decoder = decoders.Fuse()
    specials = list(CHAT_TOKENS) + [speech_token(k) for k in range(n_codes + 1)]
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK)
    return TextTokenizer(tok, "tiny")


__all__ = ["TextTokenizer", "TokenizerError", "CHAT_TOKENS",
           "make_tiny_tokenizer", "speech_token", "TOKENIZER_FILES"]
