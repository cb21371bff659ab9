"""Deterministic audio bags for tests and demos, each with a JSON sidecar.

``make_fixtures(out_dir, seed)`` writes ``<out_dir>/<name>/`` (an MCAP rosbag2
bag) and ``<out_dir>/<name>.json`` for every name in :data:`DEFAULT_FIXTURES`
(``names=`` picks others, e.g. ``"malformed"``, which holds a 10 MB message
and is therefore made only on request).  Speech is spoken by Debian's
``espeak-ng`` (22.05 kHz, resampled polyphase), the same in every run; the
noise floor and added noise come from ``numpy.random.default_rng(seed)``.

Time base: every message's header stamp and bag timestamp is
``t0_ns + first_sample / rate`` (1 s of audio = 1 s of bag time), with
``t0_ns`` = :data:`T0_NS`.  Sidecar times (``onset_s``/``offset_s``/``t_s``)
are seconds since ``t0_ns``.  AudioInfo (ros-drivers) is written once at
``t0_ns`` on a transient-local topic.

Sidecar keys: name, bag, flavour, storage, audio_topic, info_topic,
sample_rate, channels, sample_format, chunk_frames, chunk_ms, t0_ns,
duration_s, n_messages, utterances [{text, answer_id, role, onset_s,
offset_s}], faults [{kind, t_s, messages, expected, reason}], plus per-fixture
extras (snr_db, ...).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from a2llm_ros.audio.signals import trim_silence
from a2llm_ros.tools.bags import types as T
from a2llm_ros.tools.bags.export import encode_pcm, to_int16
from a2llm_ros.tools.bags.io import BagWriter, PathLike
from a2llm_ros.constants import NS_PER_S

FIXTURES = ("conversation", "barge_in", "noisy", "stereo_44k_s16", "f32_48k", "mgonzs13",
            "malformed")
DEFAULT_FIXTURES = FIXTURES[:-1]
#: 2026-01-01T00:00:00Z, the start of every fixture.
T0_NS = 1_767_225_600 * NS_PER_S
ESPEAK_RATE = 22_050
#: Test-split style question voice (the held-out voice of the synthetic data set).
ESPEAK_VOICE = ("en-029+f4", 168, 58)  # voice, words/min, pitch
SPEECH_PEAK = 0.5
NOISE_FLOOR_RMS = 10 ** (-60 / 20)  # -60 dBFS
TRIM_THRESHOLD = 0.01  # of the peak, to find where speech starts/ends
NOISY_SNR_DB = 10.0
OVERSIZE_BYTES = 10_000_000
RD_AUDIO_TOPIC = "/audio/audio_stamped"
RD_INFO_TOPIC = "/audio/audio_info"
MG_AUDIO_TOPIC = "/audio"
MG_CHUNK = 512
FRAME_ID = "mic"
#: Bumped whenever fixture content changes; cached fixtures of another version are remade.
FIXTURE_VERSION = 1
CACHE_ENV = "A2LLM_FIXTURE_CACHE"

#: Fallback questions (answer_id -1) when the project's Q/A set is absent.
_FALLBACK = {"What is your name?": -1}


def qa_question(text: str) -> Tuple[str, int]:
    """(question, answer_id) from ``a2llm_ros.tools.data.qa_text`` if it holds ``text``."""
    try:
        from a2llm_ros.tools.data.qa_text import QA_PAIRS
    except ImportError:
        return text, _FALLBACK.get(text, -1)
    for pair in QA_PAIRS:
        if pair.question == text:
            return pair.question, pair.answer_id
    return text, -1


# ----------------------------------------------------------------------------- speech

@lru_cache(maxsize=32)
def _espeak_native(text: str) -> np.ndarray:
    import soundfile

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    voice, wpm, pitch = ESPEAK_VOICE
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch),
                        "-w", path, text], check=True, capture_output=True)
        wave, rate = soundfile.read(path, dtype="float64")
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE}")
    return trim_silence(wave, TRIM_THRESHOLD * np.abs(wave).max())


def speak(text: str, rate: int) -> np.ndarray:
    """``text`` spoken by espeak-ng, trimmed to speech, peak :data:`SPEECH_PEAK`, [N] at rate."""
    from scipy.signal import resample_poly

    wave = _espeak_native(text)
    ratio = Fraction(rate, ESPEAK_RATE)
    if ratio != 1:
        wave = resample_poly(wave, ratio.numerator, ratio.denominator)
    return (wave * (SPEECH_PEAK / np.abs(wave).max())).astype(np.float64)


# ----------------------------------------------------------------------------- composition

@dataclass
class FixtureAudio:
    """The source signal of one fixture before it is cut into messages."""

    name: str
    audio: np.ndarray  # [N, C] float64 in [-1, 1]
    rate: int
    sample_format: str = "S16LE"
    chunk_frames: int = 400
    flavour: str = T.ROS_DRIVERS
    utterances: List[dict] = field(default_factory=list)
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.audio.shape[1])

    def quantised(self) -> np.ndarray:
        """The samples as the bag carries them, as float [N, C]."""
        if self.sample_format == "F32LE":
            return self.audio.astype(np.float32).astype(np.float64)
        return to_int16(self.audio) / 32768.0


def compose(plan: List[tuple], rate: int, rng: np.random.Generator) -> Tuple[np.ndarray, list]:
    """Render a plan of ``("silence", seconds)`` / ``("speech", text, role)`` to [N] + utterances.

    A low noise floor (:data:`NOISE_FLOOR_RMS`) runs under everything.
    """
    parts: List[np.ndarray] = []
    utterances, pos = [], 0
    for step in plan:
        if step[0] == "silence":
            part = np.zeros(int(round(step[1] * rate)))
        else:
            part = speak(step[1], rate)
            text, answer_id = qa_question(step[1])
            utterances.append({"text": text, "answer_id": answer_id, "role": step[2],
                               "onset_s": pos / rate, "offset_s": (pos + len(part)) / rate})
        parts.append(part)
        pos += len(part)
    wave = np.concatenate(parts)
    return wave + rng.normal(0.0, NOISE_FLOOR_RMS, len(wave)), utterances


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS 1/f noise of ``n`` samples (white noise shaped in the frequency domain)."""
    spec = np.fft.rfft(rng.normal(size=n))
    freqs = np.arange(len(spec), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spec / np.sqrt(freqs), n)
    return noise / np.sqrt(np.mean(noise ** 2))


