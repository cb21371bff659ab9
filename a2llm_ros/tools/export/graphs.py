"""Export wrappers: every model component as a fixed-interface, ONNX/TensorRT-friendly graph.

Each wrapper reuses the trained modules' weights and computes exactly what the
PyTorch code computes, written with ops that ONNX opset :data:`OPSET` and
TensorRT's ONNX parser support (no complex numbers, no STFT/DFT ops, no
data-dependent Python branches).  The audio encoder graph IS the model's
``adapter(encoder(mel))``, and the LLM graphs call the pieces of
:class:`~a2llm_ros.model.qwen2.Qwen2LM` (``layer.qkv``, ``layer.attend``,
``model.rope``, ``model.norm``, ``logits``) and only keep the key/value
tensors in their own layout, so the exported arithmetic has one definition.
The graphs (``B = 1`` everywhere; ``L``
LLM layers, ``G`` KV heads, ``dh`` head size, ``C`` = ``max_context``)::

    audio_encoder   mel [1, M, T]                -> audio_embeds [1, A, H]
    token_embed     ids [1, n] i32               -> embeds [1, n, H]
    llm_prefill     inputs_embeds [1, P, H], kind [1] i32, banned [1] i32
                                                 -> logits [1, V], hidden [1, H],
                                                    present_kv [L, 2, G, P, dh],
                                                    top_values [1, K], top_ids [1, K] i32,
                                                    tail [1, E, H]
    llm_decode      token_id [1, 1] i32, past_kv [L, 2, G, P, dh], kind, banned
                                                 -> logits, hidden, present_kv [.., P + 1, ..],
                                                    top_values, top_ids
    llm             inputs_embeds [1, T, H], past_kv [L, 2, G, C, dh], past_len [1] i32,
                    kind, banned                 -> logits, hidden, present_kv [L, 2, G, C, dh],
                                                    top_values, top_ids, tail [1, min(E, T), H]

Every LLM graph also ranks its logits: ``kind`` (0: none, 1: text, 2: speech) adds the
enforced schedule's mask, ``banned`` (-1: none) masks one id more, and ``TopK`` returns
the ``K = TOP_K`` (64) most likely tokens, so a backend samples from those and brings
the whole logits [V] to the host only for a larger top-k.  ``tail`` holds the hidden
states of the prompt's last ``E`` positions (its last audio position and the chat
template after it, :func:`prompt_tail`): the end-of-turn head's input.
    connector_step  hidden [1, 5, H], self_kv / mem_kv [N, 2, h, W, dh], prev_codes [1, L] i32,
                    step [1] i32, noise [1, L, K], inv_temperature [1], top_k [1] i32
                                                 -> codes [1, L] i32, logits [1, L, K],
                                                    self_kv_out, mem_kv_out
    motion_decoder  codes [1, 1, L] i32, cache_i   -> frames [1, 5, D], cache_i_out
    token2wav       tokens [n] i32, n_valid [1] i32, fixed [c], last_mags [2, F], tail [64]
                    (, window [w] with a mel refiner)
                                                 -> audio [n * 640], fixed_out, last_mags_out,
                                                    tail_out (, window_out)

``llm_prefill`` + ``llm_decode`` grow the KV cache by one position per step
(dynamic shapes).  ``llm`` keeps a fixed-capacity cache: the new keys/values
are written at ``past_len ..`` and attention is masked to the valid
positions, so prefill (``T = P``, ``past_len = 0``) and decode (``T = 1``) use
one set of weights (one TensorRT engine with two optimisation profiles) and
the decode step has fixed shapes (CUDA-graph capturable).

The connector's streaming state is kept in fixed windows of ``W =
max_segments`` slots, newest right-aligned, with the number of valid slots
derived from ``step``; the motion codes chosen at step ``s`` enter the
cross-attention memory at step ``s + 1`` (through ``prev_codes``).  Motion
codes are sampled in-graph by Gumbel-max: ``argmax(logits * inv_temperature
+ noise)`` after top-k masking; zero noise and ``inv_temperature = 1`` give
the greedy codes.  The Griffin-Lim token-to-wave decoder uses an explicit
real DFT (MatMul with fixed cosine/sine matrices), overlap-add by Pad + Add
and unit phasors instead of angles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from a2llm_ros.constants import MEL_FRAME_RATE, SAMPLES_PER_SPEECH_TOKEN
from a2llm_ros.engines.config import BackendConfig
from a2llm_ros.model.chat import n_positions, prompt_tail
from a2llm_ros.engines.manifest import GRAPHS, KIND_INDEX, MAX_EMBED_IDS, TOP_K
from a2llm_ros.model.audio_llm import base_causal_lm
from a2llm_ros.model.qwen2 import MASK_MIN
from a2llm_ros.model.speech_codec import _EPS as GL_EPS
from a2llm_ros.model.speech_codec import (CROSSFADE, N_PAST_FRAMES, GriffinLimToken2Wav,
                                          log_mel_to_magnitudes)

#: ONNX opset of every exported graph.  TensorRT 10's ONNX parser supports
#: opsets 9-20 (8.6: up to 17); 17 is the first with LayerNormalization.
OPSET = 17
Dim = Union[int, str]


@dataclass
class IOSpec:
    """One graph input or output: name, dtype (``float32``/``int32``) and shape."""

    name: str
    dtype: str
    shape: Tuple[Dim, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class GraphSpec:
    """A graph to export: module, I/O, example inputs and TensorRT profiles.

    ``profiles`` maps a profile name to ``{input: (min, opt, max) shapes}``
    (only inputs with dynamic axes are listed; every profile lists the same
    inputs).
    """

    name: str
    module: nn.Module
    inputs: List[IOSpec]
    outputs: List[IOSpec]
    example: Dict[str, torch.Tensor]
    profiles: Dict[str, Dict[str, Tuple[Tuple[int, ...], ...]]] = field(default_factory=dict)
    description: str = ""
    #: > 0: ``module`` is ONE step with I/O ``trace_inputs`` / ``trace_outputs``; the
    #: exported graph chains ``repeat`` copies (see ``onnx_export.repeat_token_graph``).
    repeat: int = 0
    trace_inputs: List[IOSpec] = field(default_factory=list)
    trace_outputs: List[IOSpec] = field(default_factory=list)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        out = {}
        for io in self.inputs + self.outputs:
            axes = {i: d for i, d in enumerate(io.shape) if isinstance(d, str)}
            if axes:
                out[io.name] = axes
        return out


# ----------------------------------------------------------------------------- helpers

def _attention(q, k, v, bias=None):
    """Connector attention (its module uses SDPA, which has no ONNX/TensorRT-friendly
    export): q [h, T, dh], k/v [h, S, dh], bias [.., T, S] -> [h, T, dh]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


