"""Every speech codec kind, and the factory that builds one from its config.

The base classes, the registry and the k-means codec are in
:mod:`a2llm_ros.model.speech_codec`; Step-Audio-2-mini's codec is in
:mod:`a2llm_ros.model.step_token2wav`.  Importing both here registers their
kinds, so neither module needs the other's factory.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from a2llm_ros.model import step_token2wav  # noqa: F401 (registers step_token2wav)
from a2llm_ros.model.speech_codec import REGISTRY, SpeechTokenizer, Token2Wav
from a2llm_ros.model.configs import SpeechCodecConfig

__all__ = ["make_codec", "codec_kinds"]


def codec_kinds() -> Sequence[str]:
    """Registered codec kinds."""
    return tuple(REGISTRY)


def make_codec(cfg: Optional[SpeechCodecConfig] = None,
               folder: Optional[str] = None) -> Tuple[SpeechTokenizer, Token2Wav]:
    """Build ``(tokenizer, token2wav)`` for ``cfg.kind`` (default config if None).

    ``folder``: where a pretrained codec's files are (``step_token2wav``: the
    ``token2wav/`` folder when ``cfg.token2wav_dir`` is empty or relative).
    """
    cfg = cfg or SpeechCodecConfig()
    if cfg.kind not in REGISTRY:
        raise KeyError(f"unknown speech codec kind {cfg.kind!r}; known: "
                       f"{', '.join(REGISTRY)}")
    if folder is not None:
        return REGISTRY[cfg.kind](cfg, folder)
    return REGISTRY[cfg.kind](cfg)