def _speech_power(wave: np.ndarray, utterances: list, rate: int) -> float:
    segs = [wave[int(u["onset_s"] * rate):int(u["offset_s"] * rate)] for u in utterances]
    return float(np.mean(np.concatenate(segs) ** 2))


Q1, Q2 = "What is your name?", "How many legs does a spider have?"


def _conversation(rng):
    plan = [("silence", 0.5), ("speech", Q1, "question"), ("silence", 2.5),
            ("speech", Q2, "question"), ("silence", 2.0)]
    wave, utts = compose(plan, 16_000, rng)
    return FixtureAudio("conversation", wave[:, None], 16_000, utterances=utts)


def _barge_in(rng):
    plan = [("silence", 0.5), ("speech", "What is the capital of France?", "question"),
            ("silence", 1.2), ("speech", "Tell me something nice.", "barge_in"),
            ("silence", 2.0)]
    wave, utts = compose(plan, 16_000, rng)
    return FixtureAudio("barge_in", wave[:, None], 16_000, utterances=utts)


def _noisy(rng):
    plan = [("silence", 0.5), ("speech", "Can you tell me the weather?", "question"),
            ("silence", 2.0)]
    wave, utts = compose(plan, 16_000, rng)
    noise = 0.5 * pink_noise(len(wave), rng) + 0.5 * rng.normal(size=len(wave))
    noise *= np.sqrt(_speech_power(wave, utts, 16_000) / 10 ** (NOISY_SNR_DB / 10)
                     / np.mean(noise ** 2))
    extra = {"snr_db": NOISY_SNR_DB, "noise": "equal-power pink + white"}
    return FixtureAudio("noisy", np.clip(wave + noise, -1, 1)[:, None], 16_000,
                        utterances=utts, extra=extra)


