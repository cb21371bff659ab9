"""Every model component's settings, importable without torch.

One definition of each config dataclass (the modules that build the networks import
them from here): the log-mel front end, the Step-Audio-2 audio encoder + adaptor, the
Qwen2 LLM and the answer's text/speech interleave, the Motion Connector, the RVQ-VAE
motion tokenizer and the speech codec.  :class:`a2llm_ros.config.A2LLMConfig`
composes them; presets (``tiny``, ``edge``, ``paper``) differ in sizes only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from a2llm_ros.configbase import ConfigBase
from a2llm_ros.constants import (FRAMES_PER_SEGMENT, MEL_HOP, MEL_WINDOW, SAMPLE_RATE,
                                 SAMPLES_PER_SPEECH_TOKEN, SPEECH_TOKENS_PER_SEGMENT)
from a2llm_ros.flame.layout import N_EXPR, FlameLayout


# ----------------------------------------------------------------------------- features

#: Zero samples Step-Audio-2 appends to a question before its log-mel.
STEP_PAD_SAMPLES = 479


@dataclasses.dataclass
class MelConfig(ConfigBase):
    """Log-mel front-end settings (the recipe is in :mod:`a2llm_ros.audio.features`)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = MEL_WINDOW
    hop: int = MEL_HOP
    n_mels: int = 80
    fmin: float = 0.0
    #: Upper band edge in Hz; ``None`` means ``sample_rate / 2``.
    fmax: Optional[float] = None
    mel_scale: str = "slaney"
    log_floor: float = 1e-10
    #: Per-utterance dynamic-range clamp in log10 units; 0 disables it.
    dynamic_range: float = 8.0
    offset: float = 4.0
    scale: float = 4.0
    #: Subtract each band's per-utterance mean over the speech frames.
    band_norm: bool = False
    #: Zero samples appended before the STFT (Step-Audio-2: 479, so N samples give
    #: ``(N + 479) // hop`` frames).
    pad_samples: int = 0

    PRESETS = {
        "tiny": {"n_mels": 80, "band_norm": True, "pad_samples": STEP_PAD_SAMPLES},
        "edge": {"n_mels": 128, "pad_samples": STEP_PAD_SAMPLES},
        "paper": {"n_mels": 128, "pad_samples": STEP_PAD_SAMPLES},
    }

    def __post_init__(self):
        if self.mel_scale not in ("slaney", "htk"):
            raise ValueError(f"MelConfig.mel_scale must be 'slaney' or 'htk', "
                             f"got {self.mel_scale!r}")
        if self.n_mels < 1 or self.n_fft < 2 or self.hop < 1:
            raise ValueError("MelConfig: n_mels, n_fft and hop must be positive")

    @property
    def n_freqs(self) -> int:
        """Number of one-sided STFT bins (``n_fft // 2 + 1``)."""
        return self.n_fft // 2 + 1

    @property
    def upper_hz(self) -> float:
        """Upper band edge in Hz."""
        return float(self.fmax) if self.fmax is not None else self.sample_rate / 2.0


# ----------------------------------------------------------------------------- audio_encoder

@dataclass
class AudioEncoderConfig(ConfigBase):
    """Sizes of :class:`AudioEncoder` and :class:`Adapter` (Step's ``audio_encoder_config``)."""

    n_mels: int = 128           # n_mels
    d_model: int = 1280         # n_audio_state
    n_layers: int = 32          # n_audio_layer
    n_heads: int = 20           # n_audio_head
    ff: int = 5120              # 4 x n_audio_state (Whisper)
    max_positions: int = 1500   # n_audio_ctx: 50 Hz positions, 30 s
    adaptor_hidden: int = 2048  # adapter.linear1 width
    llm_hidden: int = 3584      # llm_dim

    PRESETS = {
        "tiny": dict(n_mels=80, d_model=128, n_layers=2, n_heads=4, ff=384,
                     adaptor_hidden=256, llm_hidden=256),
        "edge": {},
        "paper": {},
    }

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError("AudioEncoderConfig: d_model must be divisible by n_heads")


# ----------------------------------------------------------------------------- audio_llm

