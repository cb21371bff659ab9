"""FLAME-QA: spoken question -> spoken answer + 25 fps FLAME motion.

Layout of a dataset directory::

    DIR/
      dataset.json              # description (see below)
      shards/
        train-00000.tar         # samples of one split, in order
        train-00001.tar
        val-00000.tar
        test-00000.tar

``dataset.json`` holds ``format`` ("flame-qa"), ``version`` (1), ``fps`` (25),
``sample_rate`` (16000), ``flame_layout`` (``FlameLayout.to_dict()``),
``splits`` (split -> ``{"shards": [relative paths], "n_samples": N}``),
``emotions`` (category names), ``voices`` (``{"question": [...], "answer": [...],
"held_out": [...]}``), ``counts`` (per split and per emotion) and ``source``
(free-form dict describing how the set was made).

Each shard is a plain, uncompressed POSIX tar (streaming-friendly; no pickle
anywhere).  A sample ``ID`` is four consecutive members:

``ID.meta.json``
    UTF-8 JSON: ``id``, ``split``, ``question_text``, ``answer_text``,
    ``emotion``, ``intensity`` ("normal" | "high"), ``question_voice``,
    ``answer_voice``, ``answer_id`` (index in the answer set), ``fps``,
    ``sample_rate``, ``answer_phonemes`` and ``question_phonemes`` (lists of
    ``[phoneme, start_s, end_s]``, may be empty) and ``extra`` (dict).
``ID.question.wav`` / ``ID.answer.wav``
    mono WAV at 16 kHz, 16-bit PCM by default (32-bit float allowed); the
    loader returns float32 in [-1, 1].
``ID.answer_flame.npy``
    float32 ``[T, 58]`` at 25 fps (``numpy.save``, ``allow_pickle=False``),
    ``T == round(answer_seconds * 25)`` (within one frame).

:class:`FlameQAReader` streams samples shard by shard and validates each one;
a bad sample is logged with its id and reason, appended to
``reader.rejected`` and skipped, the run goes on.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import tarfile
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, FlameLayout

LOG = logging.getLogger(__name__)

FORMAT_NAME = "flame-qa"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised")
INTENSITIES = ("normal", "high")
DEFAULT_SHARD_SIZE = 200
#: Largest allowed |FLAME frames - answer seconds * fps|.
MAX_FRAME_MISMATCH = 1.0
MEMBER_SUFFIXES = ("meta.json", "question.wav", "answer.wav", "answer_flame.npy")
INFO_FILE = "dataset.json"
SHARD_DIR = "shards"

Phonemes = List[Tuple[str, float, float]]


@dataclass
class FlameQASample:
    """One question/answer turn (audio float32 mono, FLAME ``[T, dim]`` float32)."""

    id: str
    question_audio: np.ndarray
    question_text: str
    answer_audio: np.ndarray
    answer_text: str
    answer_flame: np.ndarray
    emotion: str = "neutral"
    question_voice: str = ""
    answer_voice: str = ""
    split: str = "train"
    answer_id: int = -1
    intensity: str = "normal"
    answer_phonemes: Phonemes = field(default_factory=list)
    question_phonemes: Phonemes = field(default_factory=list)
    sample_rate: int = SAMPLE_RATE
    fps: int = FLAME_FPS
    extra: dict = field(default_factory=dict)

    @property
    def answer_seconds(self) -> float:
        return len(self.answer_audio) / float(self.sample_rate)

    def meta(self) -> dict:
        """The JSON-able metadata (everything except the arrays)."""
        return {"id": self.id, "split": self.split, "question_text": self.question_text,
                "answer_text": self.answer_text, "emotion": self.emotion,
                "intensity": self.intensity, "question_voice": self.question_voice,
                "answer_voice": self.answer_voice, "answer_id": int(self.answer_id),
                "fps": self.fps, "sample_rate": self.sample_rate,
                "answer_phonemes": _phonemes_json(self.answer_phonemes),
                "question_phonemes": _phonemes_json(self.question_phonemes),
                "extra": self.extra}


class SampleError(ValueError):
    """A sample breaks a FLAME-QA rule; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


