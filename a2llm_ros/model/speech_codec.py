"""Pluggable speech codec: waveform -> 25 Hz speech tokens -> streaming waveform.

Interfaces
----------
* :class:`SpeechTokenizer` — ``encode(wave [N] float32 @ SAMPLE_RATE) -> int64
  [N // SAMPLES_PER_SPEECH_TOKEN]``.  A trailing partial token (fewer than
  640 samples) is dropped; there is no padding.
* :class:`Token2Wav` — streaming decoder at its own ``sample_rate``.
  ``init_state()`` gives the state before the first token; ``step(tokens [n],
  state) -> (audio [m], new_state)`` returns the audio that is ready and
  ``flush(state)`` at the end of a turn what is held back; over a turn the
  output is exactly ``samples_per_token = sample_rate / 25`` samples per token.
  ``lookahead_tokens`` / ``first_chunk_tokens`` declare the latency.  States
  are immutable: ``step`` never modifies the state it is given.  The k-means
  decoder below emits a token's 640 samples once ``lookahead_tokens`` later
  tokens have arrived (at once without a refiner; ``flush`` decodes the last
  ones), and its output does not depend on how the stream is chunked, bit for bit; Step's
  codec (:mod:`a2llm_ros.model.step_token2wav`, 24 kHz, 3 tokens of lookahead,
  25-token chunks) also decodes independently of the arrival pattern.
* :func:`a2llm_ros.model.codecs.make_codec` ``(cfg) -> (tokenizer, token2wav)``
  looks ``cfg.kind`` up in the registry here; :func:`register_codec` adds kinds
  (``step_token2wav``:
  CosyVoice2 S3 tokens, flow matching and HiFT from Step-Audio-2-mini's
  ``token2wav/`` folder, docs/codec.md).
* Codec parameters are plain tensors: ``state_dict() -> dict[str, Tensor]`` /
  ``load_state_dict(d)`` (stored in the model checkpoint's safetensors).

Default kind ``"kmeans_mel"``
-----------------------------
Tokens are k-means codes (k-means++ init + Lloyd, deterministic per seed)
over stacks of ``stack = 4`` log-mel frames (10 ms hop; 4 frames = one 40 ms
token).  A real fit needs at least one token vector per code; the untrained
placeholder codec of a randomly initialised model (``fit(...,
placeholder=True)``, e.g. Step's 6561 codes from 16 s of synthetic audio)
takes every vector once and the rest drawn with replacement, jittered
(:func:`placeholder_centroids`).  The log-mel is the Whisper recipe of
:mod:`a2llm_ros.audio.features` without the per-utterance dynamic-range
clamp, so it is invertible.

The decoder looks the centroid up (4 mel frames) or, with ``refiner_hidden``
> 0, predicts the token's log-mel from the centroids of ``refiner_context``
earlier tokens, the token and ``lookahead_tokens`` later ones
(:class:`MelRefiner`; the tiny preset: 3 + 1 + 1, fitted on speech in the
answer voice, docs/codec.md), maps mel power to linear
power with a non-negative least-squares inverse of the mel filterbank
(:func:`mel_to_linear_power`) and runs a streaming fast Griffin-Lim
(momentum 0.99) per token, in the spirit of RTISI: the audio already
emitted is *committed* and held fixed in every iteration, the new token's 4
frames plus the two earlier frames that overlap the new samples are
re-estimated, and their phases start from the committed audio's phase
advanced by ``2 pi f hop`` per frame (stationary sinusoid continuation).
Because the committed samples are constrained, chunk joins are nearly
continuous; a 4 ms raised-cosine crossfade from the previous step's
continuation (:data:`CROSSFADE`) removes what is left.  Griffin-Lim itself
uses no lookahead, but the output lags the encoder's time axis by :data:`OUTPUT_DELAY` = 160
samples (10 ms): token ``k`` emits the audio of samples
``[640 k - 160, 640 k + 480)`` so that every emitted sample is covered by at
least two STFT frames (the first 160 samples of a stream are the lead-in
before token 0's first frame, and the last 160 samples of an utterance are
not emitted).  Decoding runs one token at a time with fixed tensor shapes,
which makes the output independent of chunking, bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch

from a2llm_ros.audio.features import (hann_window, log_mel_spectrogram, mel_filterbank,
                                      mel_power_from_log_mel)
from a2llm_ros.constants import (MEL_HOP, SAMPLE_RATE, SAMPLES_PER_SPEECH_TOKEN,
                                 SPEECH_TOKEN_RATE)
from a2llm_ros.model.configs import (SpeechCodecConfig, refiner_empty_code,
                                     refiner_pad_code)

#: Magnitudes below this are treated as "no phase information".
_EPS = 1e-8
#: Decoder output lag in samples (one mel hop, 10 ms): token k's 640 samples
#: are the audio of [640 k - 160, 640 k + 480), which is covered by at least
#: two STFT frames; without the lag the last samples would rest on the faint
#: tail of one window and click at every join.
OUTPUT_DELAY = MEL_HOP
#: Earlier mel frames re-estimated with each token (they overlap its samples).
N_PAST_FRAMES = 2
#: Multiplicative-update iterations of the non-negative mel inversion.
NNLS_ITERS = 20
#: Crossfade (samples) from the previous step's continuation into a new token.
CROSSFADE = 64
#: Key prefix of the mel refiner's parameters in the codec state.
REFINER_PREFIX = "refiner."


# ----------------------------------------------------------------------------- interfaces

def _as_wave(wave) -> torch.Tensor:
    """float32 ``[N]`` tensor from a numpy array / tensor, checked finite."""
    wave = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave)
    wave = wave.detach().float().cpu()
    if wave.ndim != 1:
        raise ValueError(f"expected a mono wave [N], got shape {tuple(wave.shape)}")
    if not torch.isfinite(wave).all():
        raise ValueError("wave contains NaN or Inf samples")
    return wave


def _as_tokens(tokens, n_codes: int) -> torch.Tensor:
    """int64 ``[n]`` tensor of codes in ``[0, n_codes)``."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 1 or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"expected integer tokens [n], got {tokens.dtype} "
                         f"{tuple(tokens.shape)}")
    tokens = tokens.long()
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= n_codes):
        raise ValueError(f"speech tokens must lie in [0, {n_codes}), got range "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    return tokens


class SpeechTokenizer:
    """Waveform -> speech tokens at SPEECH_TOKEN_RATE (one per 640 samples)."""

    samples_per_token = SAMPLES_PER_SPEECH_TOKEN

    def __init__(self, cfg: SpeechCodecConfig):
        self.cfg = cfg

    @property
    def vocab_size(self) -> int:
        """Number of distinct speech tokens."""
        return self.cfg.n_codes

    @property
    def is_fitted(self) -> bool:
        """Whether ``encode`` can be used (pretrained codecs: always)."""
        return True

    def n_tokens(self, n_samples: int) -> int:
        """Token count for a wave of ``n_samples`` (trailing partial token dropped)."""
        return int(n_samples) // SAMPLES_PER_SPEECH_TOKEN

    def encode(self, wave) -> torch.Tensor:
        """float32 ``[N]`` at SAMPLE_RATE -> int64 ``[N // SAMPLES_PER_SPEECH_TOKEN]``."""
        raise NotImplementedError

    def fit(self, waves: Iterable, seed: int = 0,
            placeholder: bool = False) -> "SpeechTokenizer":
        """Fit codec parameters on mono float32 waves; no-op for pretrained codecs.

        ``placeholder``: the fit only makes an untrained model usable (synthetic
        audio, see :func:`a2llm_ros.checkpoint.synthetic_codec_audio`); a codec
        may then accept less data than a real fit needs.
        """
        return self

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Codec parameters as tensors (safetensors-compatible, not shared)."""
        return {}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Load parameters produced by :meth:`state_dict`."""


class Token2Wav:
    """Streaming speech tokens -> waveform at :attr:`sample_rate`.

    Over a turn (``step`` calls, then ``flush``) the output is exactly
    :attr:`samples_per_token` samples per token; a decoder with lookahead
    returns audio in uneven pieces (nothing until :attr:`first_chunk_tokens`
    tokens are known) and the rest on ``flush``.
    """

    def __init__(self, cfg: SpeechCodecConfig):
        self.cfg = cfg

    @property
    def sample_rate(self) -> int:
        """Output sample rate (Hz)."""
        return SAMPLE_RATE

    @property
    def samples_per_token(self) -> int:
        """Output samples per 40 ms token."""
        return self.sample_rate // SPEECH_TOKEN_RATE

    @property
    def lookahead_tokens(self) -> int:
        """Tokens after a token the decoder must see before that token's audio is out."""
        return 0

    @property
    def first_chunk_tokens(self) -> int:
        """Tokens needed before the first audio comes out of ``step``."""
        return 1

    def flush(self, state) -> Tuple[torch.Tensor, object]:
        """End of turn: the audio still held back (float32 ``[m]``) and the final state."""
        return torch.zeros(0), state

    @property
    def is_fitted(self) -> bool:
        """Whether ``step``/``decode`` can be used (pretrained codecs: always)."""
        return True

    def init_state(self):
        """Decoder state before the first token (immutable)."""
        raise NotImplementedError

    def step(self, tokens, state) -> Tuple[torch.Tensor, object]:
        """int64 ``[n]`` tokens -> (float32 audio ready so far, new state)."""
        raise NotImplementedError

    def decode(self, tokens, chunk_tokens: Optional[int] = None) -> torch.Tensor:
        """Whole-utterance decode = ``step`` over chunks, then ``flush``;
        float32 ``[n * samples_per_token]``."""
        tokens = _as_tokens(tokens, self.cfg.n_codes)
        chunk = chunk_tokens or self.cfg.chunk_tokens
        state, parts = self.init_state(), [torch.zeros(0)]
        for start in range(0, tokens.numel(), chunk):
            audio, state = self.step(tokens[start:start + chunk], state)
            parts.append(audio)
        parts.append(self.flush(state)[0])
        return torch.cat(parts)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Decoder parameters as tensors (safetensors-compatible, not shared)."""
        return {}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Load parameters produced by :meth:`state_dict`."""


CodecFactory = Callable[..., Tuple[SpeechTokenizer, Token2Wav]]
REGISTRY: Dict[str, CodecFactory] = {}


def register_codec(kind: str) -> Callable[[CodecFactory], CodecFactory]:
    """Decorator registering ``factory(cfg) -> (tokenizer, token2wav)`` under ``kind``."""
    def wrap(factory: CodecFactory) -> CodecFactory:
        REGISTRY[kind] = factory
        return factory
    return wrap


def codec_state_dict(tokenizer: SpeechTokenizer,
                     token2wav: Token2Wav) -> Dict[str, torch.Tensor]:
    """Merged parameters of both halves (keys they share must hold equal tensors)."""
    merged = dict(tokenizer.state_dict())
    for key, value in token2wav.state_dict().items():
        if key in merged and not torch.equal(merged[key], value):
            raise ValueError(f"codec halves disagree on parameter {key!r}")
        merged[key] = value
    return merged


def load_codec_state_dict(tokenizer: SpeechTokenizer, token2wav: Token2Wav,
                          state: Dict[str, torch.Tensor]) -> None:
    """Load :func:`codec_state_dict` output into both halves."""
    tokenizer.load_state_dict(state)
    token2wav.load_state_dict(state)


# ----------------------------------------------------------------------------- k-means

def _sq_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[P, D] x [K, D] -> [P, K]``."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ centroids.T + (centroids ** 2).sum(1)[None]
    return d.clamp_min(0.0)


def kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: ``[P, D]`` -> ``[k, D]`` (deterministic for ``gen``)."""
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    chosen = [first]
    best = _sq_distances(x, x[first:first + 1])[:, 0]  # [P]
    for _ in range(1, k):
        total = float(best.sum())
        if total > 0:
            idx = int(torch.multinomial(best / total, 1, generator=gen))
        else:  # fewer distinct points than codes: duplicate deterministically
            idx = int(torch.randint(x.shape[0], (1,), generator=gen))
        chosen.append(idx)
        best = torch.minimum(best, _sq_distances(x, x[idx:idx + 1])[:, 0])
    return x[chosen].clone()  # [k, D]


def lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd iterations ``[P, D]``, ``[K, D]`` -> ``[K, D]``; empty clusters keep their centre."""
    k = centroids.shape[0]
    for _ in range(iters):
        assign = _sq_distances(x, centroids).argmin(1)  # [P]
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # [K, D]
        counts = torch.bincount(assign, minlength=k).to(x.dtype)  # [K]
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids


def fit_kmeans(x: torch.Tensor, k: int, iters: int, seed: int,
               max_points: int = 0, placeholder: bool = False) -> torch.Tensor:
    """Deterministic k-means (k-means++ + Lloyd, float64): ``[P, D]`` -> float32 ``[k, D]``.

    Fewer than ``k`` vectors raise, unless ``placeholder`` is set: then the
    codebook is :func:`placeholder_centroids` (for the untrained codec of a
    randomly initialised model, never for a real fit).
    """
    if x.shape[0] < k:
        if placeholder and x.shape[0] > 0:
            return placeholder_centroids(x, k, seed)
        raise ValueError(f"need at least {k} token vectors to fit {k} codes, got "
                         f"{x.shape[0]} ({x.shape[0] * SAMPLES_PER_SPEECH_TOKEN / SAMPLE_RATE:.1f}"
                         f" s of audio)")
    gen = torch.Generator().manual_seed(int(seed))
    x = x.double()
    if max_points and x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=gen)[:max_points]]
    return lloyd(x, kmeans_plus_plus(x, k, gen), iters).float()


