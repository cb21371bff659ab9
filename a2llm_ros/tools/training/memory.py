"""Memory and step-time estimate of a training run, computed before it starts.

Parameter counts come from the real modules, built on the ``meta`` device (no
storage), so they follow the configs exactly.  Everything else is a formula of
those counts and of a typical sample (:class:`Workload`).

Bytes per device
----------------
* frozen weights: backbone (audio encoder, adaptor, LLM) at the backbone dtype
  (bfloat16 on CUDA, float32 on CPU), the other parts in float32;
* trained weights float32 (they are the optimizer's master copy), gradients
  float32, AdamW's two moments float32: 4 + 4 + 8 = 16 bytes per trained
  parameter; DDP adds its gradient buckets (+4) when world > 1;
* DDP replicates all of it on every GPU.  FSDP as the trainer does it
  (``distributed: fsdp``, :data:`~a2llm_ros.tools.training.config.SHARDED_RUNS`)
  divides the parameters inside the LLM's decoder layers (frozen weights, and
  the trained ones with their gradients and moments) by the world size; the
  rest (audio encoder, adaptor, embeddings, head, connector) stays replicated
  under DDP, with buckets for its trained part.  It adds two gathered decoder
  layers (the one computing and the one prefetched) and, when the layers are
  trained (``base``), one layer's unsharded gradient before its reduce-scatter;
* activations: the tensors autograd keeps for the backward pass, with
  a = 2 bytes (bfloat16 autocast on CUDA) or 4 (float32 on CPU), per decoder
  layer and sample of T positions attending to S keys (S = shared prompt
  prefix + T), h heads, hidden H, FFN width F, LoRA rank r on all seven
  projections::

      LoRA:  T (8H + 8 + a (4H + 4F + 7r)) + 2 S H a + h T S (4 + a')
      full:  T (8H + 8 + a (6H + 4F))      + 2 S H a + h T S (4 + a')

  8H: the float32 inputs of the two RMSNorms; 4H: inputs of q/k/v, o, gate/up
  and q itself; 4F: gate, silu(gate), up and the down projection's input;
  2SH: keys and values repeated to h heads; h T S: the float32 softmax plus
  its a-byte copy (a' = a, or 0 in float32).  Full training adds the two norm
  outputs (2H).  With gradient checkpointing a layer keeps only its input
  (T H a) and one layer at a time is recomputed (its activations as above).
  The LM head keeps one float32 log-softmax [N, V] per cross-entropy (text and
  speech: 2) over the N answer tokens, and needs a float32 logits buffer and
  its gradient while it runs (the "head workspace", 2 N V 4).  The audio
  encoder keeps activations only when it is trained (``base``).
* stage 1's hidden cache: samples x speech tokens x H values in the LLM's
  dtype: on the device (``memory``), on disk (``disk``) or none
  (``recompute``).

Not counted: the CUDA context and allocator slack (typically 1-3 GB), the
data loader, NCCL buffers.

FLOPs per step
--------------
A matrix multiply with P weights costs 2 P FLOPs per token forward; the
backward pass costs 2 P for the input gradients plus 2 P for the weight
gradients.  So a trained part costs 6 P per token, a frozen part that
gradients flow through (the LLM under LoRA) 4 P, a frozen part before every
trained one (the audio encoder under LoRA) 2 P; a checkpointed layer adds
one more forward (2 P).  Attention adds 4 T S d per layer forward (Q K^T and
the weighted sum, d = heads x head size), the LM head 2 H V per answer token.
Step time = FLOPs per GPU / (peak x MFU); the peaks are dense bfloat16 tensor
throughput from the vendors' data sheets (:data:`ACCELERATORS`), and 40 % MFU
is a typical achieved fraction for short sequences, an assumption.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from a2llm_ros.config import A2LLMConfig
from a2llm_ros.constants import MEL_HOP, SAMPLE_RATE, SPEECH_TOKEN_RATE, SPEECH_TOKENS_PER_SEGMENT
from a2llm_ros.tools.training.config import SHARDED_RUNS, STAGES, STRATEGIES, TrainConfig

GIB = 2 ** 30
#: Assumed model FLOPs utilisation for the step time.
DEFAULT_MFU = 0.40
#: Percentile of the data's question / answer durations the Trainer's estimate uses.
DATA_PERCENTILE = 95.0
#: Typical question and answer lengths (s) of a training sample (the estimate's assumption).
QUESTION_SECONDS, ANSWER_SECONDS = 5.0, 5.0
#: Step-Audio-2-mini's chat prompt without the audio patches, in its tokenizer's tokens:
#: "<|BOT|>system\nYou are a helpful assistant.<|EOT|>" (10), "<|BOT|>human\n" (3),
#: <audio_start>, <audio_end>, <|EOT|>, "<|BOT|>assistant\n<tts_start>" (4).
STEP_PROMPT_TEXT_TOKENS = 20
#: ... of which the shared prefix before the first <audio_patch> (run once per batch).
STEP_PROMPT_PREFIX_TOKENS = 14
#: Answer ends: <tts_pad>, <tts_end>, <|EOT|>.
ANSWER_END_TOKENS = 3
#: Bytes of the optimizer's state per trained parameter: float32 weight, gradient, 2 moments.
WEIGHT_BYTES, GRAD_BYTES, ADAM_BYTES = 4, 4, 8
#: Cross-entropies over the LM head's logits in forward_train (text, speech).
N_LM_CE = 2
#: :attr:`Estimate.parallelism` of a single process (no data parallelism).
ONE_PROCESS = "one process"
#: Linear layers of a Qwen2 decoder layer, grouped by the input they share.
QKV, MLP_IN = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
BACKBONE = ("encoder", "adapter", "llm")


@dataclass(frozen=True)
class Accelerator:
    """A device's dense bfloat16 tensor peak (FLOP/s) and memory (bytes)."""

    name: str
    peak_flops: float
    memory_bytes: float


