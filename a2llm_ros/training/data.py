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
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from a2llm_ros.constants import FRAMES_PER_SEGMENT, SAMPLE_RATE, SPEECH_TOKENS_PER_SEGMENT
from a2llm_ros.data.flameqa import FlameQAReader, FlameQASample
from a2llm_ros.data.qa_text import HIGH
from a2llm_ros.training.config import AugmentConfig

log = logging.getLogger(__name__)

RUN_IDS = {"rvq": 1, "base": 2, "connector": 3, "joint": 4, "affective": 5}


class TrainData:
    """Samples of a FLAME-QA directory plus their speech and motion codes."""

    def __init__(self, root: str, splits: Sequence[str] = ("train",),
                 limit: Optional[int] = None):
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

    def compute_speech_codes(self, tokenizer) -> None:
        """Answer waves -> speech codes [n] (identical waves are encoded once)."""
        cache: Dict[str, np.ndarray] = {}
        for i, s in enumerate(self.samples):
            key = hashlib.sha1(s.answer_audio.tobytes()).hexdigest()
            if key not in cache:
                cache[key] = tokenizer.encode(s.answer_audio).numpy().astype(np.int64)
            self.speech_codes[i] = cache[key]

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

    def items(self, indices: Sequence[int], rng: Optional[np.random.Generator] = None,
              augment: Optional[AugmentConfig] = None) -> list:
        """(question wave, answer text, speech codes, motion codes) per index."""
        out = []
        for i in indices:
            s = self.samples[i]
            wave = s.question_audio
            if rng is not None and augment is not None:
                wave = augment_wave(wave, rng, augment)
            motion = self.motion_codes[i]
            if motion is None:
                motion = np.zeros((0, 1), dtype=np.int64)
            speech = self.speech_codes[i]
            if speech is None:
                raise RuntimeError("speech codes not computed (fit the codec first)")
            out.append((wave, s.answer_text, speech, motion))
        return out

    def transcription_items(self, indices: Sequence[int],
                            rng: Optional[np.random.Generator] = None,
                            augment: Optional[AugmentConfig] = None) -> list:
        """(question wave, question text, no speech, no motion) per index (ASR rows)."""
        out = []
        for i in indices:
            s = self.samples[i]
            wave = s.question_audio
            if rng is not None and augment is not None:
                wave = augment_wave(wave, rng, augment)
            out.append((wave, s.question_text, np.zeros(0, np.int64),
                        np.zeros((0, 1), np.int64)))
        return out


def augment_wave(wave: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Speed (resampling), gain, additive noise and silence padding of a question wave."""
    if rng.random() >= cfg.prob:
        return wave
    x = wave.astype(np.float32)
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