def _stereo(rng):
    rate = 44_100
    plan = [("silence", 0.5), ("speech", "Do you like music?", "question"), ("silence", 1.5)]
    wave, utts = compose(plan, rate, rng)
    delay = rate // 1000  # right channel: 1 ms later, 0.6x, so channel order matters
    right = 0.6 * np.concatenate([np.zeros(delay), wave[:-delay]])
    extra = {"channel_layout": "left = speech, right = 0.6 x speech delayed 1 ms"}
    return FixtureAudio("stereo_44k_s16", np.stack([wave, right], axis=1), rate,
                        chunk_frames=882, utterances=utts, extra=extra)


def _f32(rng):
    rate = 48_000
    plan = [("silence", 0.5), ("speech", "Where can I find the library?", "question"),
            ("silence", 1.5)]
    wave, utts = compose(plan, rate, rng)
    return FixtureAudio("f32_48k", wave[:, None], rate, sample_format="F32LE",
                        chunk_frames=1200, utterances=utts)


def _mgonzs13(rng):
    plan = [("silence", 0.5), ("speech", "What day comes after Monday?", "question"),
            ("silence", 2.0)]
    wave, utts = compose(plan, 16_000, rng)
    return FixtureAudio("mgonzs13", wave[:, None], 16_000, chunk_frames=MG_CHUNK,
                        flavour=T.MGONZS13, utterances=utts)


_BUILDERS = {"conversation": _conversation, "barge_in": _barge_in, "noisy": _noisy,
             "stereo_44k_s16": _stereo, "f32_48k": _f32, "mgonzs13": _mgonzs13}


def fixture_audio(name: str, seed: int = 0) -> FixtureAudio:
    """The source signal of fixture ``name`` (not ``malformed``), deterministic in ``seed``."""
    if name not in _BUILDERS:
        raise ValueError(f"no plain-audio fixture {name!r}; known: {sorted(_BUILDERS)}")
    return _BUILDERS[name](np.random.default_rng([seed, FIXTURES.index(name)]))


# ----------------------------------------------------------------------------- bag writing

def _stamp(writer: BagWriter, ns: int):
    Time = writer.typestore.types["builtin_interfaces/msg/Time"]
    Header = writer.typestore.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S), frame_id=FRAME_ID)


def rd_info(writer: BagWriter, rate: int, channels: int, sample_format: str,
            coding: str = "wave"):
    """A ros-drivers AudioInfo message."""
    bits = {"S16LE": 16, "F32LE": 32}.get(sample_format, 0)
    return writer.msg(T.AUDIO_INFO, channels=channels, sample_rate=rate,
                      sample_format=sample_format, bitrate=rate * channels * bits,
                      coding_format=coding)


def rd_chunk(writer: BagWriter, raw: bytes, stamp_ns: int):
    """A ros-drivers AudioDataStamped message holding ``raw`` bytes."""
    data = writer.msg(T.AUDIO_DATA, data=np.frombuffer(raw, dtype=np.uint8).copy())
    return writer.msg(T.AUDIO_DATA_STAMPED, header=_stamp(writer, stamp_ns), audio=data)


def mg_chunk(writer: BagWriter, samples: np.ndarray, rate: int, stamp_ns: int):
    """A mgonzs13 AudioStamped message with int16 samples [N, C]."""
    empty = {k: np.zeros(0, dtype=d) for k, d in (
        ("float32_data", np.float32), ("int32_data", np.int32), ("int16_data", np.int16),
        ("int8_data", np.int8), ("uint8_data", np.uint8))}
    empty["int16_data"] = to_int16(samples).reshape(-1)
    info = writer.msg(T.AUDIO_INFO, format=T.MG_FORMAT_I16, channels=samples.shape[1],
                      rate=rate, chunk=len(samples))
    audio = writer.msg(T.AUDIO, audio_data=writer.msg(T.AUDIO_DATA, **empty), info=info)
    return writer.msg(T.AUDIO_STAMPED, header=_stamp(writer, stamp_ns), audio=audio)


