"""The generator's :class:`~a2llm_ros.engines.backend.Backend` on top of exported graphs.

:class:`GraphBackend` implements every Backend method with the graphs of
:mod:`a2llm_ros.tools.export.graphs` through a *runner* (ONNX Runtime sessions or
TensorRT engines) with one method::

    runner.run(graph, feeds, profile=None, host=()) -> {output name: value}

``feeds`` values are NumPy arrays, :class:`Zeros` markers (a zero tensor the
runner may create on the device) or values a previous ``run`` returned
(device-resident for TensorRT).  Outputs named in ``host`` come back as NumPy
arrays, the others may stay on the device.  State objects (KV cache,
connector windows, decoder caches) hold such values; the generator treats
them as opaque.  With the TensorRT runner a state stays valid until the
next-but-one call of the same engine (double-buffered outputs), which the
generator's one-turn-at-a-time use satisfies.

Everything here is NumPy: tokens are sampled from the host logits with a NumPy
generator (:func:`~a2llm_ros.engines.backend.pick_from_host_logits`), the motion
codes inside the ``connector_step`` graph from Gumbel noise drawn the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from a2llm_ros.constants import SAMPLES_PER_SPEECH_TOKEN
from a2llm_ros.engines.backend import (Backend, LLMStep, Pick, pick_from_host_logits,
                                       pick_from_top)
from a2llm_ros.engines.config import EngineError
from a2llm_ros.engines.manifest import KIND_INDEX, MAX_EMBED_IDS, NEEDED
from a2llm_ros.model.chat import SPEECH, TEXT, n_positions, splice_audio
from a2llm_ros.model.configs import refiner_empty_code, refiner_pad_code

#: Gumbel noise is drawn from uniforms clamped to [TINY, 1 - TINY].
GUMBEL_TINY = 1e-10
#: Host-side entry of the codec state: codes pushed through the token2wav graph this turn.
PUSHED = "pushed"


def undecoded_calls(lookahead: int, pushed: int, n: int) -> int:
    """How many of ``n`` token2wav graph calls, after ``pushed`` earlier calls this turn,
    decode nothing: with a mel refiner, the first ``lookahead`` calls of a turn only fill
    its window (their audio is dropped)."""
    return min(n, max(0, lookahead - pushed))


@dataclass(frozen=True)
class Zeros:
    """A zero-filled input of ``shape`` (the runner chooses dtype and placement)."""

    shape: Tuple[int, ...]


@dataclass
class EngineKV:
    """LLM KV cache held by the runner: ``value`` [L, 2, G, T, dh]; ``length`` positions used."""

    value: Any
    length: int


@dataclass
class EngineConnectorState:
    """Connector windows (runner values), the codes of the last step and the step count."""

    self_kv: Any
    mem_kv: Any
    prev_codes: np.ndarray  # [1, L] int32
    n_segments: int = 0


class GraphBackend(Backend):
    """Backend running the exported graphs through ``runner`` (see module docstring).

    ``kv_mode`` is ``"dynamic"`` (``llm_prefill`` + ``llm_decode``) or
    ``"static"`` (``llm`` over a fixed cache of ``manifest["export_options"]
    ["max_context"]`` positions).
    """

    kind = "graph"

    def __init__(self, model_info, runner, manifest: dict, kv_mode: str = "dynamic"):
        if kv_mode not in ("dynamic", "static"):
            raise ValueError(f"kv_mode must be 'dynamic' or 'static', got {kv_mode!r}")
        self.model = model_info
        self.runner = runner
        self.manifest = manifest
        self.kv_mode = kv_mode
        shapes = manifest["shapes"]
        self.kv_layout = tuple(shapes["kv_layout"])  # [L, 2, G, "T", dh]
        self.max_context = int(manifest["export_options"]["max_context"])
        self.connector_shape = tuple(shapes["connector_state"])
        self.motion_shapes = [tuple(s) for s in shapes["motion_caches"]]
        self.t2w_shapes = {k: tuple(v) for k, v in shapes["token2wav_state"].items()}
        self.chunk_tokens = int(shapes["chunk_tokens"])
        ccfg = model_info.cfg.connector
        self.n_levels, self.codebook_size = ccfg.n_levels, ccfg.codebook_size
        #: The schedule's kind masks, for picks that need the whole logits on the host.
        self._masks = {k: model_info.vocab.kind_mask(k) for k in (TEXT, SPEECH)}
        #: Ranked tokens the LLM graphs return (``top_values`` / ``top_ids``).
        self.top_k = int(shapes["top_k"])

    # -- Backend ---------------------------------------------------------------------------
    def rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng(int(seed))

    def prefill(self, wave, pick: Pick, rng) -> LLMStep:
        mel = np.asarray(self.model.log_mel(wave), np.float32)  # [M, T]
        prompt = self.model.prompt(n_positions(mel.shape[1]))
        embeds = splice_audio(prompt, self.embed_tokens(prompt.ids),
                              self.encode_audio(mel))  # [1, P, H]
        out, cache = self.llm_prefill_outputs(embeds, pick, tail=True)
        return self.choose(out, pick, rng), np.asarray(out["tail"], np.float32)[0], cache

    def decode(self, token: int, cache, pick: Pick, rng) -> LLMStep:
        out, cache = self.llm_decode_outputs(token, cache, pick)
        return self.choose(out, pick, rng), self._hidden(out), cache

    def _full_logits(self, pick: Optional[Pick]) -> bool:
        """Whether ``pick`` needs the whole logits rather than the graph's top tokens."""
        return pick is None or (pick.forced is None and pick.temperature > 0
                                and not 0 < pick.top_k <= self.top_k)

    def choose(self, out: Dict[str, Any], pick: Pick, rng) -> int:
        """:class:`Pick` on an LLM graph's outputs: its ranked top tokens (masked in the
        graph), or its whole logits when the pick's top-k exceeds them."""
        if not self._full_logits(pick):
            return pick_from_top(np.asarray(out["top_values"])[0], np.asarray(out["top_ids"])[0],
                                 pick, rng)
        return pick_from_host_logits(np.asarray(out["logits"], np.float32)[0], pick,
                                     self._masks, rng)

    def init_motion_state(self):
        return (self.init_connector_state(), [Zeros(s) for s in self.motion_shapes])

    def motion_step(self, hidden: Sequence[np.ndarray], state, temperature: float,
                    top_k: int, rng):
        connector_state, decoder_state = state
        x = np.stack([np.asarray(h, np.float32).reshape(-1) for h in hidden])[None]  # [1, 5, H]
        codes, connector_state = self.connector_step(x, connector_state, temperature, top_k,
                                                     rng)  # [1, L]
        frames, decoder_state = self.motion_decode_step(codes[:, None], decoder_state)
        return frames[0], (connector_state, decoder_state)  # [5, D]

    def init_codec_state(self):
        state: Dict[str, Any] = {k: Zeros(s) for k, s in self.t2w_shapes.items()}
        if "window" in state:  # the mel refiner's window starts empty
            empty = refiner_empty_code(self.model.cfg.codec.n_codes)
            state["window"] = np.full(self.t2w_shapes["window"], empty, np.float32)
        state[PUSHED] = 0
        return state

    @property
    def codec_lookahead(self) -> int:
        """Codes the token2wav graph must receive before a token's audio comes out."""
        return self.model.cfg.codec.lookahead_tokens if "window" in self.t2w_shapes else 0

    def codec_flush(self, state):
        """The last ``lookahead`` tokens' audio: the window is completed with pad codes."""
        if not self.codec_lookahead:
            return np.zeros(0, np.float32), state
        pad = refiner_pad_code(self.model.cfg.codec.n_codes)
        return self._token2wav(np.full(self.codec_lookahead, pad, np.int64), state)

    # -- helpers ---------------------------------------------------------------------------
    def _kv_shape(self, length: int) -> Tuple[int, ...]:
        return tuple(length if isinstance(d, str) else int(d) for d in self.kv_layout)

    def _check_room(self, needed: int) -> None:
        if needed > self.max_context:
            raise EngineError(f"LLM context full: {needed} positions > max_context "
                              f"{self.max_context}; re-export / rebuild with a larger "
                              f"max_context (BackendConfig.max_context)")

    # -- audio and prompt ------------------------------------------------------------------
    def encode_audio(self, mel: np.ndarray) -> np.ndarray:
        """Log-mel [M, T] -> audio embeddings [1, A, H]."""
        mel = np.ascontiguousarray(np.asarray(mel, np.float32))
        out = self.runner.run("audio_encoder", {"mel": mel[None]}, host=("audio_embeds",))
        return np.asarray(out["audio_embeds"], np.float32)

    def embed_tokens(self, ids) -> np.ndarray:
        """Token ids -> embeddings [1, n, H]."""
        ids = [int(i) for i in ids]
        parts = []
        for start in range(0, max(len(ids), 1), MAX_EMBED_IDS):
            chunk = np.asarray([ids[start:start + MAX_EMBED_IDS]], np.int32)
            if chunk.size == 0:
                break
            out = self.runner.run("token_embed", {"ids": chunk}, host=("embeds",))
            parts.append(np.asarray(out["embeds"], np.float32))
        if not parts:
            return np.zeros((1, 0, self.model.cfg.llm.hidden_size), np.float32)
        return np.concatenate(parts, axis=1)

    # -- LLM -------------------------------------------------------------------------------
    @staticmethod
    def _hidden(out) -> np.ndarray:
        return np.asarray(out["hidden"], np.float32)[0]  # [H]

    def _pick_feeds(self, pick: Optional[Pick]) -> Tuple[Dict[str, np.ndarray], Tuple[str, ...]]:
        """The LLM graphs' pick inputs and the outputs to bring to the host."""
        kind = KIND_INDEX[pick.allowed] if pick is not None else 0
        banned = pick.banned if pick is not None and pick.banned is not None else -1
        feeds = {"kind": np.array([kind], np.int32), "banned": np.array([banned], np.int32)}
        host = ("logits", "hidden") if self._full_logits(pick) else \
            ("top_values", "top_ids", "hidden")
        return feeds, host

    def llm_prefill_outputs(self, embeds: np.ndarray, pick: Optional[Pick],
                            tail: bool = False):
        """Prompt embeddings [1, P, H] -> (the graph's outputs, cache); only those ``pick``
        needs are on the host (all logits when ``pick`` is None), and ``tail`` with
        ``tail``."""
        P = int(embeds.shape[1])
        self._check_room(P + 1)
        x = np.ascontiguousarray(np.asarray(embeds, np.float32))
        feeds, host = self._pick_feeds(pick)
        host += ("tail",) if tail else ()
        if self.kv_mode == "dynamic":
            out = self.runner.run("llm_prefill", {"inputs_embeds": x, **feeds}, host=host)
        else:
            out = self.runner.run("llm", {"inputs_embeds": x,
                                          "past_kv": Zeros(self._kv_shape(self.max_context)),
                                          "past_len": np.array([0], np.int32), **feeds},
                                  profile="prefill", host=host)
        return out, EngineKV(out["present_kv"], P)

    def llm_decode_outputs(self, token_id: int, cache: EngineKV, pick: Optional[Pick]):
        """Feed one token -> (the graph's outputs, cache), as :meth:`llm_prefill_outputs`."""
        if cache is None:
            raise EngineError("decode() without a KV cache: call prefill() first")
        self._check_room(cache.length + 1)
        tok = np.array([[int(token_id)]], np.int32)
        feeds, host = self._pick_feeds(pick)
        if self.kv_mode == "dynamic":
            out = self.runner.run("llm_decode", {"token_id": tok, "past_kv": cache.value,
                                                 **feeds}, host=host)
        else:
            emb = self.runner.run("token_embed", {"ids": tok}, profile="one")["embeds"]
            out = self.runner.run("llm", {"inputs_embeds": emb, "past_kv": cache.value,
                                          "past_len": np.array([cache.length], np.int32),
                                          **feeds}, profile="decode", host=host)
        return out, EngineKV(out["present_kv"], cache.length + 1)

    def llm_prefill(self, embeds: np.ndarray):
        """Prompt embeddings [1, P, H] -> (logits [V], hidden [H], cache)."""
        out, cache = self.llm_prefill_outputs(embeds, None)
        return np.asarray(out["logits"], np.float32)[0], self._hidden(out), cache

    def llm_decode(self, token_id: int, cache: EngineKV):
        """Feed one token -> (logits [V], hidden [H], cache)."""
        out, cache = self.llm_decode_outputs(token_id, cache, None)
        return np.asarray(out["logits"], np.float32)[0], self._hidden(out), cache

    # -- motion connector ------------------------------------------------------------------
    def init_connector_state(self) -> EngineConnectorState:
        return EngineConnectorState(Zeros(self.connector_shape), Zeros(self.connector_shape),
                                    np.zeros((1, self.n_levels), np.int32), 0)

    def _noise(self, temperature: float, rng: np.random.Generator, top_k: int):
        L, K = self.n_levels, self.codebook_size
        if temperature <= 0:
            return np.zeros((1, L, K), np.float32), 1.0, 0
        u = np.clip(rng.random((1, L, K)), GUMBEL_TINY, 1.0 - GUMBEL_TINY)
        gumbel = -np.log(-np.log(u))  # Gumbel(0, 1)
        return gumbel.astype(np.float32), 1.0 / float(temperature), max(int(top_k), 0)

    def connector_step(self, hidden: np.ndarray, state: EngineConnectorState,
                       temperature: float, top_k: int, rng):
        """Hidden [1, 5, H] -> (codes int32 [1, L], state)."""
        if tuple(hidden.shape[:2]) != (1, self.model.cfg.connector.pool):
            raise ValueError(f"connector_step takes hidden [1, {self.model.cfg.connector.pool}"
                             f", H], got {tuple(hidden.shape)}")
        noise, inv_t, k = self._noise(float(temperature), rng, int(top_k))
        out = self.runner.run("connector_step", {
            "hidden": np.ascontiguousarray(hidden, np.float32), "self_kv": state.self_kv,
            "mem_kv": state.mem_kv, "prev_codes": state.prev_codes,
            "step": np.array([state.n_segments], np.int32),
            "noise": noise, "inv_temperature": np.array([inv_t], np.float32),
            "top_k": np.array([k], np.int32)}, host=("codes",))
        codes = np.asarray(out["codes"], np.int32)
        new = EngineConnectorState(out["self_kv_out"], out["mem_kv_out"], codes.copy(),
                                   state.n_segments + 1)
        return codes, new

    # -- motion decoder --------------------------------------------------------------------
    def motion_decode_step(self, codes: np.ndarray, state: List[Any]):
        """Codes [1, n, L] -> (frames float32 [1, 5n, D], state)."""
        codes = np.asarray(codes, np.int32)
        frames = []
        for i in range(codes.shape[1]):
            feeds: Dict[str, Any] = {"codes": np.ascontiguousarray(codes[:, i:i + 1])}
            feeds.update({f"cache_{j}": c for j, c in enumerate(state)})
            out = self.runner.run("motion_decoder", feeds, host=("frames",))
            frames.append(np.asarray(out["frames"], np.float32))
            state = [out[f"cache_{j}_out"] for j in range(len(state))]
        if not frames:
            return np.zeros((1, 0, self.model.layout.dim), np.float32), state
        return np.concatenate(frames, axis=1), state

    # -- token2wav -------------------------------------------------------------------------
    def codec_step(self, codes, state: Dict[str, Any]):
        toks = np.asarray(codes, np.int64).reshape(-1)
        n_codes = self.model.cfg.codec.n_codes
        if toks.size and (toks.min() < 0 or toks.max() >= n_codes):
            raise ValueError(f"speech tokens must lie in [0, {n_codes}), got range "
                             f"[{toks.min()}, {toks.max()}]")
        return self._token2wav(toks, state)

    def _token2wav(self, toks: np.ndarray, state: Dict[str, Any]):
        """Codes [n] through the chunk graph; the audio of the calls that decoded a token
        (with a refiner, the first ``lookahead`` codes of a turn decode nothing)."""
        audio = []
        n = self.chunk_tokens
        pushed = state[PUSHED]
        for start in range(0, toks.size, n):
            chunk = toks[start:start + n]
            padded = np.zeros(n, np.int32)
            padded[:chunk.size] = chunk
            feeds = {k: state[k] for k in self.t2w_shapes}
            out = self.runner.run("token2wav", {
                "tokens": padded, "n_valid": np.array([chunk.size], np.int32), **feeds},
                host=("audio",))
            skip = undecoded_calls(self.codec_lookahead, pushed, chunk.size)
            audio.append(np.asarray(out["audio"], np.float32)[
                skip * SAMPLES_PER_SPEECH_TOKEN:chunk.size * SAMPLES_PER_SPEECH_TOKEN])
            pushed += chunk.size
            state = {k: out[f"{k}_out"] for k in self.t2w_shapes}
            state[PUSHED] = pushed
        if not audio:
            return np.zeros(0, np.float32), state
        return np.concatenate(audio), state


def needed_graphs(kv_mode: str) -> Sequence[str]:
    """Graph names a :class:`GraphBackend` in ``kv_mode`` runs."""
    return NEEDED[kv_mode]


def missing_graphs(manifest: Optional[dict], kv_mode: str) -> List[str]:
    """Graphs of ``kv_mode`` that ``manifest`` does not list."""
    have = set((manifest or {}).get("graphs", {}))
    return [g for g in needed_graphs(kv_mode) if g not in have]