#: Dense bf16 peaks from the data sheets (no structured sparsity).  Jetson AGX Orin
#: 64 GB: its GPU's 170 sparse INT8 TOPS are 85 dense INT8, i.e. ~42.5 dense FP16/BF16.
ACCELERATORS = {
    "a100": Accelerator("A100 SXM 80 GB", 312e12, 80e9),
    "h100": Accelerator("H100 SXM 80 GB", 989e12, 80e9),
    "h200": Accelerator("H200 SXM 141 GB", 989e12, 141e9),
    "orin": Accelerator("Jetson AGX Orin 64 GB", 42.5e12, 64e9),
}


# ----------------------------------------------------------------------------- parameters

def _meta_parts(cfg: A2LLMConfig) -> Dict[str, nn.Module]:
    """The neural parts of :class:`~a2llm_ros.model.a2llm.A2LLM`, built without storage."""
    from a2llm_ros.model.audio_encoder import Adapter, AudioEncoder
    from a2llm_ros.model.audio_llm import build_llm
    from a2llm_ros.model.connector import MotionConnector
    from a2llm_ros.model.motion_tokenizer import MotionTokenizer
    with torch.device("meta"):
        return {"encoder": AudioEncoder(cfg.audio), "adapter": Adapter(cfg.audio),
                "llm": build_llm(cfg.llm), "connector": MotionConnector(cfg.connector),
                "motion_tokenizer": MotionTokenizer(cfg.motion)}


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_params(llm: nn.Module, rank: int, targets: Sequence[str]) -> int:
    """Parameters of a rank-``rank`` LoRA on the ``targets`` linears: r (in + out) each."""
    return sum(rank * (m.in_features + m.out_features) for name, m in llm.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets)


def param_counts(cfg: A2LLMConfig, lora_rank: int = 0,
                 lora_targets: Sequence[str] = ()) -> Dict[str, int]:
    """Parameters per part: encoder, adapter, llm (of which llm_layers, llm_layer = one
    decoder layer, llm_embed, llm_head), connector (of which connector_embed, its lookup
    tables), motion_tokenizer, and lora (rank ``lora_rank`` on ``lora_targets``)."""
    parts = _meta_parts(cfg)
    llm = parts["llm"]
    out = {name: _numel(m) for name, m in parts.items()}
    out["llm_layers"] = _numel(llm.model.layers)
    out["llm_layer"] = _numel(llm.model.layers[0]) if len(llm.model.layers) else 0
    out["llm_embed"] = llm.model.embed_tokens.weight.numel()
    out["llm_head"] = 0 if cfg.llm.tie_word_embeddings else llm.lm_head.weight.numel()
    out["connector_embed"] = sum(m.weight.numel() for m in parts["connector"].modules()
                                 if isinstance(m, nn.Embedding))
    out["lora"] = lora_params(llm, lora_rank, lora_targets) if lora_rank else 0
    return out