@dataclass
class LLMConfig(ConfigBase):
    """Qwen2 backbone shape (Step-Audio-2-mini's ``text_config``) and where its weights are."""

    hidden_size: int = 3584
    n_layers: int = 28
    n_heads: int = 28
    n_kv_heads: int = 4
    intermediate_size: int = 18944
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 16384
    tie_word_embeddings: bool = False
    #: Embedding / LM-head rows.
    vocab_size: int = 158720
    #: Step-Audio-2-mini folder (absolute, or relative to the checkpoint); "" = weights
    #: live in the checkpoint itself (tiny).
    backbone: str = ""

    PRESETS = {
        "tiny": dict(hidden_size=256, n_layers=4, n_heads=4, n_kv_heads=2,
                     intermediate_size=768, max_position_embeddings=4096,
                     vocab_size=384, backbone=""),
        "edge": dict(backbone="step-audio-2-mini"),
        "paper": dict(backbone="step-audio-2-mini"),
    }


#: Step-Audio-2's answer groups ("TA4"): 1 text id, then 4 speech ids (docstring of
#: :mod:`a2llm_ros.model.audio_llm`;
#: stepfun-ai/vllm, step_audio_2_tokenizer.py, build_tts_interleave_data chunk=4).
STEP_TEXT_PER_GROUP, STEP_SPEECH_PER_GROUP = 1, 4


@dataclass
class InterleaveConfig(ConfigBase):
    """Text/speech group sizes of the answer and its layout
    (see :mod:`a2llm_ros.model.audio_llm`)."""

    text_per_group: int = 4
    speech_per_group: int = 5
    #: The checkpoint was trained on this fixed schedule: mask logits to it.
    #: False: Step-Audio-2's padded layout ("TA4"), read by id range.
    enforce: bool = False

    PRESETS = {
        "tiny": dict(text_per_group=4, speech_per_group=5, enforce=True),
        # Step-Audio-2-mini's own layout and group sizes (source: audio_llm's docstring)
        "edge": dict(text_per_group=STEP_TEXT_PER_GROUP,
                     speech_per_group=STEP_SPEECH_PER_GROUP),
        "paper": dict(text_per_group=STEP_TEXT_PER_GROUP,
                      speech_per_group=STEP_SPEECH_PER_GROUP),
    }

    def __post_init__(self):
        if self.text_per_group < 1 or self.speech_per_group < 1:
            raise ValueError("InterleaveConfig: group sizes must be >= 1")


# ----------------------------------------------------------------------------- connector

@dataclass
class ConnectorConfig(ConfigBase):
    """Hyper-parameters of :class:`MotionConnector`.

    ``llm_hidden`` must equal the hidden size of the LLM backbone: 3584 for
    Qwen2.5-7B (paper), 896 for Qwen2.5-0.5B (edge preset; use 1536 for a
    Qwen2.5-1.5B backbone), 64 for the tiny test LLM.  ``n_levels`` and
    ``codebook_size`` must match the motion tokenizer.
    """

    llm_hidden: int = 896
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    ff: int = 2048
    dropout: float = 0.1
    n_levels: int = 6
    codebook_size: int = 256
    pool: int = SPEECH_TOKENS_PER_SEGMENT
    max_segments: int = 150      # attention window in segments (150 = 30 s)
    coarse_to_fine: bool = True

    PRESETS = {
        "tiny": dict(llm_hidden=64, d_model=64, n_layers=2, n_heads=4, ff=128,
                     dropout=0.0, max_segments=32),
        "edge": dict(llm_hidden=896, d_model=512, n_layers=4, n_heads=8, ff=1536,
                     dropout=0.1, max_segments=100),
        "paper": dict(llm_hidden=3584, d_model=1024, n_layers=6, n_heads=16, ff=4096,
                      dropout=0.1, max_segments=150),
    }


# ----------------------------------------------------------------------------- motion_tokenizer