def _arange_like(x: torch.Tensor, dim: int) -> torch.Tensor:
    """0 .. x.shape[dim]-1 as int64, computed from ``x`` (dynamic in the exported graph)."""
    n = x.shape[dim]
    return torch.arange(n, device=x.device)


# ----------------------------------------------------------------------------- audio encoder

class AudioEncoderGraph(nn.Module):
    """Log-mel [1, M, T] -> adaptor outputs [1, A, H]: ``adapter(encoder(mel))``.

    The model's own modules (``A2LLM.encode_audio`` without lengths); the
    prompt uses the first ``n_positions(T)`` rows.
    """

    def __init__(self, encoder, adapter):
        super().__init__()
        self.encoder, self.adapter = encoder, adapter

    def forward(self, mel):
        return self.adapter(self.encoder(mel))


class TokenEmbedGraph(nn.Module):
    """Token ids [1, n] (int32) -> LLM input embeddings [1, n, H]."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, ids):
        return self.embedding(ids.long())


# ----------------------------------------------------------------------------- LLM

class LLMGraph(nn.Module):
    """Base of the LLM graphs: the backbone's own pieces, the KV layout [L, 2, G, S, dh].

    Every piece of arithmetic is :class:`~a2llm_ros.model.qwen2.Qwen2LM`'s
    (``layer.qkv``, ``layer.attend``, ``model.norm``, ``logits``); the graphs
    only slice / concatenate / overwrite key-value tensors and build the
    attention bias, as ``Qwen2LM.forward`` does for its list of per-layer
    tensors.  The rotary cos/sin rows are ``model.rope(0 .. max_positions - 1)``,
    gathered by position: computing ``position * frequency`` in the graph would
    let a TensorRT FP16 engine round positions above 2048 (FP16 spacing 2 and
    more), i.e. rotate keys by the wrong angle; a gathered table only rounds the
    cos/sin values.
    """

    def __init__(self, llm, max_positions: int, vocab, tail: int = 1):
        super().__init__()
        self.lm = base_causal_lm(llm)
        #: Last positions whose hidden states the prefill graphs also return (``tail``).
        self.tail = int(tail)
        inner = self.lm.model
        with torch.no_grad():
            pos = torch.arange(max_positions, device=inner.norm.weight.device)
            cos, sin = inner.rope(pos)  # [Pmax, dh] float32
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # additive logit bias per KIND_INDEX row: 0 where allowed, MASK_MIN elsewhere
        bias = torch.zeros(len(KIND_INDEX), vocab.size)  # [3, V]
        for kind, row in KIND_INDEX.items():
            if kind is not None:
                bias[row] = torch.where(torch.from_numpy(vocab.kind_mask(kind)), 0.0, MASK_MIN)
        self.register_buffer("kind_bias", bias, persistent=False)
        self.top_k = min(TOP_K, vocab.size)

    @property
    def layers(self):
        return self.lm.model.layers

    def rope(self, pos, x):
        """Rotary rows of absolute positions ``pos`` [T] in ``x``'s dtype."""
        return self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)

    def head(self, x, kind, banned):
        """x [1, T, H] -> logits [1, V], hidden [1, H] after the final norm of the last
        position, and the ``top_k`` most likely tokens under the ``kind`` mask with
        ``banned`` (-1: none) masked too: values [1, K] (descending), ids [1, K] int32."""
        h = self.lm.model.norm(x[:, -1])  # [1, H]
        logits = self.lm.logits(h)  # [1, V]
        masked = logits.float() + self.kind_bias[kind.long()]  # [1, V]
        ids = _arange_like(masked, 1)  # [V]
        masked = torch.where(ids[None] == banned.long(), torch.full_like(masked, MASK_MIN),
                             masked)
        values, top = torch.topk(masked, self.top_k, dim=-1)  # [1, K]
        return logits, h, values, top.to(torch.int32)

    def tail_hidden(self, x):
        """x [1, T, H] -> the last ``min(tail, T)`` positions after the final norm
        [1, min(tail, T), H] (the end-of-turn head's input)."""
        return self.lm.model.norm(x[:, -self.tail:])


