"""Speech synthesis with Debian's espeak-ng, with per-phoneme timings.

Uses ``libespeak-ng.so.1`` through :mod:`ctypes` in ``AUDIO_OUTPUT_SYNCHRONOUS``
mode with ``espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_PHONEME_IPA``:
the synth callback receives the 16-bit samples and the ``espeakEVENT_PHONEME``
events, each carrying its sample position, so phoneme start/end times are
exact to the sample.  Phoneme names are IPA (``"ɑː"``, ``"eɪ"``, ``"m"``);
pauses are reported as ``"_"``.  Audio is resampled from espeak's native
22050 Hz to 16 kHz float32 (polyphase, deterministic).

Voices (``VoiceSpec``: espeak voice name with ``+variant``, rate in words per
minute, pitch and pitch range 0..100):

* :data:`ROBOT_VOICE` ``robot`` speaks every answer (the model's own voice).
* :data:`QUESTION_VOICES` speak the questions of train/val.
* :data:`HELD_OUT_VOICE` ``heldout_029_f4`` (Caribbean English, female variant
  f4) speaks only the questions of the test split.

espeak-ng keeps hidden synthesis state between calls (the same text spoken
twice in one process gives slightly different samples), so every synthesis
runs in a forked child of a process that has only initialised the library:
each call starts from the same pristine state and results are reproducible
(byte-identical) whatever was spoken before.  Calls are serialised with a
lock; use processes for parallel synthesis.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
import threading
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from scipy.signal import resample_poly

from a2llm_ros.constants import SAMPLE_RATE

AUDIO_OUTPUT_SYNCHRONOUS = 2
INIT_PHONEME_EVENTS = 0x0001
INIT_PHONEME_IPA = 0x0002
INIT_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
POS_CHARACTER = 1
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_PHONEME = 7
PARAM_RATE = 1
PARAM_PITCH = 3
PARAM_RANGE = 4
EE_OK = 0
PAUSE = "_"
LIB_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so")


@dataclass(frozen=True)
class VoiceSpec:
    """One speaker: espeak voice name (with ``+variant``) and prosody settings."""

    id: str
    voice: str
    rate: int = 170
    pitch: int = 50
    pitch_range: int = 50


ROBOT_VOICE = VoiceSpec("robot", "en-us+m3", rate=160, pitch=45, pitch_range=40)
QUESTION_VOICES = (
    VoiceSpec("us_m", "en-us", rate=170, pitch=45, pitch_range=55),
    VoiceSpec("gb_f3", "en+f3", rate=155, pitch=60, pitch_range=60),
    VoiceSpec("rp_m1", "en-gb-x-rp+m1", rate=175, pitch=40, pitch_range=45),
    VoiceSpec("us_f2", "en-us+f2", rate=185, pitch=55, pitch_range=70),
    VoiceSpec("scot_m7", "en-gb-scotland+m7", rate=160, pitch=50, pitch_range=50),
    VoiceSpec("nyc_f5", "en-us-nyc+f5", rate=165, pitch=65, pitch_range=65),
    VoiceSpec("lanc_f1", "en-gb-x-gbclan+f1", rate=172, pitch=62, pitch_range=55),
    VoiceSpec("wmid_m2", "en-gb-x-gbcwmd+m2", rate=158, pitch=42, pitch_range=50),
    VoiceSpec("us_m4", "en-us+m4", rate=150, pitch=35, pitch_range=45),
    VoiceSpec("gb_m5", "en+m5", rate=180, pitch=48, pitch_range=60),
    VoiceSpec("scot_f2", "en-gb-scotland+f2", rate=166, pitch=62, pitch_range=55),
    VoiceSpec("nyc_m6", "en-us-nyc+m6", rate=172, pitch=38, pitch_range=50),
    VoiceSpec("rp_f5", "en-gb-x-rp+f5", rate=160, pitch=68, pitch_range=70),
    VoiceSpec("lanc_m8", "en-gb-x-gbclan+m8", rate=176, pitch=44, pitch_range=40),
    VoiceSpec("us_aunty", "en-us+aunty", rate=162, pitch=60, pitch_range=65),
    VoiceSpec("wmid_klatt2", "en-gb-x-gbcwmd+klatt2", rate=168, pitch=52, pitch_range=55),
)
HELD_OUT_VOICE = VoiceSpec("heldout_029_f4", "en-029+f4", rate=168, pitch=58, pitch_range=60)


class EspeakUnavailable(RuntimeError):
    """libespeak-ng cannot be loaded or initialised."""


@dataclass
class Synthesis:
    """Result of :func:`synthesize`: 16 kHz float32 audio and phoneme timings."""

    audio: np.ndarray
    phonemes: List[Tuple[str, float, float]]
    words: List[Tuple[int, float]]
    sample_rate: int = SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return len(self.audio) / float(self.sample_rate)


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


class _Engine:
    """Process-wide espeak-ng handle collecting audio and events of one call."""

    def __init__(self):
        self.lib = _load_library()
        self.native_rate = self.lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
            INIT_PHONEME_EVENTS | INIT_PHONEME_IPA | INIT_DONT_EXIT)
        if self.native_rate <= 0:
            raise EspeakUnavailable(f"espeak_Initialize failed ({self.native_rate})")
        self.chunks: List[np.ndarray] = []
        self.events: List[Tuple[int, int, str]] = []
        self._cb = _CALLBACK(self._on_audio)  # keep a reference for C
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                                          ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                          ctypes.c_void_p, ctypes.c_void_p]

    def _on_audio(self, wav, n_samples, events) -> int:
        if n_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == EVENT_PHONEME:
                name = bytes(ev.id.string).split(b"\0")[0].decode("utf-8", "replace")
                self.events.append((EVENT_PHONEME, ev.sample, name or PAUSE))
            elif ev.type == EVENT_WORD:
                self.events.append((EVENT_WORD, ev.sample, str(ev.text_position)))
            i += 1
        return 0

    def set_voice(self, voice: VoiceSpec) -> None:
        if self.lib.espeak_SetVoiceByName(voice.voice.encode("utf-8")) != EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice.voice!r}")
        for param, value in ((PARAM_RATE, voice.rate), (PARAM_PITCH, voice.pitch),
                             (PARAM_RANGE, voice.pitch_range)):
            self.lib.espeak_SetParameter(param, int(value), 0)

    def run(self, text: str):
        self.chunks, self.events = [], []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        err = self.lib.espeak_Synth(buf, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8,
                                    None, None)
        if err != EE_OK:
            raise RuntimeError(f"espeak_Synth failed with code {err}")
        pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return pcm, list(self.events)


def _load_library():
    names = list(LIB_NAMES)
    found = ctypes.util.find_library("espeak-ng")
    if found:
        names.append(found)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise EspeakUnavailable("libespeak-ng not found (apt install libespeak-ng1)")


_LOCK = threading.Lock()
_ENGINE = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def available() -> bool:
    """True if libespeak-ng can be loaded and initialised here."""
    try:
        with _LOCK:
            _engine()
        return True
    except EspeakUnavailable:
        return False


def synthesize(text: str, voice: VoiceSpec = ROBOT_VOICE) -> Synthesis:
    """Speak ``text`` with ``voice``: 16 kHz float32 audio + ``(phoneme, start_s, end_s)``."""
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    with _LOCK:
        engine = _engine()
        pcm, events = _run_in_child(engine, voice, text)
        native = engine.native_rate
    audio = _resample(pcm.astype(np.float32) / 32768.0, native)
    seconds = len(audio) / float(SAMPLE_RATE)
    return Synthesis(audio=audio, phonemes=_phoneme_spans(events, native, seconds),
                     words=[(int(pos), round(s / native, 5)) for kind, s, pos in events
                            if kind == EVENT_WORD])


_HEADER = struct.Struct("<iq")  # status, JSON length


def _run_in_child(engine: _Engine, voice: VoiceSpec, text: str):
    """Synthesise in a forked child so the parent's espeak state never changes."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: synthesise, send back, never return
        status = 1
        try:
            os.close(read_fd)
            status = _child_synth(engine, voice, text, write_fd)
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return _decode_child(data, voice)


