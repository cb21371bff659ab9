"""The generator's interface to an inference engine: narrow, array-typed, torch-free.

:class:`~a2llm_ros.generation.StreamingGenerator` asks a :class:`Backend` for five
things, all with NumPy arrays and Python ints at the boundary:

* ``prefill(wave, pick, rng)``: question wave [N] -> the first answer token, the LLM
  hidden state at the last prompt position and the KV cache;
* ``decode(token, cache, pick, rng)``: feed one token -> the next token, the hidden
  state at the fed token's position and the cache;
* ``motion_step(hidden, state, ...)``: five speech tokens' hidden states -> the next
  5 FLAME frames [5, D] (Motion Connector, then the RVQ-VAE decoder);
* ``codec_step(codes, state)`` / ``codec_flush(state)``: speech codes [n] -> the
  audio [m] that is ready;
* ``host(hidden)``: a hidden state as a float32 host vector [H].

The backend samples the next token itself, on its own device, as :class:`Pick`
says (temperature, top-k, the kind an enforced schedule expects, a banned or a
forced id), so the logits never leave the device for the generator; hidden
states stay backend values (device tensors for PyTorch, arrays for the engine
runners) until ``host`` or ``motion_step`` takes them.  Random draws come from
the backend's own generator (``rng(seed)``): the same seed gives the same answer
on the same backend and device.

Implementations: :class:`~a2llm_ros.engines.torch_backend.TorchBackend` (the
PyTorch model) and :class:`~a2llm_ros.engines.graph_backend.GraphBackend` (the
exported graphs on ONNX Runtime or TensorRT).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

#: (token id, hidden state, KV cache) after a prefill or a decode step.
LLMStep = Tuple[int, Any, Any]


@dataclass(frozen=True)
class Pick:
    """How the backend chooses the next token from its logits.

    ``allowed`` is ``"text"`` or ``"speech"`` when an enforced schedule expects that
    kind (the vocabulary's kind mask, :meth:`a2llm_ros.model.chat.Vocab.kind_mask`);
    ``banned`` is one more id masked out; ``forced`` skips sampling (no random draw).
    Temperature 0 takes the most likely token.
    """

    temperature: float = 0.0
    top_k: int = 0
    allowed: Optional[str] = None
    banned: Optional[int] = None
    forced: Optional[int] = None


class Backend:
    """Per-turn model calls of the generator (see module docstring).

    ``model`` is the :class:`~a2llm_ros.model.a2llm.A2LLM` for PyTorch, else a
    :class:`~a2llm_ros.engines.model_info.ModelInfo`: configs, vocabulary, text
    tokenizer, chat prompt, FLAME layout and the codec's rates, without networks.
    """

    kind: str = "base"
    model: Any

    def rng(self, seed: int) -> Any:
        """A random generator for this backend's draws, seeded."""
        raise NotImplementedError

    def prefill(self, wave: np.ndarray, pick: Pick, rng: Any) -> LLMStep:
        """Question wave float32 [N] at 16 kHz -> (first token, hidden [E, H] of the
        prompt's last ``E`` positions (``Prompt.tail``: the last audio position and the
        chat template after it), cache)."""
        raise NotImplementedError

    def decode(self, token: int, cache: Any, pick: Pick, rng: Any) -> LLMStep:
        """Feed ``token`` -> (next token, hidden [H] at ``token``'s position, cache)."""
        raise NotImplementedError

    def host(self, hidden: Any) -> np.ndarray:
        """Hidden states [..., H] as a flat float32 host vector."""
        return np.asarray(hidden, np.float32).reshape(-1)

    def init_motion_state(self) -> Any:
        raise NotImplementedError

    def motion_step(self, hidden: Sequence[Any], state: Any, temperature: float,
                    top_k: int, rng: Any) -> Tuple[np.ndarray, Any]:
        """Hidden states of five speech tokens -> (FLAME frames float32 [5, D], state)."""
        raise NotImplementedError

    def init_codec_state(self) -> Any:
        raise NotImplementedError

    def codec_step(self, codes: np.ndarray, state: Any) -> Tuple[np.ndarray, Any]:
        """Speech codes int64 [n] -> (audio float32 ready so far [m], state)."""
        raise NotImplementedError

    def codec_flush(self, state: Any) -> Tuple[np.ndarray, Any]:
        """End of the answer: (the audio still held back float32 [m], state)."""
        raise NotImplementedError


def pick_from_host_logits(logits: np.ndarray, pick: Pick, masks, rng: np.random.Generator
                          ) -> int:
    """:class:`Pick` on host logits [V]: the masks applied here (``masks`` maps ``"text"`` /
    ``"speech"`` to bool [V] arrays), then the pick's top-k ranked and drawn from as
    :func:`pick_from_top` does (all of V for top-k 0)."""
    if pick.forced is not None:
        return int(pick.forced)
    x = np.asarray(logits, np.float64).reshape(-1)
    if pick.allowed is not None:
        keep = masks[pick.allowed].copy()
        if pick.banned is not None:
            keep[pick.banned] = False
        x = np.where(keep, x, -np.inf)
    if pick.temperature <= 0:
        return int(np.argmax(x))
    k = pick.top_k if 0 < pick.top_k < x.size else x.size
    ids = np.argpartition(-x, k - 1)[:k]  # the k largest, unordered
    ids = ids[np.argsort(-x[ids], kind="stable")]  # [k] descending
    return pick_from_top(x[ids], ids, dataclasses.replace(pick, top_k=k), rng)


def pick_from_top(values: np.ndarray, ids: np.ndarray, pick: Pick,
                  rng: np.random.Generator) -> int:
    """:class:`Pick` on a graph's ranked top tokens: ``values`` [K] descending (the pick's
    masks already applied in the graph), ``ids`` [K].  The pick's ``top_k`` must be
    1..K when it samples (the caller fetches the whole logits otherwise)."""
    if pick.forced is not None:
        return int(pick.forced)
    if pick.temperature <= 0:
        return int(ids[0])
    x = np.asarray(values[:pick.top_k], np.float64) / float(pick.temperature)
    p = np.exp(x - x.max())
    return int(ids[rng.choice(x.size, p=p / p.sum())])