def _offset_ns(samples: int, rate: int) -> int:
    return T0_NS + (samples * NS_PER_S) // rate


def write_audio_bag(fix: FixtureAudio, bag: Path, storage: str = "mcap") -> int:
    """Cut ``fix`` into messages and write them; returns the message count."""
    count = 0
    with BagWriter(bag, storage=storage, flavour=fix.flavour,
                   custom_data={"a2llm_fixture": fix.name}) as writer:
        if fix.flavour == T.ROS_DRIVERS:
            writer.write(RD_INFO_TOPIC, rd_info(writer, fix.rate, fix.channels,
                                                fix.sample_format), T0_NS)
            count += 1
        for start in range(0, len(fix.audio), fix.chunk_frames):
            part = fix.audio[start:start + fix.chunk_frames]
            ns = _offset_ns(start, fix.rate)
            if fix.flavour == T.MGONZS13:
                writer.write(MG_AUDIO_TOPIC, mg_chunk(writer, part, fix.rate, ns), ns)
            else:
                raw = encode_pcm(part, fix.sample_format)
                writer.write(RD_AUDIO_TOPIC, rd_chunk(writer, raw, ns), ns)
            count += 1
    return count


def sidecar(fix: FixtureAudio, bag: Path, n_messages: int, faults=()) -> dict:
    """The JSON description of a written fixture."""
    mg = fix.flavour == T.MGONZS13
    return {"name": fix.name, "bag": bag.name, "flavour": fix.flavour, "storage": "mcap",
            "audio_topic": MG_AUDIO_TOPIC if mg else RD_AUDIO_TOPIC,
            "info_topic": None if mg else RD_INFO_TOPIC,
            "sample_rate": fix.rate, "channels": fix.channels,
            "sample_format": "int16" if mg else fix.sample_format,
            "chunk_frames": fix.chunk_frames, "chunk_ms": 1000.0 * fix.chunk_frames / fix.rate,
            "t0_ns": T0_NS, "duration_s": len(fix.audio) / fix.rate,
            "n_messages": n_messages, "utterances": fix.utterances, "faults": list(faults),
            **fix.extra}


def make_fixture(name: str, out_dir: PathLike, seed: int = 0,
                 overwrite: bool = True) -> dict:
    """Write fixture ``name`` to ``out_dir/name`` + ``out_dir/name.json``; returns the sidecar."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bag = out / name
    cached = _cached_sidecar(out, name, seed)
    if cached is not None and not overwrite:
        return cached
    if bag.exists():
        shutil.rmtree(bag)
    if name == "malformed":
        meta = write_malformed_bag(bag, seed)
    else:
        fix = fixture_audio(name, seed)
        meta = sidecar(fix, bag, write_audio_bag(fix, bag))
    meta["seed"] = seed
    meta["fixture_version"] = FIXTURE_VERSION
    meta["bytes"] = sum(p.stat().st_size for p in bag.iterdir())
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1))
    return meta


def _cached_sidecar(out: Path, name: str, seed: int) -> Optional[dict]:
    path = out / f"{name}.json"
    if not (path.exists() and (out / name / "metadata.yaml").exists()):
        return None
    meta = json.loads(path.read_text())
    ok = meta.get("seed") == seed and meta.get("fixture_version") == FIXTURE_VERSION
    return meta if ok else None


def default_cache_dir(seed: int = 0) -> Path:
    """``$A2LLM_FIXTURE_CACHE`` or ``~/.cache/a2llm_ros/fixtures``, plus ``seed<N>``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "a2llm_ros" / "fixtures"
    return Path(root) / f"seed{seed}"