# ----------------------------------------------------------------------------- workload

@dataclass(frozen=True)
class Workload:
    """Positions of one typical training sample."""

    mel_frames: int     # question log-mel frames (100 Hz)
    prefix: int         # shared prompt prefix (before the audio), run once per batch
    prompt: int         # whole prompt: text + audio patches (12.5 Hz)
    answer: int         # answer tokens: text + speech + ends
    speech: int         # speech tokens of the answer (25 Hz)

    @property
    def row(self) -> int:
        """Positions of a row after the shared prefix."""
        return self.prompt - self.prefix + self.answer

    @property
    def segments(self) -> int:
        """Motion segments (5 speech tokens each)."""
        return self.speech // SPEECH_TOKENS_PER_SEGMENT


def _prompt_tokens(cfg: A2LLMConfig, n_patches: int):
    """(prefix, whole prompt) tokens: the tiny tokenizer's exact count, Step's assumed."""
    if cfg.llm.backbone:
        return STEP_PROMPT_PREFIX_TOKENS, STEP_PROMPT_TEXT_TOKENS + n_patches
    from a2llm_ros.model.chat import Vocab, build_prompt
    from a2llm_ros.model.text_tokenizer import make_tiny_tokenizer
    tok = make_tiny_tokenizer(cfg.codec.n_codes)
    prompt = build_prompt(tok, Vocab.from_tokenizer(tok, cfg.codec.n_codes, cfg.llm.vocab_size),
                          n_patches)
    return prompt.patch_start, len(prompt.ids)


def typical_workload(cfg: A2LLMConfig, question_s: float = QUESTION_SECONDS,
                     answer_s: float = ANSWER_SECONDS) -> Workload:
    """A sample with a ``question_s`` question and a ``answer_s`` spoken answer whose
    text tokens follow the interleave ratio (text : speech per group)."""
    from a2llm_ros.model.chat import n_positions
    frames = (int(question_s * SAMPLE_RATE) + cfg.mel.pad_samples) // MEL_HOP
    patches = n_positions(frames)
    prefix, prompt = _prompt_tokens(cfg, patches)
    speech = int(round(answer_s * SPEECH_TOKEN_RATE))
    text = math.ceil(speech * cfg.interleave.text_per_group / cfg.interleave.speech_per_group)
    return Workload(mel_frames=frames, prefix=prefix, prompt=prompt,
                    answer=speech + text + ANSWER_END_TOKENS, speech=speech)


# ----------------------------------------------------------------------------- activations

def _lora_saved(llm_cfg, rank: int, targets: Sequence[str]) -> int:
    """Elements per token a LoRA adds inside a layer: its A inputs (shared per group)
    beyond those a frozen layer keeps, and its rank-r A outputs."""
    H, F = llm_cfg.hidden_size, llm_cfg.intermediate_size
    groups = [(QKV, H), (("o_proj",), H), (MLP_IN, H), (("down_proj",), F)]
    inputs = sum(width for names, width in groups if set(names) & set(targets))
    return inputs + rank * sum(1 for t in targets if t in QKV + MLP_IN + ("o_proj", "down_proj"))


def llm_layer_bytes(llm_cfg, rows: int, T: int, S: int, a: int, trained: str,
                    lora_rank: int = 0, lora_targets: Sequence[str] = ()) -> int:
    """Saved activations of one decoder layer (module docstring): ``rows`` x ``T``
    positions attending to ``S`` keys; ``trained`` "full" or "lora"."""
    H, F, h = llm_cfg.hidden_size, llm_cfg.intermediate_size, llm_cfg.n_heads
    a_copy = a if a != 4 else 0
    per_token = 8 * H + 8 + a * (H + 3 * F)  # norm inputs (fp32); q; gate, silu, up
    if trained == "full":
        per_token += a * (5 * H + F)  # both norm outputs, q/k/v, o, gate/up, down inputs
    else:
        per_token += a * _lora_saved(llm_cfg, lora_rank, lora_targets)
    attention = 2 * S * H * a + h * T * S * (4 + a_copy)
    return rows * (T * per_token + attention)


