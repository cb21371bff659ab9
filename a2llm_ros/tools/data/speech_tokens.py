"""Training targets for Step's codec: answer audio -> 25 Hz S3 speech tokens.

:func:`tokenize_answers` runs the ``token2wav/`` folder's ONNX tokenizer
(:class:`a2llm_ros.model.step_token2wav.S3SpeechTokenizer`) over every
answer of a FLAME-QA directory in batches (identical answers once) and writes
``<dir>/speech_tokens_s3.npz``: one int16 array per sample id plus a
``__meta__`` JSON entry (codec kind, token rate, tokenizer file size).
:func:`load_answer_tokens` reads it back.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from a2llm_ros.tools.data.flameqa import FlameQAReader

TOKENS_FILE = "speech_tokens_s3.npz"
META_KEY = "__meta__"


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def tokenize_answers(root: str, tokenizer, batch: int = 8, splits: Optional[List[str]] = None,
                     out: Optional[str] = None, progress: bool = True) -> str:
    """Tokenize every answer of ``root`` (all splits by default); returns the file written.

    ``tokenizer`` needs ``encode_batch(waves) -> list of int tensors`` (16 kHz waves).
    """
    from tqdm import tqdm
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    samples = list(FlameQAReader(root, split=splits))
    if not samples:
        raise ValueError(f"{root}: no valid samples to tokenize")
    by_key: Dict[str, np.ndarray] = {}
    ids: Dict[str, str] = {}
    for s in samples:
        key = hashlib.sha1(s.answer_audio.tobytes()).hexdigest()
        ids[s.id] = key
        by_key.setdefault(key, s.answer_audio)
    keys = list(by_key)
    codes: Dict[str, np.ndarray] = {}
    bar = tqdm(total=len(keys), desc="speech tokens", unit="answer", disable=not progress)
    for group in _batches(keys, batch):
        for key, ids_k in zip(group, tokenizer.encode_batch([by_key[k] for k in group])):
            codes[key] = ids_k.numpy().astype(np.int16)
        bar.update(len(group))
    bar.close()
    path = out or os.path.join(root, TOKENS_FILE)
    meta = {"codec": "step_token2wav", "token_rate": 25, "n_samples": len(ids),
            "n_unique": len(keys), "tokenizer_bytes": os.path.getsize(tokenizer.path)
            if hasattr(tokenizer, "path") else None}
    arrays = {sid: codes[key] for sid, key in ids.items()}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    return path


def load_answer_tokens(path: str) -> Dict[str, np.ndarray]:
    """Sample id -> int64 speech tokens, from a file written by :func:`tokenize_answers`."""
    with np.load(path) as data:
        if META_KEY not in data:
            raise ValueError(f"{path}: not a speech-token file (no {META_KEY})")
        return {k: data[k].astype(np.int64) for k in data.files if k != META_KEY}
