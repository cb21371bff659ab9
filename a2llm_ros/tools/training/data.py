"""In-memory training data made from a FLAME-QA directory.

:class:`TrainData` reads the (validated) samples of one or more splits once,
then holds the targets the stages need: the answers' speech codes (after the
speech codec is fitted) and the answer FLAME tracks' motion codes (after the
RVQ-VAE is trained).  Batches are drawn with a generator seeded by
``(seed, run, step)``, so a resumed run draws exactly the batches it would
have drawn without the interruption.
"""
from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from fractions import Fraction
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from a2llm_ros.audio.features import resample
from a2llm_ros.constants import (FRAMES_PER_SEGMENT, SAMPLE_RATE, SPEECH_TOKEN_RATE,
                                 SPEECH_TOKENS_PER_SEGMENT)
from a2llm_ros.tools.data.flameqa import FlameQAReader, FlameQASample
from a2llm_ros.tools.data.qa_text import HIGH
from a2llm_ros.tools.data.speech_tokens import TOKENS_FILE as S3_TOKENS_FILE
from a2llm_ros.tools.data.speech_tokens import load_answer_tokens
from a2llm_ros.model.speech_codec import SpeechTokenizer
from a2llm_ros.model.configs import STEP_CODES, STEP_KIND
from a2llm_ros.model.step_token2wav import TOKEN2WAV_FILES, S3SpeechTokenizer
from a2llm_ros.tools.training.config import AugmentConfig

log = logging.getLogger(__name__)

#: Speech tokens a precomputed answer may differ from 25 per second of its audio.
S3_LENGTH_TOLERANCE = 2
#: Sample ids named in an error message (the rest are counted).
MAX_NAMED_IDS = 5
RUN_IDS = {"rvq": 1, "base": 2, "connector": 3, "joint": 4, "affective": 5}


