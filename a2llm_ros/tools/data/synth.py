"""Build a synthetic FLAME-QA set with espeak-ng voices and speech-driven motion.

For each question/answer pair of :mod:`a2llm_ros.tools.data.qa_text`:

* the answer is spoken once by :data:`~a2llm_ros.tools.data.espeak.ROBOT_VOICE` (the
  model's own voice) and its FLAME motion is derived from that speech
  (:mod:`a2llm_ros.tools.data.motion_synth`), with per-sample seeded blinks/head drift;
* the question is spoken by ``n_question_voices`` voices of
  :data:`~a2llm_ros.tools.data.espeak.QUESTION_VOICES` (rate/pitch jittered per
  sample from the seed) -> ``train`` (one rendition of about ``val_fraction`` of
  the pairs goes to ``val``), and by the held-out voice
  :data:`~a2llm_ros.tools.data.espeak.HELD_OUT_VOICE` -> ``test``.

So every answer appears in train, and test measures generalisation to an
unseen questioner voice.  The same seed gives byte-identical shards.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from a2llm_ros.configbase import ConfigBase
from a2llm_ros.tools.data import espeak
from a2llm_ros.tools.data.flameqa import FlameQASample, FlameQAWriter
from a2llm_ros.tools.data.motion_synth import synthesize_motion
from a2llm_ros.tools.data.qa_text import QA_PAIRS, QAPair, select_pairs

BUILDER = "a2llm_ros.tools.data.synth"


@dataclass
class SynthConfig(ConfigBase):
    """Size and randomness of a synthetic FLAME-QA build."""

    seed: int = 0
    n_pairs: int = 50
    n_question_voices: int = 5
    val_fraction: float = 0.2
    rate_jitter: int = 12
    pitch_jitter: int = 8
    shard_size: int = 200

    PRESETS = {
        "tiny": {"n_pairs": 3, "n_question_voices": 2},
        "edge": {"n_pairs": 50, "n_question_voices": 5},
        "paper": {"n_pairs": 50, "n_question_voices": 6},
    }


#: Arguments of the synthetic set the shipped default checkpoint is trained on
#: (``make default-checkpoint`` passes the same on the command line).
DEFAULT_SYNTH = {"seed": 0, "n_pairs": 50, "n_question_voices": 8}

#: The held-out voice's renditions are seeded with index ``min(n_question_voices, 8)``:
#: what it was when the default's test split was fixed, so builds of up to eight voices
#: are unchanged, and adding voices past the eighth (voice ``i >= 8`` takes index
#: ``i + 1``) changes neither the test split nor the earlier voices' samples.
HELD_OUT_SEED_INDEX = 8


def _seed_index(voice_index: int, n_question_voices: int, held_out: bool) -> int:
    """Index that seeds a rendition's jitter and motion (see :data:`HELD_OUT_SEED_INDEX`)."""
    if held_out:
        return min(n_question_voices, HELD_OUT_SEED_INDEX)
    return voice_index + (voice_index >= HELD_OUT_SEED_INDEX)


def _sample_seed(seed: int, answer_id: int, voice_index: int) -> int:
    seq = np.random.SeedSequence([int(seed), int(answer_id), int(voice_index)])
    return int(seq.generate_state(1)[0])


def _jittered(voice: espeak.VoiceSpec, rng, cfg: SynthConfig) -> espeak.VoiceSpec:
    rate = voice.rate + int(rng.integers(-cfg.rate_jitter, cfg.rate_jitter + 1))
    pitch = voice.pitch + int(rng.integers(-cfg.pitch_jitter, cfg.pitch_jitter + 1))
    return dataclasses.replace(voice, rate=rate, pitch=int(np.clip(pitch, 0, 100)))


def _question_voices(cfg: SynthConfig) -> List[espeak.VoiceSpec]:
    n = cfg.n_question_voices
    if not 1 <= n <= len(espeak.QUESTION_VOICES):
        raise ValueError(f"n_question_voices must be 1..{len(espeak.QUESTION_VOICES)}, got {n}")
    return list(espeak.QUESTION_VOICES[:n])


def _val_choices(cfg: SynthConfig, pairs: Sequence[QAPair]) -> Dict[int, int]:
    """answer_id -> index of the question voice whose rendition goes to val."""
    if cfg.n_question_voices < 2 or cfg.val_fraction <= 0:
        return {}
    rng = np.random.default_rng([int(cfg.seed), 7])
    n_val = max(1, int(round(cfg.val_fraction * len(pairs))))
    chosen = rng.choice(len(pairs), size=min(n_val, len(pairs)), replace=False)
    return {pairs[int(i)].answer_id: int(rng.integers(cfg.n_question_voices))
            for i in sorted(chosen)}