def _causal_bias(pos_q, pos_k, like):
    """Additive bias [T, S]: 0 where key position <= query position, else MASK_MIN."""
    allowed = pos_k[None, :] <= pos_q[:, None]
    zero = torch.zeros_like(like[:1, :1])
    return torch.where(allowed, zero, torch.full_like(zero, MASK_MIN))


class LLMPrefillGraph(LLMGraph):
    """Prompt embeddings [1, P, H] -> last logits, last hidden, KV cache [L, 2, G, P, dh],
    top tokens and the hidden states of the last ``tail`` positions."""

    def forward(self, inputs_embeds, kind, banned):
        x = inputs_embeds
        pos = _arange_like(x, 1)  # [P]
        cos, sin = self.rope(pos, x)  # [P, dh]
        bias = _causal_bias(pos, pos, cos)  # [P, P]
        kv = []
        for layer in self.layers:
            q, k, v = layer.qkv(x, cos, sin)  # k, v [1, G, P, dh]
            kv.append(torch.stack([k[0], v[0]]))  # [2, G, P, dh]
            x = layer.attend(x, q, k, v, bias)
        logits, hidden, values, top = self.head(x, kind, banned)
        return logits, hidden, torch.stack(kv), values, top, self.tail_hidden(x)


class LLMDecodeGraph(LLMGraph):
    """One token [1, 1] + KV cache [L, 2, G, P, dh] -> logits, hidden, cache [.., P + 1, ..]."""

    def forward(self, token_id, past_kv, kind, banned):
        x = self.lm.get_input_embeddings()(token_id.long())  # [1, 1, H]
        pos = _arange_like(past_kv, 3)[-1:] + 1  # [1] = P
        cos, sin = self.rope(pos, x)  # [1, dh]
        kv = []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)
            k = torch.cat([past_kv[i, 0][None], k], dim=2)  # [1, G, P + 1, dh]
            v = torch.cat([past_kv[i, 1][None], v], dim=2)
            kv.append(torch.stack([k[0], v[0]]))
            x = layer.attend(x, q, k, v)  # one query sees every key (as Qwen2LM.forward)
        logits, hidden, values, top = self.head(x, kind, banned)
        return logits, hidden, torch.stack(kv), values, top


class LLMStaticGraph(LLMGraph):
    """T new positions over a fixed-capacity cache (see module docstring)."""

    def forward(self, inputs_embeds, past_kv, past_len, kind, banned):
        x = inputs_embeds
        start = past_len.long()  # [1]
        offs = _arange_like(x, 1)  # [T]
        pos = start + offs  # [T] absolute positions
        last = offs[-1:]  # [1] = T - 1
        cos, sin = self.rope(pos, x)  # [T, dh]
        slots = _arange_like(past_kv, 3)  # [C]
        rel = slots - start  # [C] slot - past_len
        write = (rel >= 0) & (rel <= last)  # [C] slots written by this call
        src = torch.minimum(rel.clamp(min=0), last)  # [C] new position per slot
        bias = _causal_bias(pos, slots, cos)  # [T, C]: also hides the unwritten slots
        kv = []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)  # k, v [1, G, T, dh]
            k = torch.where(write[:, None], k[0][:, src], past_kv[i, 0])  # [G, C, dh]
            v = torch.where(write[:, None], v[0][:, src], past_kv[i, 1])
            kv.append(torch.stack([k, v]))
            x = layer.attend(x, q, k[None], v[None], bias)
        logits, hidden, values, top = self.head(x, kind, banned)
        return logits, hidden, torch.stack(kv), values, top, self.tail_hidden(x)


# ----------------------------------------------------------------------------- connector