def ensure_fixtures(cache_dir: Optional[PathLike] = None, seed: int = 0,
                    names: Optional[Iterable[str]] = None) -> Path:
    """Make the fixtures in ``cache_dir`` (default :func:`default_cache_dir`) unless they are
    already there for this seed and :data:`FIXTURE_VERSION`; returns the directory."""
    out = Path(cache_dir) if cache_dir is not None else default_cache_dir(seed)
    for name in (DEFAULT_FIXTURES if names is None else names):
        make_fixture(name, out, seed, overwrite=False)
    return out


def make_fixtures(out_dir: PathLike, seed: int = 0,
                  names: Optional[Iterable[str]] = None) -> Dict[str, dict]:
    """Write the fixture set (default :data:`DEFAULT_FIXTURES`); returns name -> sidecar.

    Existing bags of the same names are replaced.  A summary with timings is
    written to ``out_dir/fixtures.json``.
    """
    names = list(DEFAULT_FIXTURES if names is None else names)
    unknown = sorted(set(names) - set(FIXTURES))
    if unknown:
        raise ValueError(f"unknown fixtures {unknown}; known: {list(FIXTURES)}")
    started = time.perf_counter()
    metas = {name: make_fixture(name, out_dir, seed) for name in names}
    summary = {"seed": seed, "seconds": time.perf_counter() - started,
               "bytes": sum(m["bytes"] for m in metas.values()), "fixtures": sorted(metas)}
    (Path(out_dir) / "fixtures.json").write_text(json.dumps(summary, indent=1))
    return metas


# ----------------------------------------------------------------------------- malformed

#: Pause after a mid-stream AudioInfo change, as a capture node reopening its device
#: makes.  Info and audio travel on two topics with no common order: without the pause
#: a loaded machine may deliver audio before the info that describes it.
INFO_SETTLE_S = 0.5