@dataclass
class MotionTokenizerConfig(ConfigBase):
    """Hyper-parameters of :class:`MotionTokenizer` (frame size comes from ``n_expr``)."""

    n_expr: int = N_EXPR
    frames_per_latent: int = FRAMES_PER_SEGMENT
    n_levels: int = 6
    codebook_size: int = 256
    latent_dim: int = 64
    hidden: int = 128            # conv channels at both rates
    enc_depth: int = 2           # residual blocks per rate in the encoder
    dec_depth: int = 2           # residual blocks per rate in the decoder
    enc_kernel: int = 3
    dec_kernel: int = 3          # causal: left context (kernel-1)*dilation per block
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_steps: int = 50    # training steps without use before a code is reset
    kmeans_iters: int = 10
    w_recon: float = 1.0
    w_velocity: float = 1.0
    w_acceleration: float = 1.0

    PRESETS = {
        "tiny": dict(latent_dim=32, hidden=64, enc_depth=1, dec_depth=1,
                     dead_code_steps=20, kmeans_iters=5),
        "edge": dict(latent_dim=128, hidden=256, enc_depth=2, dec_depth=2),
        "paper": dict(latent_dim=256, hidden=512, enc_depth=3, dec_depth=3),
    }

    @property
    def frame_dim(self) -> int:
        """Size of one FLAME frame (58 for 50 expressions, 108 for 100)."""
        return FlameLayout(n_expr=self.n_expr).dim


# ----------------------------------------------------------------------------- speech_codec

#: Step-Audio-2-mini's codec (:mod:`a2llm_ros.model.step_token2wav`): kind, output
#: rate and S3 vocabulary.
STEP_KIND = "step_token2wav"
STEP_RATE = 24_000
STEP_CODES = 6561


def refiner_pad_code(n_codes: int) -> int:
    """The mel refiner's code for "before the start / after the end of the answer"."""
    return n_codes


def refiner_empty_code(n_codes: int) -> int:
    """The mel refiner's code for a window slot not filled yet (nothing to decode)."""
    return n_codes + 1


