"""Step-Audio-2-mini's speech codec: CosyVoice2 S3 tokens <-> 24 kHz speech.

Codec kind ``"step_token2wav"`` reads the ``token2wav/`` folder shipped with
Step-Audio-2-mini (:data:`TOKEN2WAV_FILES`):

* ``speech_tokenizer_v2_25hz.onnx`` — S3 tokenizer v2, run in ONNX Runtime:
  a 128-bin Whisper log-mel of 16 kHz audio ``[B, 128, T]`` + lengths ``[B]``
  -> 25 Hz ids in ``[0, 6561)``;
* ``campplus.onnx`` — CAM++ speaker embedding from an 80-bin Kaldi fbank of
  16 kHz audio, mean-normalised over time (``kaldi-native-fbank``);
* ``flow.yaml`` + ``flow.pt`` — the flow-matching decoder (upsampling conformer
  encoder, DiT estimator, conditional flow matching with Euler steps),
  2 mel frames (50 Hz, 80 bins) per token;
* ``hift.pt`` — the HiFT vocoder (480 samples a mel frame at 24 kHz; keys
  carry a ``generator.`` prefix).

The network modules come from the ``step-audio2`` wheel (``cosyvoice2.flow``,
``flashcosyvoice.modules.hifigan``: see docs/codec.md for why that package
and not a re-typed copy); ``flow.yaml`` is read by a restricted YAML loader
that builds only those four classes (:data:`FLOW_CLASSES`), never arbitrary
Python as a generic hyperpyyaml load would.

Streaming follows the official scheme.  A voice prompt gives prompt tokens,
a speaker embedding and a prompt mel (:class:`VoicePrompt`, computed once
per file and cached); the flow cache is set up with the prompt tokens plus
``lookahead_tokens`` of them as stand-in lookahead.  Tokens are then decoded
in chunks of ``chunk_tokens`` once ``chunk_tokens + lookahead_tokens`` are
known; the estimator's attention cache keeps the prompt plus the last
``estimator_cache_frames`` frames; the vocoder keeps ``vocoder_cache_frames``
mel frames and its source signal and cross-fades that many frames of audio
(Hamming window).  :meth:`StepToken2Wav.flush` decodes what is left (zero
lookahead) and releases the held-back audio.  Over a turn the output is
exactly 960 samples per token (:data:`SAMPLES_PER_TOKEN`), in uneven pieces:
the first audio appears after ``chunk_tokens + lookahead_tokens`` tokens.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from a2llm_ros.audio.features import log_mel_spectrogram, mel_filterbank, resample
from a2llm_ros.model.configs import MelConfig
from a2llm_ros.constants import SAMPLE_RATE, SAMPLES_PER_SPEECH_TOKEN, SPEECH_TOKEN_RATE
from a2llm_ros.model.speech_codec import (SpeechTokenizer, Token2Wav, _as_tokens, _as_wave,
                                          register_codec)
from a2llm_ros.model.configs import STEP_CODES, STEP_RATE, SpeechCodecConfig

#: Output rate of the HiFT vocoder (Hz).
OUTPUT_RATE = STEP_RATE
#: Flow-matching mel frames: 50 Hz, 480 samples each at 24 kHz, 2 per token.
MEL_FRAME_RATE = 50
SAMPLES_PER_MEL = OUTPUT_RATE // MEL_FRAME_RATE  # 480
MELS_PER_TOKEN = MEL_FRAME_RATE // SPEECH_TOKEN_RATE  # 2
SAMPLES_PER_TOKEN = OUTPUT_RATE // SPEECH_TOKEN_RATE  # 960
#: S3 tokenizer v2 vocabulary (Step's <audio_0> ... <audio_6560>).
S3_VOCAB = STEP_CODES
#: S3 tokenizer input: Whisper log-mel, 128 bins, 100 Hz; 4 frames a token.
S3_MELS = 128
S3_FRAMES_PER_TOKEN = 4
#: Longest audio the S3 tokenizer takes in one call (s); longer audio is split.
S3_MAX_SECONDS = 30
#: CAM++ input: Kaldi fbank bins; output embedding size.
FBANK_BINS = 80
SPEAKER_DIM = 192
#: Prompt mel (Matcha/CosyVoice recipe at 24 kHz).
PROMPT_MEL = MelConfig(sample_rate=OUTPUT_RATE, n_fft=1920, hop=SAMPLES_PER_MEL, n_mels=80,
                       fmin=0.0, fmax=8000.0, mel_scale="slaney")
PROMPT_LOG_FLOOR = 1e-5
#: Prompt WAV limits: long enough for the stand-in lookahead, short enough for the
#: attention cache (s), and not silent (RMS).
PROMPT_MIN_SECONDS = 0.5
PROMPT_MAX_SECONDS = 20.0
PROMPT_MIN_RMS = 1e-4
#: Seed of the flow's fixed noise and the vocoder's source noise.
NOISE_SEED = 0
#: Flow noise frames (the upstream buffer's length: 600 s at 50 Hz).
NOISE_FRAMES = MEL_FRAME_RATE * 600

TOKEN2WAV_FILES = ("speech_tokenizer_v2_25hz.onnx", "campplus.onnx", "flow.yaml", "flow.pt",
                   "hift.pt")
FLOW_CLASSES = {
    "cosyvoice2.flow.flow.CausalMaskedDiffWithXvec": ("cosyvoice2.flow.flow",
                                                      "CausalMaskedDiffWithXvec"),
    "cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2": (
        "cosyvoice2.transformer.upsample_encoder_v2", "UpsampleConformerEncoderV2"),
    "cosyvoice2.flow.flow_matching.CausalConditionalCFM": ("cosyvoice2.flow.flow_matching",
                                                           "CausalConditionalCFM"),
    "cosyvoice2.flow.decoder_dit.DiT": ("cosyvoice2.flow.decoder_dit", "DiT"),
}
HIFT_PREFIX = "generator."


class CodecError(ValueError):
    """A token2wav folder, voice prompt or speech-token input that cannot be used."""


# ----------------------------------------------------------------------------- folder

def missing_files(folder: str) -> List[str]:
    """Names of :data:`TOKEN2WAV_FILES` absent (or empty) in ``folder``."""
    out = []
    for name in TOKEN2WAV_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            out.append(name)
    return out


def is_token2wav_folder(folder: str) -> bool:
    """Whether ``folder`` holds every file of :data:`TOKEN2WAV_FILES`."""
    return os.path.isdir(folder) and not missing_files(folder)


def check_folder(folder: str) -> None:
    """Raise :class:`CodecError` naming the folder and every missing file."""
    if not os.path.isdir(folder):
        raise CodecError(f"token2wav folder not found: {folder}")
    missing = missing_files(folder)
    if missing:
        raise CodecError(f"token2wav folder {folder}: missing or empty {', '.join(missing)}")


def _import_class(qualified: str):
    import importlib
    module, name = FLOW_CLASSES[qualified]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise CodecError(f"the step_token2wav codec needs the 'step-audio2' package "
                         f"(pip install --no-deps step-audio2==1.0.0): {exc}") from exc


def load_flow_yaml(path: str) -> torch.nn.Module:
    """Build the ``flow`` module described by ``flow.yaml`` (random weights).

    Only ``!new:<class>`` tags naming :data:`FLOW_CLASSES` are accepted, with
    plain YAML values as arguments; anything else raises :class:`CodecError`.
    """
    import yaml

    class FlowLoader(yaml.SafeLoader):
        """SafeLoader plus the four flow classes."""

    def construct(loader, suffix, node):
        if suffix not in FLOW_CLASSES:
            raise CodecError(f"{path}: tag !new:{suffix} is not a flow class "
                             f"({', '.join(sorted(FLOW_CLASSES))})")
        kwargs = loader.construct_mapping(node, deep=True)
        return _import_class(suffix)(**kwargs)

    FlowLoader.add_multi_constructor("!new:", construct)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=FlowLoader)  # noqa: S506 (restricted loader)
    except yaml.YAMLError as exc:
        raise CodecError(f"{path}: not valid YAML ({exc})") from exc
    except TypeError as exc:
        raise CodecError(f"{path}: bad arguments for a flow class ({exc})") from exc
    flow = doc.get("flow") if isinstance(doc, dict) else None
    if not isinstance(flow, torch.nn.Module):
        raise CodecError(f"{path}: no 'flow: !new:cosyvoice2.flow.flow."
                         f"CausalMaskedDiffWithXvec' entry")
    return flow


def _torch_load(path: str) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (truncated zip, pickle errors...)
        raise CodecError(f"{path}: cannot read the state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise CodecError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _load_strict(module: torch.nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names keys and shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape", shapes)):
            if keys:
                more = f" ... (+{len(keys) - 5})" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise CodecError(f"{what}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _legacy_weight_norm(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map old ``weight_g``/``weight_v`` names to torch's parametrization names."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            key = key[:-len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[:-len("weight_v")] + "parametrizations.weight.original1"
        out[key] = value
    return out


def _onnx_session(path: str, device: torch.device):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 (ORT raises its own exception types)
        raise CodecError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc


def _check_io(session, path: str, inputs: Sequence[int], outputs: Sequence[int]) -> None:
    """Ranks of the graph's inputs/outputs, so a wrong file fails at load."""
    got_in = [len(i.shape) for i in session.get_inputs()]
    got_out = [len(o.shape) for o in session.get_outputs()]
    if got_in != list(inputs) or got_out[:len(outputs)] != list(outputs):
        raise CodecError(f"{path}: expected inputs of rank {list(inputs)} and outputs of rank "
                         f"{list(outputs)}, got {got_in} and {got_out}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other names as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------- features

def s3_log_mel(wave: torch.Tensor) -> torch.Tensor:
    """16 kHz ``[N]`` -> Whisper log-mel ``[128, N // 160]`` (the S3 tokenizer's input)."""
    return log_mel_spectrogram(wave, _s3_mel_config(), _s3_filters())


@functools.lru_cache(maxsize=1)
def _s3_mel_config() -> MelConfig:
    return MelConfig(n_mels=S3_MELS)


@functools.lru_cache(maxsize=1)
def _s3_filters() -> torch.Tensor:
    return mel_filterbank(_s3_mel_config())


@functools.lru_cache(maxsize=1)
def _prompt_filters() -> torch.Tensor:
    return mel_filterbank(PROMPT_MEL)


def prompt_mel(wave24: torch.Tensor) -> torch.Tensor:
    """24 kHz ``[N]`` -> natural-log mel magnitude ``[N // 480, 80]`` (CosyVoice recipe:
    reflect padding of (n_fft - hop) / 2, no centring, Hann window, floor 1e-5)."""
    pad = (PROMPT_MEL.n_fft - PROMPT_MEL.hop) // 2
    x = torch.nn.functional.pad(wave24[None, None], (pad, pad), mode="reflect")[0]  # [1, N']
    spec = torch.stft(x, PROMPT_MEL.n_fft, PROMPT_MEL.hop, window=torch.hann_window(
        PROMPT_MEL.n_fft), center=False, return_complex=True)  # [1, F, T]
    mag = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    mel = _prompt_filters() @ mag[0]  # [80, T]
    return torch.log(mel.clamp_min(PROMPT_LOG_FLOOR)).T.contiguous()  # [T, 80]


def kaldi_fbank(wave16: np.ndarray) -> np.ndarray:
    """16 kHz float ``[N]`` -> 80-bin Kaldi fbank ``[T, 80]``, mean-normalised over time."""
    import kaldi_native_fbank as knf
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.mel_opts.num_bins = FBANK_BINS
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SAMPLE_RATE, wave16.astype(np.float32).tolist())
    fbank.input_finished()
    frames = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]) \
        if fbank.num_frames_ready else np.zeros((0, FBANK_BINS), np.float32)
    return (frames - frames.mean(axis=0, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- tokenizer

class S3SpeechTokenizer(SpeechTokenizer):
    """16 kHz speech -> 25 Hz S3 v2 ids with ``speech_tokenizer_v2_25hz.onnx``."""

    def __init__(self, cfg: SpeechCodecConfig, folder: str, device: torch.device):
        super().__init__(cfg)
        self.path = os.path.join(folder, TOKEN2WAV_FILES[0])
        self.session = _onnx_session(self.path, device)
        _check_io(self.session, self.path, (3, 1), (2,))
        self._lock = threading.Lock()

    def encode(self, wave) -> torch.Tensor:
        """float32 ``[N]`` at 16 kHz -> int64 ``[N // 640]`` in ``[0, 6561)``."""
        return self.encode_batch([wave])[0]

    def encode_batch(self, waves: Sequence) -> List[torch.Tensor]:
        """Several 16 kHz waves in one ONNX call per 30 s window -> ids per wave."""
        waves = [_as_wave(w) for w in waves]
        out: List[List[torch.Tensor]] = [[] for _ in waves]
        step = S3_MAX_SECONDS * SAMPLE_RATE
        longest = max((w.shape[0] for w in waves), default=0)
        for start in range(0, longest, step):
            pieces = [(i, w[start:start + step]) for i, w in enumerate(waves)
                      if w.shape[0] - start >= SAMPLES_PER_SPEECH_TOKEN]
            if not pieces:
                continue
            for (i, _), ids in zip(pieces, self._run([p for _, p in pieces])):
                out[i].append(ids)
        return [torch.cat(o) if o else torch.zeros(0, dtype=torch.long) for o in out]

    def _run(self, waves: List[torch.Tensor]) -> List[torch.Tensor]:
        """Waves of <= 30 s -> ids ``[n_i // 640]`` each (one padded ONNX batch)."""
        mels = [s3_log_mel(w) for w in waves]  # [128, T_i]
        T = max(m.shape[1] for m in mels)
        batch = np.zeros((len(mels), S3_MELS, T), np.float32)
        for i, m in enumerate(mels):
            batch[i, :, :m.shape[1]] = m.numpy()
        lengths = np.array([m.shape[1] for m in mels], np.int32)
        names = [i.name for i in self.session.get_inputs()]
        with self._lock:
            ids = self.session.run(None, {names[0]: batch, names[1]: lengths})[0]
        out = []
        for w, row in zip(waves, np.asarray(ids)):
            n = w.shape[0] // SAMPLES_PER_SPEECH_TOKEN
            row = torch.from_numpy(row.astype(np.int64))[:n]
            if row.shape[0] < n:  # a graph that rounds down one token less: repeat the last
                row = torch.cat([row, row[-1:].expand(n - row.shape[0])]) if row.numel() \
                    else torch.zeros(n, dtype=torch.long)
            if row.numel() and (int(row.min()) < 0 or int(row.max()) >= S3_VOCAB):
                raise CodecError(f"{self.path}: ids outside [0, {S3_VOCAB})")
            out.append(row)
        return out


# ----------------------------------------------------------------------------- voice prompt

@dataclasses.dataclass(frozen=True)
class VoicePrompt:
    """What a voice prompt WAV conditions the decoder with (computed once per file)."""

    path: str
    tokens: torch.Tensor  # [1, P] int32 S3 ids
    embedding: torch.Tensor  # [1, 192] CAM++ speaker embedding
    mel: torch.Tensor  # [1, 2P, 80] prompt mel
    #: Flow caches after the prompt (setup_cache), never modified.
    flow_cache: Dict[str, torch.Tensor]

    @property
    def n_frames(self) -> int:
        return int(self.mel.shape[1])


def read_prompt_wav(path: str) -> Tuple[np.ndarray, int]:
    """Mono float32 audio and rate of a voice prompt, checked (:class:`CodecError`)."""
    from a2llm_ros.audio.io import read_wav_with_rate
    try:
        wave, rate = read_wav_with_rate(path)
    except (FileNotFoundError, ValueError) as exc:
        raise CodecError(f"voice prompt: {exc}") from exc
    seconds = wave.shape[0] / rate
    if not PROMPT_MIN_SECONDS <= seconds <= PROMPT_MAX_SECONDS:
        raise CodecError(f"voice prompt {path}: {seconds:.2f} s long, need "
                         f"{PROMPT_MIN_SECONDS}-{PROMPT_MAX_SECONDS} s")
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    if rms < PROMPT_MIN_RMS:
        raise CodecError(f"voice prompt {path} is silent (RMS {rms:.1e})")
    return wave, rate


def default_prompt_wav() -> str:
    """The shipped default voice (``a2llm_ros/assets/voice_default.wav``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "assets", "voice_default.wav")


# ----------------------------------------------------------------------------- decoder

@dataclasses.dataclass(frozen=True)
class StepT2WState:
    """Streaming state of :class:`StepToken2Wav` (never mutated; tensors never written)."""

    #: Tokens received and not yet decoded by the flow (the lookahead included).
    pending: Tuple[int, ...]
    flow_cache: Dict[str, torch.Tensor]
    #: Vocoder carry-over: last mel frames [1, 80, m], source [1, 1, s], audio [1, s].
    hift_mel: torch.Tensor
    hift_source: torch.Tensor
    hift_speech: torch.Tensor
    n_tokens: int = 0
    n_samples: int = 0


class StepToken2Wav(Token2Wav):
    """CosyVoice2 flow matching + HiFT, streamed per the official chunk scheme."""

    def __init__(self, cfg: SpeechCodecConfig, folder: str, device: torch.device,
                 tokenizer: S3SpeechTokenizer):
        super().__init__(cfg)
        self.folder, self.device, self.tokenizer = folder, device, tokenizer
        self.flow = self._load_flow()
        self.hift = self._load_hift()
        self.speaker = _onnx_session(os.path.join(folder, "campplus.onnx"), torch.device("cpu"))
        _check_io(self.speaker, os.path.join(folder, "campplus.onnx"), (3,), (2,))
        self.up_rate = int(self.flow.up_rate)
        if self.up_rate != MELS_PER_TOKEN:
            raise CodecError(f"{folder}/flow.yaml: up_stride {self.up_rate}, the codec needs "
                             f"{MELS_PER_TOKEN} mel frames a token")
        if int(self.flow.pre_lookahead_len) != cfg.lookahead_tokens:
            raise CodecError(f"{folder}/flow.yaml: pre_lookahead_len "
                             f"{self.flow.pre_lookahead_len}, codec.lookahead_tokens "
                             f"{cfg.lookahead_tokens}")
        self.hold = cfg.vocoder_cache_frames * SAMPLES_PER_MEL  # held-back samples
        self.window = torch.from_numpy(np.hamming(2 * self.hold)).float().to(device)
        self._prompts: Dict[str, VoicePrompt] = {}
        self._lock = threading.RLock()
        self._buffer_frames = 0

    # -- loading --------------------------------------------------------------------------
    def _load_flow(self) -> torch.nn.Module:
        path = os.path.join(self.folder, "flow.yaml")
        flow = load_flow_yaml(path)
        self._shrink_buffers(flow, 1)
        _load_strict(flow, _torch_load(os.path.join(self.folder, "flow.pt")),
                     f"{self.folder}/flow.pt does not match flow.yaml")
        gen = torch.Generator().manual_seed(NOISE_SEED)
        flow.decoder.rand_noise = torch.randn(1, flow.output_size, NOISE_FRAMES, generator=gen)
        # the encoder's chunk step is wrapped in torch.compile(backend="eager"): call it plainly
        chunk = type(flow.encoder).forward_chunk
        plain = getattr(chunk, "_torchdynamo_orig_callable", chunk)
        flow.encoder.forward_chunk = plain.__get__(flow.encoder)
        return flow.float().to(self.device).eval()

    def _load_hift(self) -> torch.nn.Module:
        from flashcosyvoice.modules.hifigan import HiFTGenerator
        path = os.path.join(self.folder, "hift.pt")
        state = {k[len(HIFT_PREFIX):] if k.startswith(HIFT_PREFIX) else k: v
                 for k, v in _torch_load(path).items()}
        hift = HiFTGenerator()
        _load_strict(hift, _legacy_weight_norm(state), f"{path} does not match HiFTGenerator")
        return hift.float().to(self.device).eval()

    def _shrink_buffers(self, flow: torch.nn.Module, frames: int) -> None:
        """Size the decoder's scratch caches for this estimator and ``frames`` (upstream
        allocates 16 steps x 16 layers x 1000 frames: 2 GB at float32)."""
        est = flow.decoder.estimator
        depth = len(est.blocks)
        heads, head_dim = est.blocks[0].attn.num_heads, est.blocks[0].attn.head_dim
        hidden = est.in_proj.out_features
        steps = self.cfg.flow_steps
        dev = next(flow.parameters()).device
        est.att_cache_buffer = torch.zeros(depth, 2, heads, frames, 2 * head_dim, device=dev)
        est.cnn_cache_buffer = torch.zeros(depth, 2, 2 * hidden, 2, device=dev)
        flow.decoder.att_cache_buffer = torch.zeros(steps, depth, 2, heads, frames,
                                                    2 * head_dim, device=dev)
        flow.decoder.cnn_cache_buffer = torch.zeros(steps, depth, 2, 2 * hidden, 2, device=dev)
        self._buffer_frames = frames

    def _ensure_buffers(self, prompt_frames: int) -> None:
        cfg = self.cfg
        need = prompt_frames + cfg.estimator_cache_frames + \
            MELS_PER_TOKEN * (cfg.chunk_tokens + cfg.lookahead_tokens)
        if need > self._buffer_frames:
            self._shrink_buffers(self.flow, need)

    # -- voice prompt -----------------------------------------------------------------------
    def prompt(self, path: Optional[str] = None) -> VoicePrompt:
        """The :class:`VoicePrompt` of ``path`` (default: ``cfg.prompt_wav``), cached."""
        path = os.path.abspath(path or self.cfg.prompt_wav or default_prompt_wav())
        with self._lock:
            if path not in self._prompts:
                self._prompts[path] = self._make_prompt(path)
            return self._prompts[path]

    @torch.inference_mode()
    def _make_prompt(self, path: str) -> VoicePrompt:
        wave, rate = read_prompt_wav(path)
        wave16 = resample(wave, rate, SAMPLE_RATE)
        ids = self.tokenizer.encode(wave16)  # [P]
        la = self.cfg.lookahead_tokens
        if ids.shape[0] < la + 1:
            raise CodecError(f"voice prompt {path}: only {ids.shape[0]} speech tokens")
        feats = kaldi_fbank(wave16)[None]  # [1, T, 80]
        name = self.speaker.get_inputs()[0].name
        emb = torch.from_numpy(np.asarray(self.speaker.run(None, {name: feats})[0]))
        if tuple(emb.shape) != (1, SPEAKER_DIM) or not torch.isfinite(emb).all():
            raise CodecError(f"{self.folder}/campplus.onnx: embedding {tuple(emb.shape)}, "
                             f"expected (1, {SPEAKER_DIM}) finite")
        mel = prompt_mel(torch.from_numpy(resample(wave, rate, OUTPUT_RATE)))  # [T, 80]
        want = ids.shape[0] * self.up_rate
        mel = torch.nn.functional.pad(mel.T[None], (0, max(0, want - mel.shape[0])),
                                      mode="replicate")[0].T[:want]  # [2P, 80]
        dev = self.device
        tokens = ids.to(torch.int32)[None].to(dev)  # [1, P]
        emb, mel = emb.float().to(dev), mel[None].to(dev)
        self._ensure_buffers(mel.shape[1])
        cache = self.flow.setup_cache(torch.cat([tokens, tokens[:, :la]], dim=1), mel, emb,
                                      n_timesteps=self.cfg.flow_steps)
        cache = {k: v.clone() for k, v in cache.items()}
        return VoicePrompt(path, tokens, emb, mel, cache)

    # -- streaming --------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return OUTPUT_RATE

    @property
    def lookahead_tokens(self) -> int:
        return self.cfg.lookahead_tokens

    @property
    def first_chunk_tokens(self) -> int:
        return self.cfg.chunk_tokens + self.cfg.lookahead_tokens

    def init_state(self) -> StepT2WState:
        voice = self.prompt()
        empty = torch.zeros(1, 0, device=self.device)
        return StepT2WState((), voice.flow_cache, torch.zeros(1, 80, 0, device=self.device),
                            torch.zeros(1, 1, 0, device=self.device), empty)

    def step(self, tokens, state: StepT2WState) -> Tuple[torch.Tensor, StepT2WState]:
        """int ``[n]`` -> (float32 audio ``[m]`` on CPU, new state); ``m`` is 0 until a
        chunk plus its lookahead is known, then ``960 * chunk`` per chunk (the first
        one ``vocoder_cache_frames * 480`` less)."""
        tokens = _as_tokens(tokens, S3_VOCAB)
        pending = state.pending + tuple(tokens.tolist())
        state = dataclasses.replace(state, pending=pending,
                                    n_tokens=state.n_tokens + tokens.numel())
        need = self.cfg.chunk_tokens + self.cfg.lookahead_tokens
        parts = [torch.zeros(0)]
        while len(state.pending) >= need:
            audio, state = self._decode(state.pending[:need], state, last=False)
            state = dataclasses.replace(state, pending=state.pending[self.cfg.chunk_tokens:])
            parts.append(audio)
        return torch.cat(parts), state

    def flush(self, state: StepT2WState) -> Tuple[torch.Tensor, StepT2WState]:
        """Decode the pending tokens with zero lookahead and release held-back audio."""
        if state.pending:
            audio, state = self._decode(state.pending, state, last=True)
        else:
            audio = state.hift_speech[0].float().cpu()
            state = dataclasses.replace(state, n_samples=state.n_samples + audio.shape[0])
        empty = torch.zeros(1, 0, device=self.device)
        return audio, dataclasses.replace(state, pending=(), hift_speech=empty)

    @torch.inference_mode()
    def _decode(self, chunk: Sequence[int], state: StepT2WState,
                last: bool) -> Tuple[torch.Tensor, StepT2WState]:
        """Flow over ``chunk`` (its lookahead included unless ``last``) then vocoder."""
        with self._lock:
            mel, cache = self._flow_chunk(chunk, state, last)
            speech, hift = self._vocode(mel, state, last)
        n = speech.shape[0]
        return speech, dataclasses.replace(state, flow_cache=cache, n_samples=state.n_samples + n,
                                           **hift)

    def _flow_chunk(self, chunk: Sequence[int], state: StepT2WState, last: bool):
        """-> (mel ``[1, 80, 2 c]``, trimmed own copy of the flow caches)."""
        voice = self.prompt()
        ids = torch.tensor([list(chunk)], dtype=torch.int32, device=self.device)
        mel, cache = self.flow.inference_chunk(ids, voice.embedding, dict(state.flow_cache),
                                               last_chunk=last, n_timesteps=self.cfg.flow_steps)
        return mel, self._trim(cache, voice.n_frames)

    @torch.inference_mode()
    def stream_mel(self, tokens) -> torch.Tensor:
        """The flow's mel of a streamed decode, ``[2 n, 80]`` (chunks as in ``step``;
        for checks against :meth:`one_shot_mel`)."""
        ids = tuple(_as_tokens(tokens, S3_VOCAB).tolist())
        state, parts = self.init_state(), []
        need, c = self.first_chunk_tokens, self.cfg.chunk_tokens
        with self._lock:
            while len(ids) >= need:
                mel, cache = self._flow_chunk(ids[:need], state, last=False)
                state, ids = dataclasses.replace(state, flow_cache=cache), ids[c:]
                parts.append(mel)
            if ids:
                parts.append(self._flow_chunk(ids, state, last=True)[0])
        return torch.cat(parts, dim=2)[0].T.float().cpu() if parts else torch.zeros(0, 80)

    @torch.inference_mode()
    def one_shot_mel(self, tokens, prompt_wav: Optional[str] = None) -> torch.Tensor:
        """The flow's mel of the whole answer in one non-streaming pass, ``[2 n, 80]``."""
        tokens = _as_tokens(tokens, S3_VOCAB)
        if tokens.numel() == 0:
            return torch.zeros(0, 80)
        with self._lock:
            voice = self.prompt(prompt_wav)
            ids = tokens.to(torch.int32)[None].to(self.device)
            lengths = [torch.tensor([n], dtype=torch.int32, device=self.device)
                       for n in (ids.shape[1], voice.tokens.shape[1], voice.n_frames)]
            mel = self.flow.inference(ids, lengths[0], voice.tokens, lengths[1], voice.mel,
                                      lengths[2], voice.embedding, self.cfg.flow_steps)
        return mel[0].T.float().cpu()

    def _trim(self, cache: Dict[str, torch.Tensor], prompt_frames: int) -> Dict[str, torch.Tensor]:
        """Own copies of the caches; the estimator's keeps prompt + last N frames."""
        out = {k: v.clone() for k, v in cache.items() if k != "estimator_att_cache"}
        att = cache["estimator_att_cache"]  # [steps, depth, 2, heads, T, 2 * head_dim]
        keep = self.cfg.estimator_cache_frames
        if att.shape[4] > prompt_frames + keep:
            att = torch.cat([att[:, :, :, :, :prompt_frames], att[:, :, :, :, -keep:]], dim=4)
        out["estimator_att_cache"] = att.clone()
        return out

    def _vocode(self, mel: torch.Tensor, state: StepT2WState, last: bool):
        """Mel ``[1, 80, 2c]`` -> (audio ``[m]`` CPU float32, new vocoder carry-over)."""
        full = torch.cat([state.hift_mel, mel], dim=2)  # [1, 80, carried + 2c]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(NOISE_SEED + state.n_samples)
            speech, source = self.hift(full, state.hift_source)  # [1, S], [1, 1, S]
        held = state.hift_speech.shape[1]
        if held:
            speech = speech.clone()
            speech[:, :held] = speech[:, :held] * self.window[:held] + \
                state.hift_speech * self.window[self.hold:self.hold + held]
        carry = dict(hift_mel=full[:, :, -self.cfg.vocoder_cache_frames:].clone(),
                     hift_source=source[:, :, -self.hold:].clone(),
                     hift_speech=speech[:, -self.hold:].clone())
        if last:
            carry["hift_speech"] = speech[:, :0]
        else:
            speech = speech[:, :-self.hold]
        return speech[0].float().cpu(), carry

    @torch.inference_mode()
    def synthesize(self, tokens, prompt_wav: Optional[str] = None) -> torch.Tensor:
        """One-shot (non-streaming) decode of a whole answer: float32 ``[960 n]``."""
        mel = self.one_shot_mel(tokens, prompt_wav)  # [2n, 80]
        if mel.shape[0] == 0:
            return torch.zeros(0)
        return self.vocode(mel)

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """HiFT in one pass: mel ``[T, 80]`` -> float32 ``[480 T]``."""
        with self._lock, torch.random.fork_rng(
                devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(NOISE_SEED)
            speech, _ = self.hift(mel.T[None].float().to(self.device))
        return speech[0].float().cpu()


@register_codec("step_token2wav")
def _make_step_codec(cfg: SpeechCodecConfig,
                     folder: Optional[str] = None) -> Tuple[SpeechTokenizer, Token2Wav]:
    """S3 tokenizer and flow + HiFT decoder read from a ``token2wav/`` folder."""
    folder = folder or cfg.token2wav_dir
    if not folder:
        raise CodecError("codec kind step_token2wav needs codec.token2wav_dir (or a "
                         "Step-Audio-2-mini backbone with a token2wav/ folder)")
    check_folder(folder)
    device = resolve_device(cfg.device)
    tokenizer = S3SpeechTokenizer(cfg, folder, device)
    return tokenizer, StepToken2Wav(cfg, folder, device, tokenizer)


__all__ = ["StepToken2Wav", "S3SpeechTokenizer", "VoicePrompt", "CodecError",
           "TOKEN2WAV_FILES", "OUTPUT_RATE", "SAMPLES_PER_TOKEN", "S3_VOCAB",
           "is_token2wav_folder", "check_folder", "missing_files", "load_flow_yaml",
           "default_prompt_wav", "kaldi_fbank", "prompt_mel", "s3_log_mel"]