class TrainData:
    """Samples of a FLAME-QA directory plus their speech and motion codes."""

    def __init__(self, root: str, splits: Sequence[str] = ("train",),
                 limit: Optional[int] = None):
        self.root = root
        reader = FlameQAReader(root, split=list(splits))
        self.samples: List[FlameQASample] = []
        for sample in reader:
            self.samples.append(sample)
            if limit and len(self.samples) >= limit:
                break
        self.rejected = list(getattr(reader, "rejected", []))
        if not self.samples:
            raise ValueError(f"{root}: no valid samples in split(s) {', '.join(splits)}")
        self.speech_codes: List[Optional[np.ndarray]] = [None] * len(self.samples)
        self.motion_codes: List[Optional[np.ndarray]] = [None] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    # -- targets ------------------------------------------------------------------------
    def unique_answer_waves(self, limit: int) -> List[np.ndarray]:
        """Distinct answer waves (by content), at most ``limit``."""
        seen, out = set(), []
        for s in self.samples:
            key = hashlib.sha1(s.answer_audio.tobytes()).hexdigest()
            if key not in seen:
                seen.add(key)
                out.append(s.answer_audio)
            if len(out) >= limit:
                break
        return out

    def compute_speech_codes(self, tokenizer: Optional[SpeechTokenizer],
                             kind: Optional[str] = None) -> None:
        """Answer waves -> speech codes [n] (identical waves are encoded once).

        Step's codec (``kind``, default the tokenizer's ``cfg.kind``, is
        ``step_token2wav``): the S3 tokens precomputed by ``a2llm data
        speech-tokens`` (``speech_tokens_s3.npz`` in the data directory, validated
        by :meth:`_load_s3_tokens`) when the file is there, else the S3 tokenizer's
        (the ONNX model of the ``token2wav/`` folder); with neither a ValueError
        names both.  Any other codec: its (fitted) tokenizer.
        """
        kind = kind or getattr(getattr(tokenizer, "cfg", None), "kind", None)
        if kind == STEP_KIND or isinstance(tokenizer, S3SpeechTokenizer):
            if self._load_s3_tokens():
                return
            if not isinstance(tokenizer, S3SpeechTokenizer):
                raise ValueError(
                    f"{self.root}: no S3 speech tokens for the answers: {S3_TOKENS_FILE} is "
                    f"not in the data directory and no S3 tokenizer ({TOKEN2WAV_FILES[0]} of "
                    f"a token2wav/ folder) is loaded to compute them; run `a2llm data "
                    f"speech-tokens {self.root} --token2wav DIR`")
        elif tokenizer is None:
            raise ValueError("no speech tokenizer to encode the answers (fit or load the "
                             "codec first)")
        cache: Dict[str, np.ndarray] = {}
        for i, s in enumerate(self.samples):
            key = hashlib.sha1(s.answer_audio.tobytes()).hexdigest()
            if key not in cache:
                cache[key] = tokenizer.encode(s.answer_audio).numpy().astype(np.int64)
            self.speech_codes[i] = cache[key]

    def _load_s3_tokens(self) -> bool:
        """Speech codes from the data directory's ``speech_tokens_s3.npz``; False when
        the file is not there.  A file that cannot be used raises a ValueError naming
        it and the problem: unreadable, samples missing, not one row of ids per
        sample, ids outside ``[0, 6561)``, or a length off 25 tokens per second of
        answer audio by more than :data:`S3_LENGTH_TOLERANCE`."""
        path = os.path.join(self.root, S3_TOKENS_FILE)
        if not os.path.isfile(path):
            return False
        rerun = f"rerun `a2llm data speech-tokens {self.root} --token2wav DIR`"
        try:
            tokens = load_answer_tokens(path)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: unreadable speech-token file ({type(exc).__name__}: "
                             f"{exc}); {rerun}") from exc
        missing = [s.id for s in self.samples if s.id not in tokens]
        if missing:
            raise ValueError(f"{path}: no speech tokens for {len(missing)} sample(s) "
                             f"({_named(missing)}); {rerun}")
        codes = []
        for s in self.samples:
            ids = tokens[s.id]  # [n] int64
            if ids.ndim != 1:
                raise ValueError(f"{path}: sample {s.id!r} has speech tokens of shape "
                                 f"{ids.shape}, expected one row; {rerun}")
            if ids.size and (ids.min() < 0 or ids.max() >= STEP_CODES):
                raise ValueError(f"{path}: sample {s.id!r} has speech ids outside "
                                 f"[0, {STEP_CODES}); {rerun}")
            expected = len(s.answer_audio) * SPEECH_TOKEN_RATE / SAMPLE_RATE
            if abs(len(ids) - expected) > S3_LENGTH_TOLERANCE:
                raise ValueError(f"{path}: sample {s.id!r} has {len(ids)} speech tokens, its "
                                 f"answer audio needs about {expected:.0f} at "
                                 f"{SPEECH_TOKEN_RATE} Hz; {rerun}")
            codes.append(ids)
        self.speech_codes = codes  # only a fully valid file replaces the targets
        return True

    @torch.no_grad()
    def compute_motion_codes(self, motion_tokenizer) -> None:
        """Answer FLAME [T, D] -> motion codes [T // 5, L] (whole segments only)."""
        motion_tokenizer.eval()
        for i, s in enumerate(self.samples):
            n = (s.answer_flame.shape[0] // FRAMES_PER_SEGMENT) * FRAMES_PER_SEGMENT
            frames = torch.as_tensor(s.answer_flame[:n], dtype=torch.float32)[None]
            codes = motion_tokenizer.encode(frames)[0] if n else torch.zeros(0, 1)
            self.motion_codes[i] = codes.numpy().astype(np.int64)

    def high_intensity(self) -> List[int]:
        """Indices of the high-emotion samples (stage 3)."""
        return [i for i, s in enumerate(self.samples) if s.intensity == HIGH]

    def flame_frames(self) -> np.ndarray:
        """All answer FLAME frames stacked [N, D] (normalisation statistics)."""
        return np.concatenate([s.answer_flame for s in self.samples], axis=0)

    # -- batches ------------------------------------------------------------------------
    def draw(self, run: str, step: int, seed: int, batch_size: int,
             pool: Optional[Sequence[int]] = None,
             replay: float = 0.0) -> List[int]:
        """Indices of the batch of ``run`` at ``step`` (deterministic).

        ``pool`` restricts the draw; ``replay`` is the fraction drawn from
        outside the pool instead (stage 3 keeps some of the rest).
        """
        rng = np.random.default_rng([seed, RUN_IDS[run], step])
        everyone = np.arange(len(self.samples))
        if pool is None:
            return [int(i) for i in rng.choice(everyone, batch_size,
                                               replace=batch_size > len(everyone))]
        pool = np.asarray(list(pool))
        rest = np.setdiff1d(everyone, pool)
        n_replay = int(round(replay * batch_size)) if len(rest) else 0
        picks = list(rng.choice(pool, batch_size - n_replay,
                                replace=batch_size - n_replay > len(pool)))
        if n_replay:
            picks += list(rng.choice(rest, n_replay, replace=n_replay > len(rest)))
        return [int(i) for i in picks]

    def rvq_windows(self, step: int, seed: int, batch_size: int, frames: int) -> np.ndarray:
        """Random FLAME windows [B, frames, D] (shorter tracks are edge-padded)."""
        rng = np.random.default_rng([seed, RUN_IDS["rvq"], step])
        out = []
        for i in rng.integers(len(self.samples), size=batch_size):
            track = self.samples[int(i)].answer_flame
            if track.shape[0] < frames:
                track = np.pad(track, ((0, frames - track.shape[0]), (0, 0)), mode="edge")
            start = int(rng.integers(track.shape[0] - frames + 1))
            out.append(track[start:start + frames])
        return np.stack(out).astype(np.float32)

    def items(self, indices: Sequence[int],
              rngs: Optional[Sequence[np.random.Generator]] = None,
              augment: Optional[AugmentConfig] = None) -> list:
        """(question wave, answer text, speech codes, motion codes) per index;
        ``rngs`` (one per index, see :func:`sample_rng`) drive the augmentation."""
        out = []
        for k, i in enumerate(indices):
            s = self.samples[i]
            wave = s.question_audio
            if rngs is not None and augment is not None:
                wave = augment_wave(wave, rngs[k], augment)
            motion = self.motion_codes[i]
            if motion is None:
                motion = np.zeros((0, 1), dtype=np.int64)
            speech = self.speech_codes[i]
            if speech is None:
                raise RuntimeError("speech codes not computed (fit the codec first)")
            out.append((wave, s.answer_text, speech, motion))
        return out

    def transcription_items(self, indices: Sequence[int],
                            rngs: Optional[Sequence[np.random.Generator]] = None,
                            augment: Optional[AugmentConfig] = None) -> list:
        """(question wave, question text, no speech, no motion) per index (ASR rows)."""
        out = []
        for k, i in enumerate(indices):
            s = self.samples[i]
            wave = s.question_audio
            if rngs is not None and augment is not None:
                wave = augment_wave(wave, rngs[k], augment)
            out.append((wave, s.question_text, np.zeros(0, np.int64),
                        np.zeros((0, 1), np.int64)))
        return out


def _named(ids: Sequence[str]) -> str:
    """The first :data:`MAX_NAMED_IDS` ids quoted, and how many more."""
    shown = ", ".join(repr(i) for i in ids[:MAX_NAMED_IDS])
    return shown + (f" and {len(ids) - MAX_NAMED_IDS} more" if len(ids) > MAX_NAMED_IDS else "")


def rejected_counts(rejected: Sequence) -> Dict[str, int]:
    """Skipped samples per reason code (the text before ``:`` of each ``(id, reason)``)."""
    out: Dict[str, int] = {}
    for _, reason in rejected:
        code = str(reason).split(":", 1)[0].strip()
        out[code] = out.get(code, 0) + 1
    return dict(sorted(out.items()))


def sample_rng(seed: int, run: str, step: int, position: int) -> np.random.Generator:
    """Augmentation randomness of the sample at ``position`` of a run's global batch
    at ``step``: the same on any rank and at any world size."""
    return np.random.default_rng([seed, RUN_IDS[run], step, 1, position])


#: WSOLA frame (20 ms Hann, 50 % overlap) and its alignment search range (+-5 ms).
WSOLA_WINDOW = 320
WSOLA_TOLERANCE = 80


def wsola_stretch(wave: np.ndarray, rate: float) -> np.ndarray:
    """Time-scale ``wave`` [N] by ``rate`` without changing its pitch -> [round(N / rate)].

    Waveform-similarity overlap-add: every output frame is copied from near
    its nominal input position, shifted by up to :data:`WSOLA_TOLERANCE`
    samples to the spot that best continues the previous frame.
    """
    x = np.asarray(wave, np.float32)
    win, tol = WSOLA_WINDOW, WSOLA_TOLERANCE
    hop = win // 2
    window = np.hanning(win + 2)[1:-1].astype(np.float32)  # sums to 1 at 50 % overlap
    n_out = int(round(len(x) / rate))
    padded = np.pad(x, (tol, win + tol + int(hop * rate) + 2))
    out = np.zeros(n_out + win, np.float32)
    prev = 0
    for k in range(n_out // hop + 1):
        nominal = int(round(k * hop * rate))
        best = nominal
        if k > 0:
            natural = padded[tol + prev + hop:tol + prev + hop + win]  # [win]
            region = padded[nominal:nominal + 2 * tol + win]  # [2 tol + win]
            if len(region) < 2 * tol + win:
                break
            best = nominal - tol + int(np.argmax(np.correlate(region, natural, "valid")))
        out[k * hop:k * hop + win] += padded[tol + best:tol + best + win] * window
        prev = best
    return out[:n_out]


def frequency_warp(wave: np.ndarray, alpha: float) -> np.ndarray:
    """Scale every frequency of ``wave`` [N] by ``alpha``, keeping its duration -> [N].

    Resampling moves formants and pitch together (as a shorter or longer vocal
    tract and different vocal folds would) and also changes the tempo;
    :func:`wsola_stretch` then restores the original duration.
    """
    x = np.asarray(wave, np.float32)
    if alpha == 1.0 or len(x) < 2 * WSOLA_WINDOW:
        return x
    ratio = Fraction(1.0 / alpha).limit_denominator(50)  # small factors keep it fast
    y = resample(x, ratio.denominator, ratio.numerator)  # [~N / alpha]
    z = wsola_stretch(y, len(y) / len(x))
    return np.pad(z, (0, max(len(x) - len(z), 0)))[:len(x)]


#: Pause insertion: 10 ms energy frames, smoothed over 3; a pause goes at one of the
#: quietest local minima inside the middle of the speech.
PAUSE_FRAME = SAMPLE_RATE // 100
PAUSE_SPAN = (0.2, 0.9)
PAUSE_CANDIDATES = 3


def pause_spot(wave: np.ndarray, rng: np.random.Generator) -> Optional[int]:
    """Sample index of a quiet spot inside the speech of ``wave`` [N] (a gap between words
    or a stop closure), drawn from its :data:`PAUSE_CANDIDATES` quietest local energy minima
    within :data:`PAUSE_SPAN` of the speech; None when it is too short or silent."""
    n = len(wave) // PAUSE_FRAME
    if n < 10:
        return None
    frames = wave[:n * PAUSE_FRAME].reshape(n, PAUSE_FRAME).astype(np.float64)
    energy = np.convolve((frames ** 2).mean(1), np.ones(3) / 3, "same")  # [n]
    loud = np.flatnonzero(energy > energy.max() * 1e-3)   # within 30 dB of the loudest
    if len(loud) == 0:                                     # all silence
        return None
    first, last = int(loud[0]), int(loud[-1])
    lo = first + int(PAUSE_SPAN[0] * (last - first))
    hi = first + int(PAUSE_SPAN[1] * (last - first))
    inner = np.arange(max(lo, 1), min(hi, n - 1))
    minima = inner[(energy[inner] <= energy[inner - 1]) & (energy[inner] <= energy[inner + 1])]
    if len(minima) == 0:
        return None
    quietest = minima[np.argsort(energy[minima], kind="stable")[:PAUSE_CANDIDATES]]
    return int(quietest[rng.integers(len(quietest))]) * PAUSE_FRAME + PAUSE_FRAME // 2


def insert_pause(wave: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """``wave`` [N] with ``pause_min_s..pause_max_s`` of silence at :func:`pause_spot`."""
    spot = pause_spot(wave, rng)
    seconds = rng.uniform(cfg.pause_min_s, cfg.pause_max_s)
    if spot is None:
        return wave
    gap = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    return np.concatenate([wave[:spot], gap, wave[spot:]])


def augment_wave(wave: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Speed (resampling), frequency warp, inner pause, gain, additive noise and silence
    padding of a question wave."""
    if rng.random() >= cfg.prob:
        return wave
    x = wave.astype(np.float32)
    if cfg.warp_prob > 0 and rng.random() < cfg.warp_prob:
        x = frequency_warp(x, float(rng.uniform(cfg.warp_min, cfg.warp_max)))
    if cfg.pause_prob > 0 and rng.random() < cfg.pause_prob:
        x = insert_pause(x, rng, cfg)
    speed = rng.uniform(cfg.speed_min, cfg.speed_max)
    n = max(int(len(x) / speed), 1)
    x = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)
    x = x * np.float32(10 ** (rng.uniform(-cfg.gain_db, cfg.gain_db) / 20))
    if rng.random() < cfg.noise_prob:
        power = float(np.mean(x ** 2)) + 1e-12
        noise_power = power / 10 ** (cfg.noise_snr_db / 10)
        x = x + rng.standard_normal(len(x)).astype(np.float32) * np.float32(noise_power ** 0.5)
    pad = [int(rng.uniform(0, cfg.pad_max_s) * SAMPLE_RATE) for _ in range(2)]
    x = np.pad(x, pad)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def segments_for(speech_codes: np.ndarray, motion_codes: np.ndarray) -> int:
    """Motion segments trainable for one sample (both sides long enough)."""
    return min(len(speech_codes) // SPEECH_TOKENS_PER_SEGMENT, len(motion_codes))