class ConnectorStepGraph(nn.Module):
    """MotionConnector.step for one 200 ms segment over fixed-size state windows."""

    def __init__(self, connector):
        super().__init__()
        self.conn = connector
        cfg = connector.cfg
        W = cfg.max_segments
        self.W, self.L, self.K = W, cfg.n_levels, cfg.codebook_size
        slots = torch.arange(W)
        self.register_buffer("slots", slots, persistent=True)
        # distance of slot j (newest at W - 1) is W - 1 - j
        self.register_buffer("dist", (W - 1 - slots), persistent=True)

    def _bias(self, attn, valid):  # valid [W] bool -> [h, 1, W]
        b = attn.rel_bias[:, self.dist]  # [h, W]
        return torch.where(valid[None], b, torch.full_like(b, MASK_MIN))[:, None]

    def _attend(self, attn, x, k, v, bias):  # x [1, 1, d], k/v [h, S, dh], bias [h, 1, S]
        q = attn.q(x)[0].reshape(1, attn.h, attn.dh).transpose(0, 1)  # [h, 1, dh]
        o = _attention(q, k, v, bias).transpose(0, 1).reshape(1, 1, -1)
        return attn.o(o)

    @staticmethod
    def _shift_in(window, new):  # window [h, W, dh], new [h, 1, dh] -> [h, W, dh]
        return torch.cat([window[:, 1:], new], dim=1)

    def forward(self, hidden, self_kv, mem_kv, prev_codes, step, noise, inv_temperature,
                top_k):
        conn, W = self.conn, self.W
        s = step.long()  # [1] segments already decoded
        n_self = torch.clamp(s + 1, max=W)  # [1]
        n_mem = torch.clamp(s, max=W)
        self_valid = self.slots >= W - n_self  # [W]
        mem_valid = self.slots >= W - n_mem
        x = conn.pool_queries(hidden)  # [1, 1, d]
        bos = conn.bos[None, None]  # [1, 1, d]
        mem = conn.memory_embed(prev_codes.long()[:, None])  # [1, 1, d] codes of step s - 1
        new_self, new_mem = [], []
        for i, layer in enumerate(conn.layers):
            k, v = layer.self_attn.keys_values(layer.ln_self(x))  # [1, h, 1, dh]
            sk = self._shift_in(self_kv[i, 0], k[0])  # [h, W, dh]
            sv = self._shift_in(self_kv[i, 1], v[0])
            mk, mv = layer.memory_kv(mem)
            mk = self._shift_in(mem_kv[i, 0], mk[0])
            mv = self._shift_in(mem_kv[i, 1], mv[0])
            new_self.append(torch.stack([sk, sv]))
            new_mem.append(torch.stack([mk, mv]))
            bk, bv = layer.memory_kv(bos)  # [1, h, 1, dh]
            x = x + self._attend(layer.self_attn, layer.ln_self(x), sk, sv,
                                 self._bias(layer.self_attn, self_valid))
            cross = torch.cat([layer.cross_attn.bos_bias[:, None, None],
                               self._bias(layer.cross_attn, mem_valid)], dim=-1)  # [h, 1, 1+W]
            x = x + self._attend(layer.cross_attn, layer.ln_cross(x),
                                 torch.cat([bk[0], mk], dim=1), torch.cat([bv[0], mv], dim=1),
                                 cross)
            x = x + layer.ff(layer.ln_ff(x))
        codes, logits = self._levels(conn.out_norm(x)[:, 0], noise, inv_temperature, top_k)
        return codes, logits, torch.stack(new_self), torch.stack(new_mem)

    def _levels(self, h, noise, inv_temperature, top_k):
        """h [1, d] -> codes [1, L] int32, logits [1, L, K] (coarse to fine, Gumbel-max)."""
        conn, K = self.conn, self.K
        k_idx = torch.where(top_k > 0, top_k.long(), torch.full_like(top_k.long(), K))
        k_idx = torch.clamp(k_idx, min=1, max=K) - 1  # [1]
        prefix = torch.zeros_like(h)
        codes, logits = [], []
        for level, head in enumerate(conn.heads):
            lg = head(h + prefix)  # [1, K]
            scaled = lg * inv_temperature  # [1, K]
            kth = torch.topk(scaled, K, dim=-1).values[:, k_idx]  # [1, 1]
            score = torch.where(scaled < kth, torch.full_like(scaled, MASK_MIN),
                                scaled + noise[:, level])
            c = torch.argmax(score, dim=-1)  # [1]
            if conn.prefix_emb is not None:
                prefix = prefix + conn.prefix_emb(c + level * K)
            codes.append(c)
            logits.append(lg)
        return torch.stack(codes, dim=1).to(torch.int32), torch.stack(logits, dim=1)


# ----------------------------------------------------------------------------- motion decoder