def _child_synth(engine: _Engine, voice: VoiceSpec, text: str, fd: int) -> int:
    try:
        engine.set_voice(voice)
        pcm, events = engine.run(text)
        body = json.dumps(events).encode("utf-8")
        payload = _HEADER.pack(0, len(body)) + body + pcm.astype("<i2").tobytes()
    except Exception as exc:  # report the error text to the parent
        body = f"{type(exc).__name__}: {exc}".encode("utf-8")
        payload = _HEADER.pack(1, len(body)) + body
    with os.fdopen(fd, "wb") as pipe:
        pipe.write(payload)
    return 0


def _decode_child(data: bytes, voice: VoiceSpec):
    if len(data) < _HEADER.size:
        raise RuntimeError(f"espeak-ng child died while speaking with {voice.voice!r}")
    status, n_body = _HEADER.unpack_from(data)
    body = data[_HEADER.size:_HEADER.size + n_body].decode("utf-8")
    if status != 0:
        raise (ValueError if "no voice" in body else RuntimeError)(body)
    pcm = np.frombuffer(data[_HEADER.size + n_body:], dtype="<i2")
    return pcm, [tuple(e) for e in json.loads(body)]


def _resample(audio: np.ndarray, native_rate: int) -> np.ndarray:
    if native_rate == SAMPLE_RATE:
        return audio.astype(np.float32)
    g = np.gcd(int(native_rate), SAMPLE_RATE)
    out = resample_poly(audio, SAMPLE_RATE // g, int(native_rate) // g)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _phoneme_spans(events, native_rate: int, seconds: float) -> List[Tuple[str, float, float]]:
    """Phoneme events -> (name, start, end); a phoneme ends where the next starts."""
    starts = [(name, min(sample / float(native_rate), seconds))
              for kind, sample, name in events if kind == EVENT_PHONEME]
    spans = []
    for i, (name, start) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else seconds
        if end > start:
            spans.append((name, round(start, 5), round(end, 5)))
    return spans
