"""What the generator needs from a checkpoint when the networks run in an engine.

:class:`ModelInfo` stands in for :class:`~a2llm_ros.model.a2llm.A2LLM` as
``Backend.model`` of the ONNX Runtime and TensorRT backends: configs,
vocabulary, text tokenizer and chat prompt, FLAME layout, the log-mel front
end (:mod:`a2llm_ros.audio.mel`) and the speech codec's rates, without building
or loading the neural networks, and without torch.  The graphs cover the
``kmeans_mel`` speech codec only (its decoder is the ``token2wav`` graph);
other codecs run in PyTorch (backend kind ``torch``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from a2llm_ros.audio.mel import log_mel, mel_filterbank
from a2llm_ros.checkpoint_files import (CheckpointError, load_text_tokenizer, read_config,
                                        resolve_checkpoint)
from a2llm_ros.constants import SPEECH_TOKEN_RATE, WEIGHTS_FILE
from a2llm_ros.engines.config import EngineError
from a2llm_ros.flame.layout import FlameLayout
from a2llm_ros.model.chat import TASK_ANSWER, Prompt, Vocab, build_prompt

#: The speech codec the exported graphs implement.
GRAPH_CODEC = "kmeans_mel"


@dataclass(frozen=True)
class CodecInfo:
    """The rates of the graphs' speech codec (its decoder is the ``token2wav`` graph)."""

    sample_rate: int

    @property
    def samples_per_token(self) -> int:
        return self.sample_rate // SPEECH_TOKEN_RATE


class ModelInfo:
    """Configs, tokenizer, vocabulary, layouts and codec rates of a checkpoint (no networks).

    Attributes used by :mod:`a2llm_ros.generation` and the graph backends: ``cfg``,
    ``vocab``, ``text_tokenizer``, ``layout``, ``device``, ``token2wav``
    (:class:`CodecInfo`), :meth:`log_mel`, :meth:`prompt`; also ``checkpoint_dir``.
    """

    def __init__(self, checkpoint_dir: str, n_params: Optional[int] = None):
        self.checkpoint_dir = resolve_checkpoint(checkpoint_dir)
        self.cfg = cfg = read_config(self.checkpoint_dir)
        if cfg.codec.kind != GRAPH_CODEC:
            raise EngineError(f"{self.checkpoint_dir}: the exported graphs cover the "
                              f"{GRAPH_CODEC} speech codec only; this checkpoint's codec is "
                              f"{cfg.codec.kind} (use backend kind 'torch')")
        if not os.path.isfile(os.path.join(self.checkpoint_dir, WEIGHTS_FILE)):
            raise CheckpointError(f"{self.checkpoint_dir}: missing {WEIGHTS_FILE}")
        self.layout = FlameLayout(n_expr=cfg.motion.n_expr)
        self.text_tokenizer = load_text_tokenizer(self.checkpoint_dir, cfg)
        try:
            self.vocab = Vocab.from_tokenizer(self.text_tokenizer, cfg.codec.n_codes,
                                              cfg.llm.vocab_size)
        except ValueError as exc:  # a named token missing, ids beyond the LLM's rows
            raise CheckpointError(f"{self.checkpoint_dir}: {exc}") from exc
        self.mel_filters = mel_filterbank(cfg.mel)  # [M, F]
        self.token2wav = CodecInfo(cfg.codec.sample_rate)
        self.device = "cpu"
        self._n_params = n_params

    def log_mel(self, wave) -> np.ndarray:
        """Question wave [N] float32 16 kHz -> log-mel [M, N // 160] (as ``A2LLM.log_mel``)."""
        return log_mel(np.asarray(wave, dtype=np.float32), self.cfg.mel, self.mel_filters)

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
