"""What the generator needs from a checkpoint when the networks run in an engine.

:class:`ModelInfo` stands in for :class:`~a2llm_ros.model.a2llm.A2LLM` as
``Backend.model`` of the ONNX Runtime and TensorRT backends: configs,
vocabulary, text tokenizer and chat prompt, FLAME layout, the log-mel front
end and the speech codec (its small tensors are read from the checkpoint's
safetensors), without building or loading the neural networks.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch

from a2llm_ros.audio.features import log_mel_spectrogram, mel_filterbank
from a2llm_ros.checkpoint_files import (CODEC_PREFIX, CheckpointError, load_text_tokenizer,
                                        read_config, resolve_checkpoint)
from a2llm_ros.constants import WEIGHTS_FILE
from a2llm_ros.flame.layout import FlameLayout
from a2llm_ros.model.chat import TASK_ANSWER, Prompt, Vocab, build_prompt
from a2llm_ros.model.a2llm import codec_folder
from a2llm_ros.model.codecs import make_codec
from a2llm_ros.model.speech_codec import load_codec_state_dict


class ModelInfo:
    """Configs, tokenizer, vocabulary, layouts and codec of a checkpoint (no network weights).

    Attributes used by :mod:`a2llm_ros.generation`: ``cfg``, ``vocab``,
    ``text_tokenizer``, ``layout``, ``device``, :meth:`log_mel`,
    :meth:`prompt`; also ``speech_tokenizer`` / ``token2wav`` (the fitted
    codec) and ``checkpoint_dir``.
    """

    def __init__(self, checkpoint_dir: str, n_params: Optional[int] = None):
        self.checkpoint_dir = resolve_checkpoint(checkpoint_dir)
        self.cfg = cfg = read_config(self.checkpoint_dir)
        self.layout = FlameLayout(n_expr=cfg.motion.n_expr)
        self.text_tokenizer = load_text_tokenizer(self.checkpoint_dir, cfg)
        try:
            self.vocab = Vocab.from_tokenizer(self.text_tokenizer, cfg.codec.n_codes,
                                              cfg.llm.vocab_size)
        except ValueError as exc:  # a named token missing, ids beyond the LLM's rows
            raise CheckpointError(f"{self.checkpoint_dir}: {exc}") from exc
        self.mel_filters = mel_filterbank(cfg.mel)
        self.speech_tokenizer, self.token2wav = make_codec(
            cfg.codec, codec_folder(cfg, self.checkpoint_dir))
        self._load_codec()
        self.device = torch.device("cpu")
        self._n_params = n_params

    def _load_codec(self) -> None:
        from safetensors import safe_open
        path = os.path.join(self.checkpoint_dir, WEIGHTS_FILE)
        if not os.path.isfile(path):
            raise CheckpointError(f"{self.checkpoint_dir}: missing {WEIGHTS_FILE}")
        state = {}
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if key.startswith(CODEC_PREFIX):
                    state[key[len(CODEC_PREFIX):]] = f.get_tensor(key)
        try:
            load_codec_state_dict(self.speech_tokenizer, self.token2wav, state)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"speech codec weights ({CODEC_PREFIX}*): {exc}") from exc

    def log_mel(self, wave) -> torch.Tensor:
        """Question wave [N] float32 16 kHz -> log-mel [M, N // 160] (as ``A2LLM.log_mel``)."""
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        return log_mel_spectrogram(wave, self.cfg.mel, self.mel_filters)

    def prompt(self, n_patches: int, task: int = TASK_ANSWER) -> Prompt:
        """The chat prompt's ids for ``n_patches`` audio positions (as ``A2LLM.prompt``)."""
        return build_prompt(self.text_tokenizer, self.vocab, n_patches, task)

    def n_params(self) -> int:
        """Parameter count of the networks (from the export manifest; 0 when unknown)."""
        return int(self._n_params or 0)

    def eval(self) -> "ModelInfo":
        return self

    def __repr__(self) -> str:
        return (f"ModelInfo({self.checkpoint_dir!r}, preset={self.cfg.preset_name!r}, "
                f"vocab={self.vocab.size})")

    def to_json(self) -> str:
        return json.dumps({"checkpoint": self.checkpoint_dir, "preset": self.cfg.preset_name})