class MotionDecoderGraph(nn.Module):
    """MotionTokenizer.decode_step for ONE segment: codes [1, 1, L] + caches -> [1, 5, D]."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer
        self.convs = tokenizer.decoder.causal_convs()

    def forward(self, codes, *caches):
        tok = self.tok
        z = tok.codes_to_latent(codes.long())  # [1, 1, C]
        full, it = [], iter(caches)
        for conv in self.convs:  # zero-context convs have no cache input
            full.append(next(it) if conv.context else z.new_zeros(1, conv.conv.in_channels, 0))
        y, new = tok.decoder(z.transpose(1, 2), full)  # [1, D, 5]
        frames = tok.denormalize(y.transpose(1, 2))
        return (frames, *[c for c, conv in zip(new, self.convs) if conv.context])


# ----------------------------------------------------------------------------- token2wav

class Token2WavStepGraph(nn.Module):
    """GriffinLimToken2Wav for ONE token with an explicit real DFT (see module docstring).

    ``iters`` overrides the Griffin-Lim iteration count (export checks use
    fewer iterations to compare the arithmetic with PyTorch, see
    :mod:`a2llm_ros.tools.export.onnx_export`).  The chunk graph is this graph
    repeated ``chunk_tokens`` times
    (:func:`a2llm_ros.tools.export.onnx_export.repeat_token_graph`).

    With a mel refiner the state has one more tensor, ``window`` (the codes
    after the last decoded token, as floats; ``MelRefiner.empty`` at the start),
    and the graph runs the decoder's own :class:`MelRefiner` and
    :func:`log_mel_to_magnitudes` (in float32) on the window plus the new code.
    A call whose window centre is not a token yet (the first ``lookahead_tokens``
    calls of a turn) leaves the Griffin-Lim state unchanged and its audio is to
    be dropped; ``flush`` is ``lookahead_tokens`` calls with ``MelRefiner.pad``
    (:class:`a2llm_ros.engines.graph_backend.GraphBackend` does both).
    """

    def __init__(self, t2w: GriffinLimToken2Wav, iters: Optional[int] = None):
        super().__init__()
        self.refiner = t2w.refiner
        if self.refiner is not None:
            book = t2w.codebook
            self.register_buffer("centroids", book.require_fitted().float(), persistent=True)
            self.register_buffer("filters", book.filters.float(), persistent=True)
            self.mel_cfg, self.stack = book.mel_cfg, t2w.cfg.stack
        W, hop, nF = t2w.n_fft, t2w.hop, t2w.n_frames
        self.W, self.hop, self.nF, self.Lw, self.C = W, hop, nF, t2w.length, t2w.committed
        self.n_blocks = -(-W // hop)  # hop-sized blocks per (zero-padded) frame
        self.iters = t2w.cfg.griffin_lim_iters if iters is None else int(iters)
        m = t2w.cfg.griffin_lim_momentum
        self.alpha = m / (1.0 + m)
        mags = t2w.codebook.magnitudes()  # [K, stack, F]
        nfreq = mags.shape[-1]
        win = t2w.window.double()  # [W]
        n = torch.arange(W, dtype=torch.float64)
        k = torch.arange(nfreq, dtype=torch.float64)
        ang = 2.0 * math.pi * k[:, None] * n[None] / W  # [F, W]
        # rfft of windowed frames: re = sum x w cos, im = -sum x w sin -> [2, W, F]
        fwd = torch.stack([(win[None] * ang.cos()).T, -(win[None] * ang.sin()).T])
        # irfft (length W) then window: bins 0 and W/2 count once, the others twice
        c = torch.full((nfreq,), 2.0, dtype=torch.float64)
        c[0] = 1.0
        if W % 2 == 0:
            c[-1] = 1.0
        inv = torch.stack([c[:, None] * ang.cos(), -c[:, None] * ang.sin()]) / W * win[None, None]
        steps = torch.arange(nF, dtype=torch.float64)[:, None]
        adv = steps * t2w.phase_advance.double()[None]  # [nF, F]
        fb = t2w.fallback_phase.double()
        index = torch.arange(nF)[:, None] * hop + torch.arange(W)[None]  # [nF, W]
        for name, value in (("mags", mags), ("fwd", fwd), ("inv", inv),
                            ("adv_cos", adv.cos()), ("adv_sin", adv.sin()),
                            ("fb_cos", fb.cos()), ("fb_sin", fb.sin()),
                            ("inv_envelope", t2w.inv_envelope), ("fade_in", t2w.fade_in)):
            self.register_buffer(name, value.float(), persistent=True)
        self.register_buffer("frame_index", index, persistent=True)

    def _stft(self, x):  # [Lw] -> [2, nF, F]
        return torch.matmul(x[self.frame_index][None], self.fwd)

    def _overlap_add(self, frames):  # [nF, W] -> [Lw]
        nF, hop, nb = self.nF, self.hop, self.n_blocks
        fp = torch.cat([frames, frames.new_zeros(nF, nb * hop - self.W)], dim=1)
        fp = fp.reshape(nF, nb, hop)  # block j of frame f lands on block f + j
        total = None
        for j in range(nb):
            rows = torch.cat([fp.new_zeros(j, hop), fp[:, j], fp.new_zeros(nb - 1 - j, hop)])
            total = rows if total is None else total + rows  # [nF + nb - 1, hop]
        return total.reshape(-1)[:self.Lw]

    def _istft(self, spec, fixed):  # [2, nF, F], [C] -> [Lw]
        frames = torch.matmul(spec, self.inv).sum(0)  # [nF, W]
        x = self._overlap_add(frames) * self.inv_envelope
        return torch.cat([fixed, x[self.C:]])

    def forward(self, token, fixed, last_mags, tail, window=None):
        """token [1] i32, fixed [C], last_mags [2, F], tail [64] (, window [width - 1])
        -> audio [640] + new state."""
        if self.refiner is None:
            return self._decode(self.mags[token.long()[0]], fixed, last_mags, tail)
        codes = torch.cat([window.long(), token.long()])  # [width]
        vector = self.refiner(self.centroids, codes[None])  # [1, S * M]
        token_mags = log_mel_to_magnitudes(vector, self.filters, self.mel_cfg,
                                           self.stack)[0]  # [stack, F]
        audio, new_fixed, new_last, new_tail = self._decode(token_mags, fixed, last_mags, tail)
        real = codes[self.refiner.context] < self.refiner.n_codes  # the centre is a token
        return (torch.where(real, audio, torch.zeros_like(audio)),
                torch.where(real, new_fixed, fixed), torch.where(real, new_last, last_mags),
                torch.where(real, new_tail, tail), codes[1:].to(window.dtype))

    def _decode(self, token_mags, fixed, last_mags, tail):
        """Magnitudes [stack, F] of one token + Griffin-Lim state -> audio [640] + state."""
        mags = torch.cat([last_mags, token_mags])[None]  # [1, nF, F]
        x0 = torch.cat([fixed, torch.zeros_like(self.inv_envelope[self.C:])])  # [Lw]
        first = torch.matmul(x0[:self.W][None], self.fwd)[:, 0]  # [2, F] frame 0
        mag = torch.sqrt((first * first).sum(0))  # [F]
        ok = mag > GL_EPS
        safe = torch.clamp(mag, min=GL_EPS)
        u_re = torch.where(ok, first[0] / safe, self.fb_cos)
        u_im = torch.where(ok, first[1] / safe, self.fb_sin)
        angles = torch.stack([u_re * self.adv_cos - u_im * self.adv_sin,
                              u_re * self.adv_sin + u_im * self.adv_cos])  # [2, nF, F]
        rebuilt = torch.zeros_like(angles)
        for _ in range(self.iters):
            previous = rebuilt
            rebuilt = self._stft(self._istft(mags * angles, fixed))
            angles = rebuilt - self.alpha * previous
            angles = angles / (torch.sqrt((angles * angles).sum(0, keepdim=True)) + GL_EPS)
        x = self._istft(mags * angles, fixed)  # [Lw]
        end = self.C + SAMPLES_PER_SPEECH_TOKEN
        audio = x[self.C:end]
        head = tail + self.fade_in * (audio[:CROSSFADE] - tail)
        audio = torch.cat([head, audio[CROSSFADE:]])  # [640]
        new_fixed = torch.cat([fixed, audio])[-self.C:]
        return audio, new_fixed, token_mags[-N_PAST_FRAMES:], x[end:end + CROSSFADE]


# ----------------------------------------------------------------------------- specs

def _clip(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


def prompt_overhead(model) -> int:
    """Prompt positions besides the audio patches (the chat format's text and markers).

    ``model`` is an ``A2LLM`` or a :class:`~a2llm_ros.engines.model_info.ModelInfo`;
    a question of T mel frames gives a prompt of this + ``n_positions(T)``
    positions.
    """
    return len(model.prompt(0).ids)


def profile_dims(model, cfg: BackendConfig) -> Dict[str, Tuple[int, int, int]]:
    """(min, opt, max) of every dynamic axis, from the model (its config and chat
    prompt) and the backend config."""
    max_frames = 2 * model.cfg.audio.max_positions  # encoder positions run at 50 Hz
    lo, opt, hi = cfg.mel_frames()
    hi = min(hi, max_frames)
    opt = _clip(opt, lo, hi)
    mel = (lo, opt, hi)
    prompt = tuple(len(model.prompt(n_positions(t)).ids) for t in mel)  # as generation's
    if prompt[2] >= cfg.max_context:
        raise ValueError(f"max_context {cfg.max_context} must exceed the longest prompt "
                         f"({prompt[2]} positions for {hi / MEL_FRAME_RATE:.0f} s of audio)")
    past = (prompt[0], _clip(cfg.opt_context, prompt[0], cfg.max_context - 1),
            cfg.max_context - 1)
    return {"mel_frames": mel, "prompt_len": prompt, "past_len": past,
            "n_ids": (1, 2, MAX_EMBED_IDS)}


def _shapes(shape, dims, which):
    """Concrete shape: dim names -> their (min, opt, max)[which]."""
    return tuple(dims[d][which] if isinstance(d, str) else d for d in shape)


def _profile(inputs: List[IOSpec], dims) -> Dict[str, Tuple[Tuple[int, ...], ...]]:
    return {io.name: tuple(_shapes(io.shape, dims, w) for w in range(3))
            for io in inputs if any(isinstance(d, str) for d in io.shape)}


def kv_shape(model, length: Dim) -> Tuple[Dim, ...]:
    """[L, 2, G, length, dh] of the LLM KV tensors."""
    lm = base_causal_lm(model.llm)
    return (lm.n_layers, 2, lm.n_kv, length, lm.head_dim)


def connector_state_shape(model) -> Tuple[int, ...]:
    """[N, 2, h, W, dh] of the connector's self / memory windows."""
    c = model.connector.cfg
    return (c.n_layers, 2, c.n_heads, c.max_segments, c.d_model // c.n_heads)


def motion_cache_shapes(model) -> List[Tuple[int, ...]]:
    """[1, C_i, ctx_i] of the motion decoder's non-empty causal-conv caches."""
    return [(1, c.conv.in_channels, c.context)
            for c in model.motion_tokenizer.decoder.causal_convs() if c.context]


def token2wav_state_shapes(model) -> Dict[str, Tuple[int, ...]]:
    """Shapes of the token2wav graph's state tensors."""
    t2w = model.token2wav
    n_freqs = t2w.codebook.mel_cfg.n_freqs
    shapes = {"fixed": (t2w.committed,), "last_mags": (N_PAST_FRAMES, n_freqs),
              "tail": (CROSSFADE,)}
    if t2w.refiner is not None:
        shapes["window"] = (t2w.refiner.width - 1,)
    return shapes


def token2wav_initial_state(model) -> Dict[str, "torch.Tensor"]:
    """The token2wav graph's state before a turn: zeros, and ``window`` all
    ``MelRefiner.empty`` (as the PyTorch decoder's :meth:`init_state`)."""
    state = {k: torch.zeros(s) for k, s in token2wav_state_shapes(model).items()}
    if "window" in state:
        state["window"].fill_(float(model.token2wav.refiner.empty))
    return state


def _rand(shape, gen, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def build_spec(name: str, model, cfg: BackendConfig,
               dims: Optional[Dict[str, Tuple[int, int, int]]] = None) -> GraphSpec:
    """The :class:`GraphSpec` of graph ``name`` for ``model`` (an ``A2LLM``)."""
    dims = dims or profile_dims(model, cfg)
    builders: Dict[str, Callable] = {
        "audio_encoder": _spec_audio, "token_embed": _spec_embed,
        "llm_prefill": _spec_prefill, "llm_decode": _spec_decode, "llm": _spec_static,
        "connector_step": _spec_connector, "motion_decoder": _spec_motion,
        "token2wav": _spec_token2wav}
    if name not in builders:
        raise KeyError(f"unknown graph {name!r}; known: {', '.join(GRAPHS)}")
    spec = builders[name](model, cfg, dims)
    if not spec.profiles:
        spec.profiles = {"default": _profile(spec.inputs, dims)}
    return spec


def _hidden(model) -> int:
    return model.cfg.llm.hidden_size


def _spec_audio(model, cfg, dims):
    M, H = model.cfg.audio.n_mels, _hidden(model)
    gen = torch.Generator().manual_seed(0)
    return GraphSpec(
        "audio_encoder", AudioEncoderGraph(model.encoder, model.adapter),
        [IOSpec("mel", "float32", (1, M, "mel_frames"))],
        [IOSpec("audio_embeds", "float32", (1, "audio_positions", H))],
        {"mel": _rand((1, M, 203), gen)}, description="audio encoder + adaptor")


def _spec_embed(model, cfg, dims):
    H = _hidden(model)
    inputs = [IOSpec("ids", "int32", (1, "n_ids"))]
    # "one": the single-token call of every static-cache decode step (fixed shape)
    profiles = {"default": _profile(inputs, dims), "one": {"ids": ((1, 1),) * 3}}
    return GraphSpec(
        "token_embed", TokenEmbedGraph(base_causal_lm(model.llm).get_input_embeddings()),
        inputs, [IOSpec("embeds", "float32", (1, "n_ids", H))],
        {"ids": torch.tensor([[1, 2, 3]], dtype=torch.int32)}, profiles=profiles,
        description="LLM input embedding lookup")


def _llm_outputs(model, kv_len, tail: Optional[Dim] = None):
    """The LLM graphs' outputs; ``tail``: the length of the prefill graphs' ``tail``
    output (None: the graph has none)."""
    V, H, K = model.vocab.size, _hidden(model), min(TOP_K, model.vocab.size)
    outs = [IOSpec("logits", "float32", (1, V)), IOSpec("hidden", "float32", (1, H)),
            IOSpec("present_kv", "float32", kv_shape(model, kv_len)),
            IOSpec("top_values", "float32", (1, K)), IOSpec("top_ids", "int32", (1, K))]
    return outs if tail is None else outs + [IOSpec("tail", "float32", (1, tail, H))]


#: The LLM graphs' pick inputs (the schedule's kind, a banned id) and their example values.
PICK_INPUTS = [IOSpec("kind", "int32", (1,)), IOSpec("banned", "int32", (1,))]


def _pick_example() -> Dict[str, torch.Tensor]:
    return {"kind": torch.tensor([2], dtype=torch.int32),
            "banned": torch.tensor([3], dtype=torch.int32)}


def _spec_prefill(model, cfg, dims):
    gen = torch.Generator().manual_seed(1)
    H = _hidden(model)
    return GraphSpec(
        "llm_prefill", LLMPrefillGraph(model.llm, cfg.max_context, model.vocab,
                                       prompt_tail(model)),
        [IOSpec("inputs_embeds", "float32", (1, "prompt_len", H))] + PICK_INPUTS,
        _llm_outputs(model, "prompt_len", prompt_tail(model)),
        {"inputs_embeds": _rand((1, 9, H), gen), **_pick_example()},
        description="LLM prefill (dynamic cache)")


def _spec_decode(model, cfg, dims):
    gen = torch.Generator().manual_seed(2)
    outs = _llm_outputs(model, "present_len")
    return GraphSpec(
        "llm_decode", LLMDecodeGraph(model.llm, cfg.max_context, model.vocab),
        [IOSpec("token_id", "int32", (1, 1)),
         IOSpec("past_kv", "float32", kv_shape(model, "past_len"))] + PICK_INPUTS, outs,
        {"token_id": torch.tensor([[5]], dtype=torch.int32),
         "past_kv": _rand(kv_shape(model, 11), gen, 0.5), **_pick_example()},
        description="LLM single-step decode (dynamic cache)")


def _spec_static(model, cfg, dims):
    gen = torch.Generator().manual_seed(3)
    H, C = _hidden(model), cfg.max_context
    inputs = [IOSpec("inputs_embeds", "float32", (1, "query_len", H)),
              IOSpec("past_kv", "float32", kv_shape(model, C)),
              IOSpec("past_len", "int32", (1,))] + PICK_INPUTS
    kv = kv_shape(model, C)
    prompt = dims["prompt_len"]
    profiles = {"prefill": {"inputs_embeds": tuple((1, p, H) for p in prompt)},
                "decode": {"inputs_embeds": ((1, 1, H),) * 3}}
    return GraphSpec(
        "llm", LLMStaticGraph(model.llm, cfg.max_context, model.vocab, prompt_tail(model)),
        inputs, _llm_outputs(model, C, "tail_len"),
        {"inputs_embeds": _rand((1, 7, H), gen), "past_kv": torch.zeros(kv),
         "past_len": torch.tensor([0], dtype=torch.int32), **_pick_example()},
        profiles=profiles, description="LLM prefill/decode over a fixed-capacity cache")


def _spec_connector(model, cfg, dims):
    c = model.connector.cfg
    st = connector_state_shape(model)
    gen = torch.Generator().manual_seed(4)
    L, K, H = c.n_levels, c.codebook_size, _hidden(model)
    inputs = [IOSpec("hidden", "float32", (1, c.pool, H)),
              IOSpec("self_kv", "float32", st), IOSpec("mem_kv", "float32", st),
              IOSpec("prev_codes", "int32", (1, L)), IOSpec("step", "int32", (1,)),
              IOSpec("noise", "float32", (1, L, K)),
              IOSpec("inv_temperature", "float32", (1,)), IOSpec("top_k", "int32", (1,))]
    outputs = [IOSpec("codes", "int32", (1, L)), IOSpec("logits", "float32", (1, L, K)),
               IOSpec("self_kv_out", "float32", st), IOSpec("mem_kv_out", "float32", st)]
    example = {"hidden": _rand((1, c.pool, H), gen), "self_kv": _rand(st, gen, 0.1),
               "mem_kv": _rand(st, gen, 0.1), "prev_codes": torch.zeros(1, L, dtype=torch.int32),
               "step": torch.tensor([3], dtype=torch.int32), "noise": torch.zeros(1, L, K),
               "inv_temperature": torch.ones(1), "top_k": torch.zeros(1, dtype=torch.int32)}
    return GraphSpec("connector_step", ConnectorStepGraph(model.connector), inputs, outputs,
                     example, description="Motion Connector step (one 200 ms segment)")


def _spec_motion(model, cfg, dims):
    L, D = model.cfg.motion.n_levels, model.layout.dim
    shapes = motion_cache_shapes(model)
    gen = torch.Generator().manual_seed(5)
    inputs = [IOSpec("codes", "int32", (1, 1, L))] + \
        [IOSpec(f"cache_{i}", "float32", s) for i, s in enumerate(shapes)]
    outputs = [IOSpec("frames", "float32", (1, model.cfg.motion.frames_per_latent, D))] + \
        [IOSpec(f"cache_{i}_out", "float32", s) for i, s in enumerate(shapes)]
    example = {"codes": torch.zeros(1, 1, L, dtype=torch.int32)}
    example.update({f"cache_{i}": _rand(s, gen, 0.1) for i, s in enumerate(shapes)})
    return GraphSpec("motion_decoder", MotionDecoderGraph(model.motion_tokenizer), inputs,
                     outputs, example, description="RVQ motion decoder, one 200 ms segment")


def _spec_token2wav(model, cfg, dims):
    t2w = model.token2wav
    if not isinstance(t2w, GriffinLimToken2Wav):
        raise ValueError(f"token2wav export supports the Griffin-Lim decoder, not "
                         f"{type(t2w).__name__}")
    n = model.cfg.codec.chunk_tokens
    st = token2wav_state_shapes(model)
    state_in = [IOSpec(k, "float32", s) for k, s in st.items()]
    state_out = [IOSpec(f"{k}_out", "float32", s) for k, s in st.items()]
    inputs = [IOSpec("tokens", "int32", (n,)), IOSpec("n_valid", "int32", (1,))] + state_in
    outputs = [IOSpec("audio", "float32", (n * SAMPLES_PER_SPEECH_TOKEN,))] + state_out
    example = {"token": torch.tensor([7], dtype=torch.int32)}
    example.update(token2wav_initial_state(model))
    return GraphSpec("token2wav", Token2WavStepGraph(t2w), inputs, outputs, example,
                     description=f"Griffin-Lim token-to-wave, {n}-token chunk", repeat=n,
                     trace_inputs=[IOSpec("token", "int32", (1,))] + state_in,
                     trace_outputs=[IOSpec("audio", "float32", (SAMPLES_PER_SPEECH_TOKEN,))]
                     + state_out)