class _Stream:
    """Writes ros-drivers audio with a running clock (ns) on one bag."""

    def __init__(self, writer: BagWriter):
        self.w = writer
        self.now = T0_NS
        self.faults: List[dict] = []

    @property
    def t_s(self) -> float:
        return (self.now - T0_NS) / NS_PER_S

    def info(self, rate: int, fmt: str, coding: str = "wave", settle_s: float = 0.0) -> None:
        """Write an AudioInfo; ``settle_s`` of silence (no audio message) follows it."""
        self.w.write(RD_INFO_TOPIC, rd_info(self.w, rate, 1, fmt, coding), self.now)
        self.now += int(round(settle_s * NS_PER_S))

    def raw(self, raw: bytes, seconds: float, stamp_shift_s: float = 0.0) -> None:
        stamp = self.now + int(round(stamp_shift_s * NS_PER_S))
        self.w.write(RD_AUDIO_TOPIC, rd_chunk(self.w, raw, stamp), self.now)
        self.now += int(round(seconds * NS_PER_S))

    def pcm(self, wave: np.ndarray, rate: int, fmt: str, chunk: int) -> int:
        """Write [N] float audio in chunks; returns the number of messages."""
        for start in range(0, len(wave), chunk):
            part = wave[start:start + chunk, None]
            self.raw(encode_pcm(part, fmt), len(part) / rate)
        return -(-len(wave) // chunk)

    def fault(self, kind: str, t_s: float, messages: int, expected: str, reason: str,
              **extra) -> None:
        self.faults.append({"kind": kind, "t_s": round(t_s, 6), "messages": messages,
                            "expected": expected, "reason": reason, **extra})


def _noise(rng, seconds: float, rate: int) -> np.ndarray:
    return rng.normal(0.0, NOISE_FLOOR_RMS, int(round(seconds * rate)))


def _malformed_head(st: _Stream, rng) -> List[dict]:
    """Audio before any AudioInfo, then the info and one full valid question."""
    rate, chunk = 16_000, 400
    n = st.pcm(_noise(rng, 0.2, rate), rate, "S16LE", chunk)
    st.fault("missing_info_at_start", 0.0, n, "skip", "no_audio_info")
    st.info(rate, "S16LE")
    wave, utts = compose([("silence", 0.3), ("speech", Q1, "question"), ("silence", 1.0)],
                         rate, rng)
    start = st.t_s
    st.pcm(wave, rate, "S16LE", chunk)
    for utt in utts:
        utt["onset_s"] += start
        utt["offset_s"] += start
    return utts


def _malformed_faults(st: _Stream, rng, oversize_bytes: int) -> None:
    rate = 16_000
    st.fault("empty_data", st.t_s, 1, "skip", "empty")
    st.raw(b"", 0.0)
    st.fault("odd_byte_count", st.t_s, 1, "skip", "bad_length")
    st.raw(encode_pcm(_noise(rng, 0.025, rate)[:, None], "S16LE") + b"\x00", 0.025)
    st.fault("header_stamp_backwards", st.t_s, 2, "keep", "stamp_backwards",
             jump_s=-0.5, warnings=1)
    for _ in range(2):
        st.raw(encode_pcm(_noise(rng, 0.025, rate)[:, None], "S16LE"), 0.025, -0.5)
    st.fault("oversize_message", st.t_s, 1, "skip", "oversize", bytes=oversize_bytes)
    st.raw(bytes(oversize_bytes), 0.0)


def _malformed_formats(st: _Stream, rng) -> None:
    rate48, chunk48 = 48_000, 1200
    st.fault("info_change", st.t_s, 1, "keep", "rate 16000 S16LE -> 48000 F32LE",
             new_rate=rate48)
    st.info(rate48, "F32LE", settle_s=INFO_SETTLE_S)
    wave = _noise(rng, 0.3, rate48)
    for index, start in enumerate(range(0, len(wave), chunk48)):
        part = wave[start:start + chunk48].astype(np.float32)
        if index in (3, 6):
            part[10] = np.nan if index == 3 else np.inf
            st.fault("nan" if index == 3 else "inf", st.t_s, 1, "skip", "non_finite")
        st.raw(part.tobytes(), len(part) / rate48)
    st.fault("unsupported_coding_mp3", st.t_s, 5, "skip", "unsupported_coding")
    st.info(16_000, "", coding="mp3", settle_s=INFO_SETTLE_S)
    for _ in range(5):
        st.raw(rng.integers(0, 256, 418, dtype=np.uint8).tobytes(), 0.026)
    st.fault("info_restored", st.t_s, 1, "keep", "back to 16000 S16LE wave")
    st.info(16_000, "S16LE", settle_s=INFO_SETTLE_S)
    st.pcm(_noise(rng, 0.5, 16_000), 16_000, "S16LE", 400)


def _expected_counts(faults: List[dict]) -> Tuple[Dict[str, int], Dict[str, int]]:
    skipped: Dict[str, int] = {}
    warnings: Dict[str, int] = {}
    for fault in faults:
        if fault["expected"] == "skip":
            skipped[fault["reason"]] = skipped.get(fault["reason"], 0) + fault["messages"]
        elif "warnings" in fault:
            warnings[fault["reason"]] = fault["warnings"]
    return skipped, warnings


def write_malformed_bag(bag: PathLike, seed: int = 0,
                        oversize_bytes: int = OVERSIZE_BYTES) -> dict:
    """Write the ``malformed`` fixture (faults listed in the returned sidecar)."""
    rng = np.random.default_rng([seed, FIXTURES.index("malformed")])
    bag = Path(bag)
    with BagWriter(bag, custom_data={"a2llm_fixture": "malformed"}) as writer:
        st = _Stream(writer)
        utts = _malformed_head(st, rng)
        _malformed_faults(st, rng, oversize_bytes)
        _malformed_formats(st, rng)
    skipped, warnings = _expected_counts(st.faults)
    return {"name": "malformed", "bag": bag.name, "flavour": T.ROS_DRIVERS, "storage": "mcap",
            "audio_topic": RD_AUDIO_TOPIC, "info_topic": RD_INFO_TOPIC,
            "sample_rate": 16_000, "channels": 1, "sample_format": "S16LE",
            "chunk_frames": 400, "chunk_ms": 25.0, "t0_ns": T0_NS,
            "duration_s": st.t_s, "utterances": utts, "faults": st.faults,
            "expected_skipped": skipped, "expected_warnings": warnings}