@dataclasses.dataclass
class SpeechCodecConfig(ConfigBase):
    """Speech codec settings.

    ``edge`` and ``paper`` keep ``kind="kmeans_mel"`` (a placeholder with
    Step's 6561 codes) so everything runs without downloads; a model on a
    Step-Audio-2-mini folder uses ``kind="step_token2wav"``
    (:meth:`SpeechCodecConfig.step`) — the rest of the system only sees the
    :class:`SpeechTokenizer` / :class:`Token2Wav` interfaces.
    """

    kind: str = "kmeans_mel"
    n_codes: int = 256
    n_mels: int = 80
    #: Mel frames (10 ms) per token: 4 -> 40 ms at SPEECH_TOKEN_RATE = 25 Hz.
    stack: int = 4
    sample_rate: int = SAMPLE_RATE
    griffin_lim_iters: int = 32
    #: Fast Griffin-Lim momentum (0 = classic Griffin-Lim).
    griffin_lim_momentum: float = 0.99
    #: Tokens per decode() chunk: 5 tokens = 200 ms = one motion segment.
    chunk_tokens: int = 5
    #: Left context kept in the streaming state, in tokens (>= 1): the last
    #: ``context_tokens * 640`` emitted samples.  The Griffin-Lim decoder holds
    #: emitted audio fixed, so it reads only the last 360 of them (the part
    #: the re-estimated STFT frames overlap); learned decoders may use more.
    context_tokens: int = 1
    #: Lloyd iterations after k-means++ initialisation.
    kmeans_iters: int = 30
    #: At most this many token vectors are used for fitting (subsampled).
    max_fit_vectors: int = 50_000
    #: Mel power floor before log10 (silence level of the tokens).
    log_floor: float = 1e-6
    #: Hidden width of the decoder's mel refiner (0: no refiner, each token decodes
    #: to its centroid).  The refiner reads the centroids of ``refiner_context``
    #: earlier tokens, the token and ``lookahead_tokens`` later ones and predicts the
    #: token's log-mel (:class:`~a2llm_ros.model.speech_codec.MelRefiner`).
    refiner_hidden: int = 0
    #: Earlier tokens the mel refiner reads.
    refiner_context: int = 0
    # -- kind "step_token2wav" (Step-Audio-2-mini's token2wav/ folder) -----------------
    #: The token2wav/ folder; empty: ``<llm.backbone>/token2wav``.
    token2wav_dir: str = ""
    #: Voice prompt WAV; empty: the shipped default voice.
    prompt_wav: str = ""
    #: Tokens after a token the decoder reads before that token's audio is out:
    #: the flow encoder's (flow.yaml ``pre_lookahead_len``) for ``step_token2wav``,
    #: the mel refiner's for ``kmeans_mel``.
    lookahead_tokens: int = 0
    #: Euler steps of the flow-matching decoder.
    flow_steps: int = 10
    #: Estimator attention cache kept after the prompt (50 Hz mel frames).
    estimator_cache_frames: int = 100
    #: Mel frames the vocoder carries between chunks (and audio cross-faded).
    vocoder_cache_frames: int = 8
    #: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:n]``.
    device: str = "auto"

    PRESETS = {
        # the tiny codec's decoder refines each centroid from 3 earlier tokens and 1
        # later one (docs/codec.md)
        "tiny": {"refiner_hidden": 512, "refiner_context": 3, "lookahead_tokens": 1},
        # Step-Audio-2's speech vocabulary: <audio_0> ... <audio_6560> (+ <audio_6561>
        # as padding); its untrained placeholder is fitted with ``placeholder=True``
        "edge": {"n_codes": 6561},
        "paper": {"n_mels": 128, "n_codes": 6561},
    }

    def __post_init__(self):
        if self.kind == STEP_KIND:
            self._check_step()
            return
        if self.sample_rate != SAMPLE_RATE or \
                self.stack * MEL_HOP != SAMPLES_PER_SPEECH_TOKEN:
            raise ValueError(f"SpeechCodecConfig: need sample_rate={SAMPLE_RATE} and stack * "
                             f"{MEL_HOP} = {SAMPLES_PER_SPEECH_TOKEN} samples per token; "
                             f"got stack={self.stack}, sample_rate={self.sample_rate}")
        if self.context_tokens < 1 or self.chunk_tokens < 1 or self.n_codes < 2:
            raise ValueError("SpeechCodecConfig: context_tokens, chunk_tokens >= 1 and "
                             "n_codes >= 2 required")
        if min(self.refiner_hidden, self.refiner_context, self.lookahead_tokens) < 0 or (
                self.refiner_hidden == 0 and self.refiner_context + self.lookahead_tokens):
            raise ValueError("SpeechCodecConfig: kmeans_mel needs refiner_hidden, "
                             "refiner_context, lookahead_tokens >= 0, and context or "
                             "lookahead only with a refiner (refiner_hidden > 0); got "
                             f"{self.refiner_hidden}, {self.refiner_context}, "
                             f"{self.lookahead_tokens}")

    def _check_step(self) -> None:
        if self.sample_rate != STEP_RATE or self.n_codes != STEP_CODES:
            raise ValueError(f"SpeechCodecConfig: kind {STEP_KIND} needs sample_rate="
                             f"{STEP_RATE} and n_codes={STEP_CODES}")
        if self.chunk_tokens * 2 < self.vocoder_cache_frames or self.lookahead_tokens < 0 \
                or self.flow_steps < 1 or self.estimator_cache_frames < 1:
            raise ValueError("SpeechCodecConfig: step_token2wav needs chunk_tokens * 2 >= "
                             "vocoder_cache_frames, lookahead_tokens >= 0, flow_steps >= 1, "
                             "estimator_cache_frames >= 1")

    @classmethod
    def step(cls, token2wav_dir: str = "", **overrides) -> "SpeechCodecConfig":
        """Settings of Step-Audio-2-mini's codec (official chunk and cache sizes)."""
        base = dict(kind=STEP_KIND, n_codes=STEP_CODES, sample_rate=STEP_RATE, chunk_tokens=25,
                    lookahead_tokens=3, token2wav_dir=token2wav_dir)
        base.update(overrides)
        return cls(**base)

    def mel_config(self) -> MelConfig:
        """The (invertible) log-mel settings the codec uses."""
        return MelConfig(sample_rate=self.sample_rate, n_mels=self.n_mels,
                         log_floor=self.log_floor, dynamic_range=0.0)