def encoder_block_bytes(audio_cfg, rows: int, T50: int, a: int) -> int:
    """Saved activations of one trained audio-encoder block (pre-LN attention + GELU MLP):
    8 d-wide tensors and 2 FFN-wide ones per frame, plus the attention probabilities."""
    d, ff, h = audio_cfg.d_model, audio_cfg.ff, audio_cfg.n_heads
    a_copy = a if a != 4 else 0
    return rows * (T50 * (a * (8 * d + 2 * ff) + 16) + h * T50 * T50 * (4 + a_copy))


def encoder_stem_bytes(audio_cfg, rows: int, T50: int, a: int) -> int:
    """Saved activations around the trained blocks: the conv stem at 100 Hz (mel input,
    2 x d-wide), the 50 Hz GELU, after-norm and the adaptor at 25 / 12.5 Hz (approximate)."""
    d, M, ah = audio_cfg.d_model, audio_cfg.n_mels, audio_cfg.adaptor_hidden
    return rows * a * T50 * (2 * M + 7 * d + ah // 4)


def connector_bytes(conn_cfg, rows: int, segments: int) -> int:
    """Saved activations of the Motion Connector (float32, approximate): its input norm
    over 5 S x H, ~16 d + 2 FFN values per segment and layer plus two attentions'
    probabilities, and per RVQ level ~5 d + 2 K (head MLP, logits, log-softmax)."""
    d, S, L = conn_cfg.d_model, segments, conn_cfg.n_levels
    inputs = 2 * SPEECH_TOKENS_PER_SEGMENT * S * conn_cfg.llm_hidden
    layers = conn_cfg.n_layers * S * (16 * d + 2 * conn_cfg.ff + 2 * conn_cfg.n_heads * S)
    heads = S * L * (5 * d + 2 * conn_cfg.codebook_size)
    return 4 * rows * (inputs + layers + heads)


def head_bytes(V: int, H: int, n_answer: int, a: int, trained: str) -> int:
    """LM head: one float32 log-softmax [N, V] per cross-entropy (+ its input when trained)."""
    return n_answer * (N_LM_CE * V * 4 + (H * a if trained == "full" else 0))


# ----------------------------------------------------------------------------- estimate

@dataclass
class Estimate:
    """Bytes per device and FLOPs of one step of one run (see module docstring)."""

    preset: str
    run: str
    world_size: int
    parallelism: str
    device: str
    checkpointing: bool
    rows_per_device: int
    workload: Workload
    params: Dict[str, int]
    trained_params: int
    bytes: Dict[str, float] = field(default_factory=dict)
    hidden_cache_bytes: float = 0.0
    hidden_cache: str = "memory"
    rvq_frames: int = 0
    steps: int = 0
    flops_per_device: float = 0.0
    #: Stage 1: FLOPs of building the cache (one forward per sample, all devices).
    cache_build_flops: float = 0.0

    @property
    def total_bytes(self) -> float:
        """Device memory: every entry of ``bytes``."""
        return float(sum(self.bytes.values()))

    def step_seconds(self, accelerator: Accelerator, mfu: float = DEFAULT_MFU) -> float:
        """Expected step time at ``mfu`` of the accelerator's peak."""
        return self.flops_per_device / (accelerator.peak_flops * mfu)


def _world_size() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _trained_parts(run: str) -> List[str]:
    return {"rvq": ["motion_tokenizer"], "base": list(BACKBONE), "connector": ["connector"],
            "joint": ["lora", "connector"], "affective": ["lora", "connector"]}[run]


def _rows(tcfg: TrainConfig, run: str, world: int) -> int:
    """Rows per device: the global batch (plus transcription rows) split over ranks."""
    extra = {"base": tcfg.asr_samples, "joint": tcfg.asr_samples_lora,
             "affective": tcfg.asr_samples_lora}.get(run, 0)
    return math.ceil((tcfg.stage(run).batch_size + extra) / world)


def estimate(mcfg: A2LLMConfig, tcfg: TrainConfig, run: str, world_size: int = 1,
             device: str = "cuda", n_samples: int = 0, parallelism: Optional[str] = None,
             workload: Optional[Workload] = None) -> Estimate:
    """Memory per device and FLOPs per step of ``run`` (one of :data:`STAGES`).

    ``device`` "cuda" means a bfloat16 backbone and activations, anything else
    float32; ``n_samples`` sizes stage 1's hidden cache; ``parallelism`` "ddp" or
    "fsdp" (default: the training config's ``distributed``, ``auto`` resolved as
    the trainer resolves it: :attr:`TrainConfig.strategy`).
    """
    if run not in STAGES:
        raise KeyError(f"unknown training run {run!r}; known: {', '.join(STAGES)}")
    parallelism = parallelism or tcfg.strategy
    if parallelism not in STRATEGIES[1:]:
        raise ValueError(f"parallelism {parallelism!r}: expected one of {STRATEGIES[1:]}")
    if run not in SHARDED_RUNS:
        parallelism = "ddp"  # what the trainer runs when no decoder layer is sharded
    lora = run in ("joint", "affective")
    params = param_counts(mcfg, tcfg.lora_rank if lora else 0, tcfg.lora_targets)
    trained = sum(params[p] for p in _trained_parts(run))
    est = Estimate(preset=tcfg.preset_name, run=run, world_size=world_size,
                   parallelism=parallelism if world_size > 1 else ONE_PROCESS,
                   device=device, checkpointing=tcfg.gradient_checkpointing and run != "rvq",
                   rows_per_device=_rows(tcfg, run, world_size),
                   workload=workload or typical_workload(mcfg), params=params,
                   trained_params=trained, hidden_cache=tcfg.hidden_cache,
                   rvq_frames=tcfg.rvq_window_frames, steps=tcfg.stage(run).steps)
    _weight_bytes(est)
    _activation_bytes(est, mcfg, tcfg)
    _cache_bytes(est, mcfg, n_samples)
    est.flops_per_device = step_flops(est, mcfg)
    return est


def _dtype_bytes(device: str) -> int:
    """Backbone weight and activation bytes: bfloat16 on CUDA, float32 elsewhere."""
    return 2 if str(device).startswith("cuda") else 4


def _layer_params(est: Estimate) -> Dict[str, int]:
    """Parameters inside the LLM's decoder layers that the run trains and keeps frozen
    (the LoRA sits in the layers' projections)."""
    p = est.params
    if est.run == "base":
        return {"trained": p["llm_layers"], "frozen": 0}
    if est.run in ("joint", "affective"):
        return {"trained": p["lora"], "frozen": p["llm_layers"]}
    return {"trained": 0, "frozen": 0}


def is_sharded(est: Estimate) -> bool:
    """Whether the trainer shards this run's decoder layers (FSDP over several ranks)."""
    return est.parallelism == "fsdp"


def _weight_bytes(est: Estimate) -> None:
    p, w = est.params, _dtype_bytes(est.device)
    trained = _trained_parts(est.run)
    frozen = sum(p[x] * (w if x in BACKBONE else 4) for x in BACKBONE + (
        "connector", "motion_tokenizer") if x not in trained)
    n, world = est.trained_params, est.world_size
    replicated = n  # trained parameters every rank holds whole
    if is_sharded(est):
        layers = _layer_params(est)
        frozen -= layers["frozen"] * w * (1 - 1 / world)
        replicated = n - layers["trained"]
        n = replicated + layers["trained"] / world
    est.bytes["frozen weights"] = frozen
    est.bytes["trained weights"] = n * WEIGHT_BYTES
    est.bytes["gradients"] = n * GRAD_BYTES
    est.bytes["AdamW moments"] = n * ADAM_BYTES
    if world > 1 and replicated:
        est.bytes["DDP buckets"] = replicated * GRAD_BYTES
    if is_sharded(est):
        layers, n_layers = _layer_params(est), max(1, p["llm_layers"] // max(1, p["llm_layer"]))
        frozen_one, trained_one = layers["frozen"] / n_layers, layers["trained"] / n_layers
        # two layers gathered (frozen weights at w bytes, trained ones float32), and when
        # the layers are trained one layer's whole gradient before its reduce-scatter
        est.bytes["FSDP gathered layers"] = (2 * (frozen_one * w + trained_one * WEIGHT_BYTES)
                                             + (trained_one * GRAD_BYTES
                                                if est.run == "base" else 0))


def _activation_bytes(est: Estimate, mcfg: A2LLMConfig, tcfg: TrainConfig) -> None:
    run, wl, rows = est.run, est.workload, est.rows_per_device
    a = _dtype_bytes(est.device)
    llm = mcfg.llm
    if run in ("base", "joint", "affective"):
        mode = "full" if run == "base" else "lora"
        rank = tcfg.lora_rank if mode == "lora" else 0
        T, S = wl.row, wl.prefix + wl.row
        layer = (llm_layer_bytes(llm, rows, T, S, a, mode, rank, tcfg.lora_targets)
                 + llm_layer_bytes(llm, 1, wl.prefix, wl.prefix, a, mode, rank,
                                   tcfg.lora_targets))
        if est.checkpointing:
            kept = llm.n_layers * (rows * T + wl.prefix) * llm.hidden_size * a + layer
            kept += rows * T * S * a  # the attention mask, an input of every layer
        else:
            kept = llm.n_layers * layer
        est.bytes["LLM activations"] = kept
        n_answer = rows * wl.answer
        est.bytes["LM head activations"] = head_bytes(llm.vocab_size, llm.hidden_size,
                                                      n_answer, a, mode)
        est.bytes["LM head workspace"] = 2 * n_answer * llm.vocab_size * 4
    if run == "base":
        est.bytes["encoder activations"] = _encoder_activations(est, mcfg, a)
    if run in ("connector", "joint", "affective"):
        est.bytes["connector activations"] = connector_bytes(mcfg.connector, rows, wl.segments)


def _encoder_activations(est: Estimate, mcfg: A2LLMConfig, a: int) -> float:
    from a2llm_ros.model.audio_encoder import n_frames_50
    T50, rows, audio = n_frames_50(est.workload.mel_frames), est.rows_per_device, mcfg.audio
    block = encoder_block_bytes(audio, rows, T50, a)
    stem = encoder_stem_bytes(audio, rows, T50, a)
    if est.checkpointing:
        return audio.n_layers * rows * T50 * audio.d_model * a + block + stem
    return audio.n_layers * block + stem


def _cache_bytes(est: Estimate, mcfg: A2LLMConfig, n_samples: int) -> None:
    if est.run != "connector":
        return
    size = n_samples * est.workload.speech * mcfg.llm.hidden_size * _dtype_bytes(est.device)
    est.hidden_cache_bytes = size
    if est.hidden_cache != "recompute":
        per_sample = (llm_forward_flops(mcfg, est.params, est.workload, 1)["layers"]
                      + audio_forward_flops(mcfg, est.params, est.workload, 1))
        est.cache_build_flops = n_samples * per_sample
    if est.hidden_cache == "memory":
        est.bytes["hidden cache"] = size


# ----------------------------------------------------------------------------- FLOPs

def _attention_flops(n_layers: int, T: int, S: int, width: int) -> int:
    """Forward Q K^T and the weighted sum: 4 T S d per layer."""
    return 4 * n_layers * T * S * width


def llm_forward_flops(mcfg: A2LLMConfig, p: Dict[str, int], wl: Workload,
                      rows: int) -> Dict[str, float]:
    """Forward FLOPs of the LLM's layers (rows + the shared prefix once) and its head;
    ``p``: :func:`param_counts`."""
    llm = mcfg.llm
    width = llm.n_heads * (llm.hidden_size // llm.n_heads)
    T, S = wl.row, wl.prefix + wl.row
    layers = (2 * p["llm_layers"] * (rows * T + wl.prefix)
              + rows * _attention_flops(llm.n_layers, T, S, width)
              + _attention_flops(llm.n_layers, wl.prefix, wl.prefix, width))
    head = 2 * llm.hidden_size * llm.vocab_size * rows * wl.answer
    return {"layers": layers, "head": head}


def audio_forward_flops(mcfg: A2LLMConfig, p: Dict[str, int], wl: Workload,
                        rows: int) -> float:
    """Forward FLOPs of the audio encoder (at 50 Hz) and adaptor (at 12.5 Hz) per batch."""
    from a2llm_ros.model.audio_encoder import n_frames_50
    from a2llm_ros.model.chat import n_positions
    audio = mcfg.audio
    T50 = n_frames_50(wl.mel_frames)
    enc = 2 * p["encoder"] * T50 + _attention_flops(audio.n_layers, T50, T50, audio.d_model)
    return rows * (enc + 2 * p["adapter"] * n_positions(wl.mel_frames))


def step_flops(est: Estimate, mcfg: A2LLMConfig) -> float:
    """FLOPs of one step on one device (module docstring: 6 / 4 / 2 P per token)."""
    wl, rows, p, run = est.workload, est.rows_per_device, est.params, est.run
    ckpt = 1 if est.checkpointing else 0
    connector = 6 * (p["connector"] - p["connector_embed"]) * rows * wl.segments
    if run == "rvq":  # rough: every weight once per FLAME frame of the window
        return 6 * p["motion_tokenizer"] * rows * est.rvq_frames
    if run == "connector":
        if est.hidden_cache != "recompute":
            return connector
        llm = llm_forward_flops(mcfg, p, wl, rows)["layers"]
        return connector + llm + audio_forward_flops(mcfg, p, wl, rows)
    llm = llm_forward_flops(mcfg, p, wl, rows)
    audio = audio_forward_flops(mcfg, p, wl, rows)
    if run == "base":
        return (3 + ckpt) * (llm["layers"] + audio) + 3 * llm["head"]
    lora = 6 * p["lora"] * rows * wl.row
    return (2 + ckpt) * llm["layers"] + 2 * llm["head"] + audio + lora + connector


# ----------------------------------------------------------------------------- reports

def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _size(n: float) -> str:
    """GiB, or MiB below one GiB."""
    return _gib(n) if n >= GIB else f"{n / 2 ** 20:.1f} MiB"


def summary_line(est: Estimate) -> str:
    """One line: total per device and its largest parts, FLOPs per step."""
    parts = sorted(est.bytes.items(), key=lambda kv: -kv[1])[:3]
    text = ", ".join(f"{k} {_size(v)}" for k, v in parts)
    cache = ""
    if est.run == "connector":
        cache = (f"; hidden cache {est.hidden_cache} {_size(est.hidden_cache_bytes)}"
                 if est.hidden_cache != "recompute" else "; hidden states recomputed")
    return (f"{est.run}: memory estimate {_size(est.total_bytes)} per device ({text}){cache}; "
            f"{est.flops_per_device / 1e12:.3g} TFLOP per step and device")


def report(est: Estimate, accelerators: Sequence[str] = ("a100", "h100"),
           mfu: float = DEFAULT_MFU) -> str:
    """Multi-line estimate: workload, parameters, bytes per part, FLOPs and step times."""
    wl, p = est.workload, est.params
    lines = [f"{est.preset} {est.run}: {est.world_size} device(s), {est.parallelism}, "
             f"{'bfloat16' if _dtype_bytes(est.device) == 2 else 'float32'}, gradient "
             f"checkpointing {'on' if est.checkpointing else 'off'}, "
             f"{est.rows_per_device} rows per device",
             f"  sample: prompt {wl.prompt} (prefix {wl.prefix}) + answer {wl.answer} tokens "
             f"({wl.speech} speech), {wl.mel_frames} mel frames",
             f"  parameters: LLM {p['llm'] / 1e9:.3f} G, encoder {p['encoder'] / 1e9:.3f} G, "
             f"adaptor {p['adapter'] / 1e6:.1f} M, connector {p['connector'] / 1e6:.1f} M, "
             f"LoRA {p['lora'] / 1e6:.1f} M; trained {est.trained_params / 1e6:.1f} M"]
    lines += [f"  {k:<24}{_size(v):>12}" for k, v in est.bytes.items()]
    lines.append(f"  {'total per device':<24}{_size(est.total_bytes):>12}")
    if est.run == "connector":
        where = "device" if est.hidden_cache == "memory" else est.hidden_cache
        lines.append(f"  hidden cache ({where}): {_size(est.hidden_cache_bytes)}")
    lines.append(f"  FLOPs per step and device: {est.flops_per_device / 1e12:.3g} T")
    for key in accelerators:
        acc = ACCELERATORS[key]
        step = est.step_seconds(acc, mfu)
        lines.append(f"  step time on {acc.name}: {step:.3g} s at {mfu:.0%} MFU "
                     f"({est.steps} steps: {est.steps * step / 3600:.3g} h)")
        if est.cache_build_flops:
            build = est.cache_build_flops / (acc.peak_flops * mfu)  # on one device
            lines.append(f"    building the hidden cache: {build / 60:.3g} min")
    return "\n".join(lines)


def data_workload(mcfg: A2LLMConfig, data, percentile: float = DATA_PERCENTILE) -> Workload:
    """:func:`typical_workload` at the ``percentile`` of the question and answer durations
    of a :class:`~a2llm_ros.tools.training.data.TrainData` (long samples set the peak)."""
    def seconds(attr: str) -> float:
        lengths = [len(getattr(s, attr)) / SAMPLE_RATE for s in data.samples]
        return float(np.percentile(lengths, percentile)) if lengths else 0.0
    return typical_workload(mcfg, seconds("question_audio"), seconds("answer_audio"))


def apply_memory_settings(model, tcfg: TrainConfig, run: str, device, data=None) -> str:
    """Set ``tcfg.gradient_checkpointing`` on the model's LLM and audio encoder and
    return the one-line estimate of ``run`` (:func:`summary_line`) for ``data``'s
    sample count and :func:`data_workload` (the typical sample without data)."""
    from a2llm_ros.model.audio_llm import base_causal_lm
    base_causal_lm(model.llm).gradient_checkpointing = tcfg.gradient_checkpointing
    model.encoder.gradient_checkpointing = tcfg.gradient_checkpointing
    workload = data_workload(model.cfg, data) if data is not None else None
    est = estimate(model.cfg, tcfg, run, _world_size(), str(device),
                   len(data) if data is not None else 0, workload=workload)
    return summary_line(est)


def markdown_table(presets: Sequence[str] = ("paper", "edge"),
                   gpus: Sequence[int] = (1, 8), n_samples: int = 100_000) -> str:
    """The docs' table: memory per GPU and step time per preset, run and GPU count."""
    head = ("| preset | run | GPUs | rows/GPU | weights + optimizer | activations "
            "| total per GPU | s/step A100 / H100 | run hours A100 / H100 |")
    lines = [head, "|" + "---|" * 9]
    for preset in presets:
        mcfg, tcfg = A2LLMConfig.preset(preset), TrainConfig.preset(preset)
        device = "cpu" if preset == "tiny" else "cuda"
        for run in STAGES:
            if run == "rvq" or tcfg.stage(run).steps == 0:
                continue
            for n in gpus:
                est = estimate(mcfg, tcfg, run, n, device, n_samples)
                lines.append(_table_row(est))
    return "\n".join(lines)


def _table_row(est: Estimate) -> str:
    act = sum(v for k, v in est.bytes.items() if "activations" in k or "workspace" in k)
    static = est.total_bytes - act
    step = [est.step_seconds(ACCELERATORS[k]) for k in ("a100", "h100")]
    hours = [f"{est.steps * t / 3600:.2g}" for t in step]
    return (f"| {est.preset} | {est.run} | {est.world_size} ({est.parallelism}) "
            f"| {est.rows_per_device} | {_gib(static)} | {_gib(act)} "
            f"| {_gib(est.total_bytes)} | {step[0]:.2g} / {step[1]:.2g} "
            f"| {hours[0]} / {hours[1]} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m a2llm_ros.tools.training.memory``: print the estimate of every run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper", choices=("tiny", "edge", "paper"))
    parser.add_argument("--config", default=None, help="training config YAML")
    parser.add_argument("--run", default="all", help="one run of the curriculum, or all")
    parser.add_argument("--gpus", type=int, default=1, help="data-parallel world size")
    parser.add_argument("--samples", type=int, default=100_000,
                        help="training samples (sizes the stage-1 hidden cache)")
    parser.add_argument("--device", default=None, help="cuda (bfloat16) or cpu (float32)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU)
    parser.add_argument("--on", default="a100,h100",
                        help=f"step times on these ({', '.join(ACCELERATORS)})")
    parser.add_argument("--table", action="store_true", help="the docs' markdown table")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(n_samples=args.samples))
        return 0
    return print_estimate(_train_config(args), world_size=args.gpus, n_samples=args.samples,
                          device=args.device, run=args.run, mfu=args.mfu,
                          accelerators=args.on.split(","))


def _train_config(args) -> TrainConfig:
    from a2llm_ros.tools.training.config import load_train_config
    return load_train_config(args.config, None if args.config else args.preset)


def print_estimate(tcfg: TrainConfig, model_config: Optional[A2LLMConfig] = None,
                   world_size: int = 1, n_samples: int = 100_000, device: Optional[str] = None,
                   run: str = "all", mfu: float = DEFAULT_MFU,
                   accelerators: Sequence[str] = ("a100", "h100")) -> int:
    """Print :func:`report` for ``run`` (or every run with steps) of ``tcfg``; returns 0."""
    mcfg = model_config or A2LLMConfig.preset(tcfg.preset_name)
    device = device or ("cpu" if tcfg.preset_name == "tiny" else "cuda")
    runs = [r for r in STAGES if tcfg.stage(r).steps] if run == "all" else [run]
    for name in runs:
        est = estimate(mcfg, tcfg, name, world_size, device, n_samples)
        print(report(est, accelerators, mfu))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