def build_pair(pair: QAPair, cfg: SynthConfig, val_voice: Optional[int]) -> List[FlameQASample]:
    """All samples of one pair: train/val renditions plus the held-out test one."""
    answer = espeak.synthesize(pair.answer, espeak.ROBOT_VOICE)
    voices = _question_voices(cfg) + [espeak.HELD_OUT_VOICE]
    samples = []
    for index, voice in enumerate(voices):
        held_out = voice is espeak.HELD_OUT_VOICE
        split = "test" if held_out else ("val" if index == val_voice else "train")
        seed_index = _seed_index(index, cfg.n_question_voices, held_out)
        seed = _sample_seed(cfg.seed, pair.answer_id, seed_index)
        rng = np.random.default_rng(seed)
        question = espeak.synthesize(pair.question, _jittered(voice, rng, cfg))
        flame = synthesize_motion(answer.audio, answer.phonemes, pair.emotion, seed=seed,
                                  intensity=pair.intensity)
        samples.append(FlameQASample(
            id=f"qa{pair.answer_id:03d}-{voice.id}", question_audio=question.audio,
            question_text=pair.question, answer_audio=answer.audio, answer_text=pair.answer,
            answer_flame=flame, emotion=pair.emotion, question_voice=voice.id,
            answer_voice=espeak.ROBOT_VOICE.id, split=split, answer_id=pair.answer_id,
            intensity=pair.intensity, answer_phonemes=answer.phonemes,
            question_phonemes=question.phonemes))
    return samples


def _build_pair_job(args):
    pair_index, cfg_dict, val_voice = args
    return build_pair(QA_PAIRS[pair_index], SynthConfig.from_dict(cfg_dict), val_voice)


def _source(cfg: SynthConfig) -> dict:
    return {"builder": BUILDER, "config": cfg.to_dict(),
            "answer_voice": dataclasses.asdict(espeak.ROBOT_VOICE),
            "question_voices": [dataclasses.asdict(v) for v in _question_voices(cfg)],
            "held_out_voice": dataclasses.asdict(espeak.HELD_OUT_VOICE),
            "phonemes": "espeak-ng IPA phoneme events"}


def _run_jobs(jobs, workers: int):
    """Build the pairs in ``workers`` fresh (spawned) processes, also for one worker: the
    calling process's state (its threads, BLAS and torch thread counts, a loaded espeak
    engine) then cannot change a sample, so the set does not depend on ``workers`` or on
    who calls (a full test session once built a different set in-process)."""
    ctx = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx)
    return _closing_map(pool, jobs)


def _closing_map(pool, jobs):
    with pool:
        yield from pool.map(_build_pair_job, jobs)


def build_synthetic(out_dir: str, seed: int = 0, n_pairs: int = 50,
                    n_question_voices: int = 5, workers: int = 2,
                    config: Optional[SynthConfig] = None) -> dict:
    """Write a synthetic FLAME-QA set to ``out_dir``; returns ``dataset.json`` + build stats.

    ``config`` (if given) overrides ``seed``, ``n_pairs`` and ``n_question_voices``.
    The result does not depend on ``workers``.
    """
    cfg = config or SynthConfig(seed=seed, n_pairs=n_pairs, n_question_voices=n_question_voices)
    if not 1 <= cfg.n_pairs <= len(QA_PAIRS):
        raise ValueError(f"n_pairs must be 1..{len(QA_PAIRS)}, got {cfg.n_pairs}")
    pairs = select_pairs(cfg.n_pairs)
    val = _val_choices(cfg, pairs)
    jobs = [(p.answer_id, cfg.to_dict(), val.get(p.answer_id)) for p in pairs]
    start = time.monotonic()
    writer = FlameQAWriter(out_dir, shard_size=cfg.shard_size, source=_source(cfg))
    writer.voices["held_out"] = [espeak.HELD_OUT_VOICE.id]
    for samples in _run_jobs(jobs, workers):
        for sample in samples:
            writer.add(sample)
    info = writer.close()
    stats = {"seconds": round(time.monotonic() - start, 2), "bytes": _dir_bytes(out_dir),
             "n_samples": sum(s["n_samples"] for s in info["splits"].values())}
    return {**info, "build": stats}


def _dir_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
               for f in files)