def _phonemes_json(phonemes) -> list:
    return [[str(p), round(float(s), 5), round(float(e), 5)] for p, s, e in phonemes]


# --------------------------------------------------------------------------- validation

def validate_sample(sample: FlameQASample, layout: FlameLayout = DEFAULT_LAYOUT) -> None:
    """Raise :class:`SampleError` if ``sample`` breaks a FLAME-QA rule."""
    if sample.fps != FLAME_FPS:
        raise SampleError("wrong_fps", f"fps {sample.fps} != {FLAME_FPS}")
    if sample.sample_rate != SAMPLE_RATE:
        raise SampleError("wrong_sample_rate", f"{sample.sample_rate} Hz != {SAMPLE_RATE} Hz")
    for name in ("question_text", "answer_text"):
        if not str(getattr(sample, name)).strip():
            raise SampleError("empty_text", f"{name} is empty")
    for name in ("question_audio", "answer_audio"):
        _check_audio(name, getattr(sample, name))
    _check_flame(sample.answer_flame, layout)
    expected = sample.answer_seconds * FLAME_FPS
    n_frames = sample.answer_flame.shape[0]
    if abs(n_frames - expected) > MAX_FRAME_MISMATCH:
        raise SampleError("duration_mismatch",
                          f"{n_frames} FLAME frames vs {expected:.2f} frames of answer audio")