#: Jitter of placeholder centroids, as a fraction of each dimension's spread.
PLACEHOLDER_JITTER = 0.05


def placeholder_centroids(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """A codebook of ``k`` codes from ``P < k`` vectors (untrained placeholder codec).

    Every vector is a code once (in a seeded random order), the remaining
    ``k - P`` codes are vectors drawn with replacement, and every code gets a
    small deterministic Gaussian jitter (:data:`PLACEHOLDER_JITTER` x the
    per-dimension standard deviation) so that no two codes are equal.  No
    Lloyd iterations: with more codes than vectors they would only leave
    codes empty.  ``[P, D]`` -> float32 ``[k, D]``, deterministic for ``seed``.
    """
    P = x.shape[0]
    if not 0 < P < k:
        raise ValueError(f"placeholder_centroids: need 0 < vectors < codes, got {P} vectors "
                         f"for {k} codes")
    gen = torch.Generator().manual_seed(int(seed))
    x = x.double()
    idx = torch.cat([torch.randperm(P, generator=gen),
                     torch.randint(P, (k - P,), generator=gen)])  # [k]
    spread = x.std(0, unbiased=False) if P > 1 else x.abs().mean(0)  # [D]
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    noise = torch.randn(k, x.shape[1], generator=gen, dtype=torch.float64)
    return (x[idx] + PLACEHOLDER_JITTER * spread[None] * noise).float()


# ----------------------------------------------------------------------------- kmeans_mel

def mel_to_linear_power(power_mel: torch.Tensor, filters: torch.Tensor,
                        iters: int = NNLS_ITERS) -> torch.Tensor:
    """Non-negative inverse of the mel filterbank: ``[.., M]``, ``[M, F]`` -> ``[.., F]``.

    Starts from interpolation (each band's mean power spread over its bins,
    weighted by the triangles) and refines with Lee-Seung multiplicative
    updates for ``min ||p @ filters.T - power_mel||^2, p >= 0``.  This keeps
    the spectrum smooth and non-negative, unlike a clamped pseudo-inverse
    (measured on espeak-ng speech: end-to-end log-mel L1 0.09 vs 0.15).
    """
    band_mean = power_mel / filters.sum(1).clamp_min(1e-12)  # [.., M]
    spread = filters / filters.sum(0, keepdim=True).clamp_min(1e-12)  # [M, F]
    power = band_mean @ spread  # [.., F]
    target = power_mel @ filters  # [.., F]
    for _ in range(iters):
        power = power * target / ((power @ filters.T) @ filters).clamp_min(1e-30)
    return power


def log_mel_to_magnitudes(vectors: torch.Tensor, filters: torch.Tensor, mel_cfg,
                          stack: int) -> torch.Tensor:
    """Token vectors of normalised log-mel ``[n, stack * M]`` -> STFT magnitudes
    ``[n, stack, F]`` (mel power, :func:`mel_to_linear_power`, square root)."""
    log_mel = vectors.reshape(vectors.shape[0], stack, -1)  # [n, S, M]
    power_mel = mel_power_from_log_mel(log_mel, mel_cfg)  # [n, S, M]
    return mel_to_linear_power(power_mel, filters).sqrt()  # [n, S, F]


class MelRefiner(torch.nn.Module):
    """Context refinement of the centroid decode (the ``kmeans_mel`` decoder's learned part).

    A token's log-mel is predicted from the centroids of a window of codes:
    ``context`` earlier tokens, the token, ``lookahead`` later ones.  Codes
    ``n_codes`` (:attr:`pad`) and ``n_codes + 1`` (:attr:`empty`) stand for
    "before the start / after the end" and share the learned :attr:`pad_vector`.
    The output is the token's centroid plus an MLP correction; the last layer
    starts at zero, so an untrained refiner decodes exactly to the centroid.
    Fitted by :mod:`a2llm_ros.tools.training.codec_refiner`.
    """

    def __init__(self, n_codes: int, dim: int, context: int, lookahead: int, hidden: int):
        super().__init__()
        self.n_codes, self.context, self.lookahead = n_codes, context, lookahead
        self.width = context + 1 + lookahead
        self.pad_vector = torch.nn.Parameter(torch.zeros(dim))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(self.width * dim, hidden), torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    @property
    def pad(self) -> int:
        """Code of a position before the start or after the end of the answer."""
        return refiner_pad_code(self.n_codes)

    @property
    def empty(self) -> int:
        """Code of a window slot not yet filled (nothing to decode there)."""
        return refiner_empty_code(self.n_codes)

    def windows(self, codes: torch.Tensor) -> torch.Tensor:
        """A whole answer's codes ``[n]`` -> their windows ``[n, width]``, as the streaming
        decoder sees them (pad codes before the start and after the end)."""
        before = torch.full((self.context,), self.pad, dtype=torch.long)
        after = torch.full((self.lookahead,), self.pad, dtype=torch.long)
        return torch.cat([before, codes.long(), after]).unfold(0, self.width, 1)  # [n, W]

    def forward(self, centroids: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Centroids ``[K, D]``, code windows int64 ``[n, width]`` -> log-mel ``[n, D]``."""
        table = torch.cat([centroids, self.pad_vector[None], self.pad_vector[None]])  # [K+2, D]
        v = table[windows]  # [n, width, D]
        return v[:, self.context] + self.net(v.reshape(v.shape[0], -1))  # [n, D]


class MelCodebook:
    """Parameters shared by the k-means tokenizer and the Griffin-Lim decoder."""

    def __init__(self, cfg: SpeechCodecConfig):
        self.cfg = cfg
        self.mel_cfg = cfg.mel_config()
        self.filters = mel_filterbank(self.mel_cfg)  # [M, F]
        self.centroids: Optional[torch.Tensor] = None  # [K, stack * M] normalised log-mel
        self._magnitudes: Optional[torch.Tensor] = None  # [K, stack, F]

    @property
    def is_fitted(self) -> bool:
        return self.centroids is not None

    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Install ``[n_codes, stack * n_mels]`` centroids (normalised log-mel)."""
        want = (self.cfg.n_codes, self.cfg.stack * self.cfg.n_mels)
        if tuple(centroids.shape) != want:
            raise ValueError(f"speech codec centroids: expected shape {want}, "
                             f"got {tuple(centroids.shape)}")
        self.centroids = centroids.detach().float().contiguous().clone()
        self._magnitudes = None

    def require_fitted(self) -> torch.Tensor:
        if self.centroids is None:
            raise RuntimeError("speech codec is not fitted: call tokenizer.fit(waves) or "
                               "load_state_dict() first")
        return self.centroids

    def token_vectors(self, wave: torch.Tensor) -> torch.Tensor:
        """``[N]`` wave -> ``[N // 640, stack * n_mels]`` stacked log-mel frames."""
        n_tok = wave.shape[0] // SAMPLES_PER_SPEECH_TOKEN
        if n_tok == 0:
            return torch.zeros(0, self.cfg.stack * self.cfg.n_mels)
        mel = log_mel_spectrogram(wave, self.mel_cfg, self.filters)  # [M, T], T >= stack * n
        frames = mel[:, :n_tok * self.cfg.stack].T  # [n * stack, M]
        return frames.reshape(n_tok, self.cfg.stack * self.cfg.n_mels)

    def magnitudes(self) -> torch.Tensor:
        """Linear STFT magnitudes of every code's frames, ``[K, stack, F]`` (cached)."""
        if self._magnitudes is None:
            cents = self.require_fitted().double()  # [K, S * M]
            self._magnitudes = log_mel_to_magnitudes(cents, self.filters.double(), self.mel_cfg,
                                                     self.cfg.stack).float()  # [K, S, F]
        return self._magnitudes

    def state_dict(self) -> Dict[str, torch.Tensor]:
        out = {"mel_filters": self.filters.clone()}
        if self.centroids is not None:
            out["centroids"] = self.centroids.clone()
        return out

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if "centroids" not in state:
            raise KeyError("speech codec state has no 'centroids'")
        filters = state.get("mel_filters")
        if filters is not None and (filters.shape != self.filters.shape
                                    or not torch.allclose(filters.float(), self.filters,
                                                          atol=1e-6)):
            raise ValueError("speech codec state: stored mel filterbank does not match "
                             f"this config (n_mels={self.cfg.n_mels})")
        self.set_centroids(state["centroids"])


class KMeansMelTokenizer(SpeechTokenizer):
    """Nearest-centroid codes of 4-frame log-mel stacks."""

    def __init__(self, cfg: SpeechCodecConfig, codebook: MelCodebook):
        super().__init__(cfg)
        self.codebook = codebook

    @property
    def is_fitted(self) -> bool:
        return self.codebook.is_fitted

    def encode(self, wave) -> torch.Tensor:
        """float32 ``[N]`` -> int64 ``[N // 640]`` (trailing partial token dropped).

        Token ``j`` reads samples up to ``640 j + 680`` (its last STFT frame
        reaches 40 samples past the token), so re-encoding a growing buffer
        can change only the last token.
        """
        cents = self.codebook.require_fitted()  # [K, D]
        vectors = self.codebook.token_vectors(_as_wave(wave))  # [n, D]
        if vectors.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long)
        return _sq_distances(vectors, cents).argmin(1).long()  # [n]

    def fit(self, waves: Iterable, seed: int = 0,
            placeholder: bool = False) -> "KMeansMelTokenizer":
        """k-means over the token vectors of ``waves`` (deterministic for ``seed``).

        Fewer token vectors than codes raise ``ValueError``; with
        ``placeholder=True`` (the synthetic codec of an untrained model) they
        give :func:`placeholder_centroids` instead.
        """
        vectors = [self.codebook.token_vectors(_as_wave(w)) for w in waves]
        data = torch.cat(vectors) if vectors else torch.zeros(0, 1)  # [P, D]
        cents = fit_kmeans(data, self.cfg.n_codes, self.cfg.kmeans_iters, seed,
                           self.cfg.max_fit_vectors, placeholder=placeholder)
        self.codebook.set_centroids(cents)
        return self

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.codebook.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.codebook.load_state_dict(state)


@dataclasses.dataclass(frozen=True)
class GriffinLimState:
    """Streaming state of :class:`GriffinLimToken2Wav` (never mutated)."""

    #: Last ``context_tokens * 640`` emitted samples (zeros before the start).
    history: torch.Tensor  # [context_tokens * 640] float32
    #: Target magnitudes of the last two mel frames decoded.
    last_magnitudes: torch.Tensor  # [2, F] float32
    #: The previous step's continuation past its last emitted sample.
    tail: torch.Tensor  # [CROSSFADE] float32
    #: Tokens decoded so far.
    n_tokens: int = 0
    #: The mel refiner's window past its last decoded token: ``refiner_context``
    #: decoded codes, then the ``lookahead_tokens`` codes received but not decoded
    #: (:attr:`MelRefiner.empty` where nothing was received yet); ``()`` without a
    #: refiner.
    window: Tuple[int, ...] = ()


class GriffinLimToken2Wav(Token2Wav):
    """Centroid lookup (refined from context with ``refiner_hidden`` > 0) -> non-negative
    mel inversion -> streaming fast Griffin-Lim.

    With a refiner, token ``k`` is decoded once token ``k + lookahead_tokens`` has
    arrived (``flush`` decodes the last ones against :attr:`MelRefiner.pad`); the
    window of codes lives in the state, so the output still does not depend on
    how the stream is chunked.
    """

    def __init__(self, cfg: SpeechCodecConfig, codebook: MelCodebook):
        super().__init__(cfg)
        self.codebook = codebook
        self.refiner: Optional[MelRefiner] = None
        if cfg.refiner_hidden > 0:
            self.refiner = MelRefiner(cfg.n_codes, cfg.stack * cfg.n_mels, cfg.refiner_context,
                                      cfg.lookahead_tokens, cfg.refiner_hidden).eval()
        mel = codebook.mel_cfg
        self.n_fft, self.hop = mel.n_fft, mel.hop
        #: Frames re-estimated per token: two earlier frames + the token's own.
        self.n_frames = cfg.stack + N_PAST_FRAMES
        #: Committed samples at the left of the local window.
        self.committed = N_PAST_FRAMES * self.hop + self.n_fft // 2 - OUTPUT_DELAY
        if self.committed > cfg.context_tokens * SAMPLES_PER_SPEECH_TOKEN:
            raise ValueError("context_tokens too small for the STFT window")
        self.window = hann_window(self.n_fft)  # [W]
        self.length = (self.n_frames - 1) * self.hop + self.n_fft  # L
        starts = torch.arange(self.n_frames) * self.hop  # [stack + 2]
        self.ola_index = (starts[:, None] + torch.arange(self.n_fft)[None]).reshape(-1)
        envelope = torch.zeros(self.length).index_add_(
            0, self.ola_index, (self.window ** 2).repeat(self.n_frames))  # [L]
        self.inv_envelope = 1.0 / envelope.clamp_min(1e-3)  # [L]
        freqs = torch.arange(mel.n_freqs, dtype=torch.float32)  # [F]
        self.phase_advance = 2.0 * math.pi * freqs * self.hop / self.n_fft  # [F]
        ramp = (torch.arange(CROSSFADE, dtype=torch.float32) + 0.5) / CROSSFADE
        self.fade_in = 0.5 - 0.5 * torch.cos(math.pi * ramp)  # [CROSSFADE], 0 -> 1
        gen = torch.Generator().manual_seed(0)
        self.fallback_phase = 2.0 * math.pi * torch.rand(mel.n_freqs, generator=gen)  # [F]

    @property
    def is_fitted(self) -> bool:
        return self.codebook.is_fitted

    @property
    def lookahead_tokens(self) -> int:
        return self.cfg.lookahead_tokens if self.refiner is not None else 0

    @property
    def first_chunk_tokens(self) -> int:
        return self.lookahead_tokens + 1

    def init_state(self) -> GriffinLimState:
        n_hist = self.cfg.context_tokens * SAMPLES_PER_SPEECH_TOKEN
        n_freqs = self.codebook.mel_cfg.n_freqs
        window = () if self.refiner is None else \
            (self.refiner.empty,) * (self.refiner.width - 1)
        return GriffinLimState(torch.zeros(n_hist), torch.zeros(N_PAST_FRAMES, n_freqs),
                               torch.zeros(CROSSFADE), window=window)

    def step(self, tokens, state: GriffinLimState) -> Tuple[torch.Tensor, GriffinLimState]:
        """int64 ``[n]`` -> (float32 audio ready ``[m]``, new state); one token at a time.

        Without a refiner ``m = n * 640``; with one, each token's audio comes out
        ``lookahead_tokens`` tokens later.
        """
        tokens = _as_tokens(tokens, self.cfg.n_codes)
        outs = [torch.zeros(0)]
        for tok in tokens.tolist():
            audio, state = self._push(tok, state)
            outs.append(audio)
        return torch.cat(outs), state

    def flush(self, state: GriffinLimState) -> Tuple[torch.Tensor, GriffinLimState]:
        """The audio of the last ``lookahead_tokens`` tokens (decoded against the pad code)."""
        outs = [torch.zeros(0)]
        for _ in range(self.lookahead_tokens):
            audio, state = self._push(self.refiner.pad, state)
            outs.append(audio)
        return torch.cat(outs), state

    def _push(self, code: int, state: GriffinLimState) -> Tuple[torch.Tensor, GriffinLimState]:
        """One code in; the audio of the token it completes (``[640]`` or ``[0]``)."""
        if self.refiner is None:
            return self._step_token(self.codebook.magnitudes()[code], state)
        window = state.window + (code,)
        state = dataclasses.replace(state, window=window[1:])
        if window[self.refiner.context] >= self.cfg.n_codes:  # nothing to decode yet
            return torch.zeros(0), state
        with torch.no_grad():
            mags = self.refined_magnitudes(torch.tensor([window]))[0]  # [stack, F]
        return self._step_token(mags, state)

    def refined_magnitudes(self, windows: torch.Tensor) -> torch.Tensor:
        """Code windows int64 ``[n, width]`` -> magnitudes ``[n, stack, F]`` (inverted in
        float64 like :meth:`MelCodebook.magnitudes`, returned in the decoder's dtype)."""
        book = self.codebook
        vectors = self.refiner(book.require_fitted(), windows)  # [n, S * M]
        return log_mel_to_magnitudes(vectors.double(), book.filters.double(), book.mel_cfg,
                                     self.cfg.stack).to(self.window.dtype)

    # -- local STFT over the fixed-size window -------------------------------------------
    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        """``[L]`` -> complex ``[stack + 2, F]``."""
        return torch.fft.rfft(x.unfold(0, self.n_fft, self.hop) * self.window)

    def _istft(self, spec: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Complex ``[stack + 2, F]`` -> ``[L]``, committed samples replaced by ``fixed``."""
        frames = torch.fft.irfft(spec, n=self.n_fft) * self.window  # [stack + 2, W]
        x = torch.zeros(self.length).index_add_(0, self.ola_index, frames.reshape(-1))
        x = x * self.inv_envelope  # [L]
        return torch.cat([fixed, x[fixed.shape[0]:]])

    def _initial_phase(self, fixed: torch.Tensor) -> torch.Tensor:
        """Unit phasors ``[stack + 2, F]``: committed-audio phase, advanced per hop."""
        x0 = torch.cat([fixed, torch.zeros(self.length - fixed.shape[0])])  # [L]
        first = self._stft(x0)[0]  # [F]
        phase = torch.where(first.abs() > _EPS, first.angle(), self.fallback_phase)  # [F]
        steps = torch.arange(self.n_frames, dtype=torch.float32)[:, None]  # [stack + 2, 1]
        return torch.polar(torch.ones(()), phase[None] + steps * self.phase_advance[None])

    def _step_token(self, token_mags: torch.Tensor,
                    state: GriffinLimState) -> Tuple[torch.Tensor, GriffinLimState]:
        """``[stack, F]`` magnitudes -> (``[640]`` new samples, new state)."""
        mags = torch.cat([state.last_magnitudes, token_mags])  # [stack + 2, F]
        fixed = state.history[-self.committed:]  # [C]
        angles = self._initial_phase(fixed)  # [stack + 2, F]
        alpha = self.cfg.griffin_lim_momentum / (1.0 + self.cfg.griffin_lim_momentum)
        rebuilt = torch.zeros_like(angles)
        for _ in range(self.cfg.griffin_lim_iters):
            previous = rebuilt
            rebuilt = self._stft(self._istft(mags * angles, fixed))  # [stack + 2, F]
            angles = rebuilt - alpha * previous
            angles = angles / (angles.abs() + _EPS)
        x = self._istft(mags * angles, fixed)  # [L]
        end = self.committed + SAMPLES_PER_SPEECH_TOKEN
        audio = x[self.committed:end].clone()  # [640]
        audio[:CROSSFADE] = state.tail + self.fade_in * (audio[:CROSSFADE] - state.tail)
        history = torch.cat([state.history, audio])[-state.history.shape[0]:]
        last = token_mags[-N_PAST_FRAMES:].clone()  # [2, F]
        tail = x[end:end + CROSSFADE].clone()  # [CROSSFADE]
        return audio, GriffinLimState(history, last, tail, state.n_tokens + 1, state.window)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        out = self.codebook.state_dict()
        if self.refiner is not None:
            out.update({REFINER_PREFIX + k: v.detach().clone()
                        for k, v in self.refiner.state_dict().items()})
        return out

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.codebook.load_state_dict(state)
        if self.refiner is None:
            return
        mine = {k[len(REFINER_PREFIX):]: v for k, v in state.items()
                if k.startswith(REFINER_PREFIX)}
        want = self.refiner.state_dict()
        missing = sorted(set(want) - set(mine))
        if missing:
            raise KeyError(f"speech codec state has no mel refiner weights ({REFINER_PREFIX}"
                           f"{missing[0]} ...), but the config asks for one "
                           f"(refiner_hidden={self.cfg.refiner_hidden})")
        for key, value in mine.items():
            if key not in want or tuple(value.shape) != tuple(want[key].shape):
                raise ValueError(f"speech codec state: {REFINER_PREFIX}{key} has shape "
                                 f"{tuple(value.shape)}, the config expects "
                                 f"{tuple(want[key].shape) if key in want else 'no such key'}")
        self.refiner.load_state_dict({k: v.float() for k, v in mine.items()})


@register_codec("kmeans_mel")
def _make_kmeans_mel(cfg: SpeechCodecConfig) -> Tuple[SpeechTokenizer, Token2Wav]:
    """Tokenizer and decoder sharing one :class:`MelCodebook`."""
    book = MelCodebook(cfg)
    return KMeansMelTokenizer(cfg, book), GriffinLimToken2Wav(cfg, book)