def _check_audio(name: str, audio: np.ndarray) -> None:
    if audio.ndim != 1 or audio.size == 0:
        raise SampleError("bad_audio", f"{name} must be mono and non-empty, "
                                       f"shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise SampleError("nonfinite_audio", f"{name} has NaN/Inf")


def _check_flame(flame: np.ndarray, layout: FlameLayout) -> None:
    if flame.ndim != 2 or flame.shape[1] != layout.dim:
        raise SampleError("wrong_flame_width",
                          f"answer_flame shape {flame.shape}, expected [T, {layout.dim}]")
    if flame.shape[0] == 0:
        raise SampleError("duration_mismatch", "answer_flame has no frames")
    if not np.all(np.isfinite(flame)):
        raise SampleError("nonfinite_flame", "answer_flame has NaN/Inf")


# --------------------------------------------------------------------------- encoding

def encode_wav(audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
               subtype: str = "PCM_16") -> bytes:
    """Mono WAV bytes (deterministic: no timestamps in the header)."""
    buf = io.BytesIO()
    data = np.asarray(audio, dtype=np.float32)
    if subtype.startswith("PCM"):
        data = np.clip(data, -1.0, 1.0)
    sf.write(buf, data, sample_rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def decode_wav(data: bytes) -> Tuple[np.ndarray, int]:
    """WAV bytes -> (float32 mono samples, sample rate)."""
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if audio.shape[1] != 1:
        raise SampleError("bad_audio", f"{audio.shape[1]} channels, expected mono")
    return audio[:, 0], int(sr)


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def sample_to_members(sample: FlameQASample, audio_subtype: str = "PCM_16") -> Dict[str, bytes]:
    """Suffix -> bytes for the four tar members of ``sample``."""
    meta = json.dumps(sample.meta(), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"meta.json": meta,
            "question.wav": encode_wav(sample.question_audio, sample.sample_rate,
                                       audio_subtype),
            "answer.wav": encode_wav(sample.answer_audio, sample.sample_rate, audio_subtype),
            "answer_flame.npy": encode_npy(sample.answer_flame)}


def members_to_sample(sample_id: str, members: Dict[str, bytes]) -> FlameQASample:
    """Inverse of :func:`sample_to_members`; raises :class:`SampleError`."""
    missing = [s for s in MEMBER_SUFFIXES if s not in members]
    if missing:
        raise SampleError("missing_file", "missing " + ", ".join(missing))
    try:
        meta = json.loads(members["meta.json"].decode("utf-8"))
        q_audio, q_sr = decode_wav(members["question.wav"])
        a_audio, a_sr = decode_wav(members["answer.wav"])
        flame = decode_npy(members["answer_flame.npy"])
    except SampleError:
        raise
    except Exception as exc:  # corrupt bytes of any kind
        raise SampleError("corrupt", f"{type(exc).__name__}: {exc}") from exc
    sr = int(meta.get("sample_rate", SAMPLE_RATE))
    if q_sr != sr or a_sr != sr:
        raise SampleError("wrong_sample_rate",
                          f"WAV rates {q_sr}/{a_sr} Hz, meta says {sr} Hz")
    try:
        return _sample_from_meta(sample_id, meta, q_audio, a_audio, flame)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SampleError("bad_meta", f"{type(exc).__name__}: {exc}") from exc


def _sample_from_meta(sample_id, meta, q_audio, a_audio, flame) -> FlameQASample:
    def phon(key):
        return [(str(p), float(s), float(e)) for p, s, e in meta.get(key, [])]

    return FlameQASample(
        id=str(meta.get("id", sample_id)), question_audio=q_audio,
        question_text=str(meta.get("question_text", "")), answer_audio=a_audio,
        answer_text=str(meta.get("answer_text", "")),
        answer_flame=np.asarray(flame, dtype=np.float32),
        emotion=str(meta.get("emotion", "neutral")),
        question_voice=str(meta.get("question_voice", "")),
        answer_voice=str(meta.get("answer_voice", "")), split=str(meta.get("split", "")),
        answer_id=int(meta.get("answer_id", -1)),
        intensity=str(meta.get("intensity", "normal")),
        answer_phonemes=phon("answer_phonemes"), question_phonemes=phon("question_phonemes"),
        sample_rate=int(meta.get("sample_rate", SAMPLE_RATE)),
        fps=meta.get("fps", FLAME_FPS), extra=dict(meta.get("extra", {})))


# --------------------------------------------------------------------------- writer

def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class FlameQAWriter:
    """Write samples into ``root`` as FLAME-QA shards; :meth:`close` writes ``dataset.json``.

    Output is byte-identical for identical input (fixed tar headers, sorted JSON).
    With ``validate`` (default) a bad sample raises :class:`SampleError`.
    """

    def __init__(self, root: str, layout: FlameLayout = DEFAULT_LAYOUT,
                 shard_size: int = DEFAULT_SHARD_SIZE, audio_subtype: str = "PCM_16",
                 validate: bool = True, source: Optional[dict] = None):
        self.root = root
        self.layout = layout
        self.shard_size = int(shard_size)
        self.audio_subtype = audio_subtype
        self.validate = validate
        self.source = dict(source or {})
        self.voices = {"question": [], "answer": [], "held_out": []}
        self._open: Dict[str, Tuple[tarfile.TarFile, int]] = {}
        self._shards: Dict[str, List[str]] = {}
        self._counts: Dict[str, Dict[str, int]] = {}
        self._ids: set = set()
        os.makedirs(os.path.join(root, SHARD_DIR), exist_ok=True)

    def add(self, sample: FlameQASample) -> None:
        """Append ``sample`` to the current shard of its split."""
        if self.validate:
            validate_sample(sample, self.layout)
        if sample.id in self._ids:
            raise ValueError(f"duplicate sample id {sample.id!r}")
        if not sample.id or any(c in sample.id for c in "./\\ "):
            raise ValueError(f"bad sample id {sample.id!r} (no '.', '/', '\\' or spaces)")
        self._ids.add(sample.id)
        tar = self._tar_for(sample.split)
        for suffix, data in sample_to_members(sample, self.audio_subtype).items():
            _tar_add(tar, f"{sample.id}.{suffix}", data)
        self._count(sample)

    def _tar_for(self, split: str) -> tarfile.TarFile:
        tar, n = self._open.get(split, (None, 0))
        if tar is not None and n >= self.shard_size:
            tar.close()
            tar = None
        if tar is None:
            shards = self._shards.setdefault(split, [])
            rel = f"{SHARD_DIR}/{split}-{len(shards):05d}.tar"
            shards.append(rel)
            tar = tarfile.open(os.path.join(self.root, rel), "w", format=tarfile.USTAR_FORMAT)
            n = 0
        self._open[split] = (tar, n + 1)
        return tar

    def _count(self, sample: FlameQASample) -> None:
        counts = self._counts.setdefault(sample.split, {"n_samples": 0})
        counts["n_samples"] += 1
        key = f"emotion/{sample.emotion}"
        counts[key] = counts.get(key, 0) + 1
        if sample.question_voice and sample.question_voice not in self.voices["question"]:
            self.voices["question"].append(sample.question_voice)
        if sample.answer_voice and sample.answer_voice not in self.voices["answer"]:
            self.voices["answer"].append(sample.answer_voice)

    def info(self) -> dict:
        """The ``dataset.json`` content for what was written so far."""
        splits = {s: {"shards": list(self._shards[s]),
                      "n_samples": self._counts[s]["n_samples"]} for s in self._shards}
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "fps": FLAME_FPS,
                "sample_rate": SAMPLE_RATE, "flame_layout": self.layout.to_dict(),
                "splits": splits, "emotions": list(EMOTIONS), "voices": self.voices,
                "counts": {s: dict(sorted(c.items())) for s, c in self._counts.items()},
                "source": self.source}

    def close(self) -> dict:
        """Close shards, write ``dataset.json`` and return its content."""
        for tar, _ in self._open.values():
            tar.close()
        self._open.clear()
        info = self.info()
        with open(os.path.join(self.root, INFO_FILE), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2, sort_keys=True)
            fh.write("\n")
        return info

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- reader

def read_info(root: str) -> dict:
    """Load and check ``dataset.json`` of a FLAME-QA directory."""
    with open(os.path.join(root, INFO_FILE), encoding="utf-8") as fh:
        info = json.load(fh)
    if info.get("format") != FORMAT_NAME:
        raise ValueError(f"{root}: not a FLAME-QA dataset (format {info.get('format')!r})")
    if int(info.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{root}: FLAME-QA version {info['version']} is newer than "
                         f"{FORMAT_VERSION}")
    return info


def iter_tar_groups(path: str) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Stream ``(sample_id, {suffix: bytes})`` from one shard, in member order."""
    current, members = None, {}
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            sample_id, _, suffix = member.name.partition(".")
            if sample_id != current and current is not None:
                yield current, members
                members = {}
            current = sample_id
            members[suffix] = tar.extractfile(member).read()
    if current is not None:
        yield current, members


class FlameQAReader:
    """Streaming, validating reader of a FLAME-QA directory.

    Iterates the shards of ``split`` (one name, a list, or ``None`` for all) in
    order, or in a seeded random order with ``shuffle``; ``shuffle_buffer`` > 1
    also shuffles samples inside a window.  Invalid samples are logged and
    recorded in :attr:`rejected` as ``(id, reason)``, then skipped.
    """

    def __init__(self, root: str, split=None, shuffle: bool = False, seed: int = 0,
                 shuffle_buffer: int = 64, layout: Optional[FlameLayout] = None):
        self.root = root
        self.info = read_info(root)
        self.layout = layout or FlameLayout(n_expr=self.info["flame_layout"]["n_expr"])
        self.splits = self._pick_splits(split)
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.rejected: List[Tuple[str, str]] = []
        self.n_ok = 0
        self._epoch = 0

    def _pick_splits(self, split) -> List[str]:
        known = sorted(self.info["splits"],
                       key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
        if split is None:
            return known
        wanted = [split] if isinstance(split, str) else list(split)
        return [s for s in wanted if s in known]

    def shards(self) -> List[str]:
        """Absolute shard paths in iteration order of the next epoch."""
        paths = [os.path.join(self.root, rel) for s in self.splits
                 for rel in self.info["splits"][s]["shards"]]
        if self.shuffle:
            random.Random(f"{self.seed}/{self._epoch}").shuffle(paths)
        return paths

    def __len__(self) -> int:
        return sum(self.info["splits"][s]["n_samples"] for s in self.splits)

    def __iter__(self) -> Iterator[FlameQASample]:
        stream = self._valid_samples()
        if self.shuffle and self.shuffle_buffer > 1:
            stream = _buffer_shuffle(stream, self.shuffle_buffer,
                                     random.Random(f"{self.seed}/{self._epoch}/buf"))
        self._epoch += 1
        return stream

    def _valid_samples(self) -> Iterator[FlameQASample]:
        for path in self.shards():
            try:
                for sample_id, members in iter_tar_groups(path):
                    sample = self._check(sample_id, members)
                    if sample is not None:
                        yield sample
            except (tarfile.TarError, OSError) as exc:
                self._reject(os.path.basename(path), f"corrupt_shard: {exc}")

    def _check(self, sample_id: str, members: Dict[str, bytes]) -> Optional[FlameQASample]:
        try:
            sample = members_to_sample(sample_id, members)
            validate_sample(sample, self.layout)
        except SampleError as exc:
            self._reject(sample_id, str(exc))
            return None
        self.n_ok += 1
        return sample

    def _reject(self, sample_id: str, reason: str) -> None:
        LOG.warning("FLAME-QA %s: skipping sample %s: %s", self.root, sample_id, reason)
        self.rejected.append((sample_id, reason))


def _buffer_shuffle(stream, size: int, rng: random.Random):
    buf = []
    for item in stream:
        buf.append(item)
        if len(buf) >= size:
            yield buf.pop(rng.randrange(len(buf)))
    rng.shuffle(buf)
    yield from buf


def summarize(root: str) -> dict:
    """Read every sample of ``root`` and return counts, durations and rejections."""
    reader = FlameQAReader(root)
    per_split: Dict[str, dict] = {}
    for sample in reader:
        s = per_split.setdefault(sample.split, {"n": 0, "answer_s": 0.0, "question_s": 0.0,
                                                "emotions": {}, "question_voices": []})
        s["n"] += 1
        s["answer_s"] += sample.answer_seconds
        s["question_s"] += len(sample.question_audio) / float(sample.sample_rate)
        s["emotions"][sample.emotion] = s["emotions"].get(sample.emotion, 0) + 1
        if sample.question_voice not in s["question_voices"]:
            s["question_voices"].append(sample.question_voice)
    for s in per_split.values():
        s["answer_s"] = round(s["answer_s"], 2)
        s["question_s"] = round(s["question_s"], 2)
    return {"root": root, "info": reader.info, "splits": per_split, "n_ok": reader.n_ok,
            "rejected": reader.rejected}


def frames_for_seconds(seconds: float) -> int:
    """FLAME frame count for an audio duration: ``round(seconds * 25)``."""
    return int(math.floor(seconds * FLAME_FPS + 0.5))


def list_ids(root: str, splits: Sequence[str] = SPLITS) -> List[str]:
    """Sample ids of ``root`` without decoding audio (reads tar headers only)."""
    info = read_info(root)
    ids = []
    for split in splits:
        for rel in info["splits"].get(split, {}).get("shards", []):
            with tarfile.open(os.path.join(root, rel), "r|") as tar:
                ids.extend(m.name[:-len(".meta.json")] for m in tar
                           if m.name.endswith(".meta.json"))
    return ids
