"""End-pointing: turn a 16 kHz stream into user utterances.

:class:`TurnDetector` runs a :class:`~.vad.StreamingVad` and a small state
machine over its 32 ms decisions:

``silence`` -> (voiced chunk) -> ``candidate`` -> (voiced for ``min_speech_ms``)
-> ``speech`` [emit :class:`SpeechStart`] -> (unvoiced for ``min_silence_ms``)
-> ``silence`` [emit :class:`UtteranceEnd`].

With ``speculate_after_ms`` > 0, a pause inside speech that lasts
``max(speculate_after_ms, speech_pad_ms)`` emits :class:`PauseStart` with the
segment an :class:`UtteranceEnd` would carry if the pause went on to
``min_silence_ms`` (the same samples: the padding after the last voiced chunk
is already there); a voiced chunk after it emits :class:`SpeechResumed`.  The
session may start the answer on the first and must drop it on the second.

When the session takes a pause for the end itself (:meth:`TurnDetector.end_utterance`,
the end-of-turn head), the utterance's audio is kept until ``min_silence_ms`` of
silence would have ended it anyway.  If the user speaks again before that, the
session may call :meth:`TurnDetector.rejoin` (on barge-in): the new speech
continues the same utterance, so its segment holds the whole question.

A candidate interrupted by an unvoiced chunk is a blip and is forgotten, unless
``onset_bridge_ms`` > 0 and the next candidate starts within that much silence of it:
the onset then stays the blip's (chained over several blips).  Once
in speech, chunks count as voiced down to ``threshold - hysteresis``.  An
utterance reaching ``max_utterance_s`` is force-ended (``forced=True``).  The
returned segment runs from ``speech_pad_ms`` before the onset (pre-roll) to
``speech_pad_ms`` after the last voiced chunk.  Every decision is also returned
as an :class:`Activity` event (used for nods and barge-in).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple, Union

import numpy as np

from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.conversation.vad import CHUNK_MS, StreamingVad, VadConfig, VadFrame

__all__ = ["SpeechStart", "UtteranceEnd", "PauseStart", "SpeechResumed", "Activity",
           "TurnEvent", "TurnDetector"]


@dataclasses.dataclass
class SpeechStart:
    """Confirmed speech; ``sample`` is the onset (first voiced chunk)."""

    sample: int


@dataclasses.dataclass
class UtteranceEnd:
    """A finished utterance: ``segment`` [n] float32 covers [start_sample, end_sample)."""

    segment: np.ndarray
    start_sample: int
    end_sample: int
    forced: bool = False


@dataclasses.dataclass
class PauseStart:
    """A pause long enough to speculate on: ``segment`` is the utterance as it ends if
    the pause lasts (the :class:`UtteranceEnd` it would become, same samples)."""

    segment: np.ndarray
    start_sample: int
    end_sample: int


@dataclasses.dataclass
class SpeechResumed:
    """Voiced audio after a :class:`PauseStart`: the utterance goes on."""

    sample: int


@dataclasses.dataclass
class Activity:
    """One VAD decision (every 32 ms)."""

    sample: int
    prob: float
    voiced: bool


TurnEvent = Union[SpeechStart, UtteranceEnd, PauseStart, SpeechResumed, Activity]


def _ms_to_samples(ms: float) -> int:
    return int(round(ms * SAMPLE_RATE / 1000.0))


class TurnDetector:
    """Streaming end-pointer (see module docstring); feed contiguous audio."""

    def __init__(self, config: Optional[VadConfig] = None, vad: Optional[StreamingVad] = None):
        self.config = config or VadConfig()
        self.vad = vad if vad is not None else StreamingVad(self.config)
        self._pad = _ms_to_samples(self.config.speech_pad_ms)
        self._bridge = _ms_to_samples(self.config.onset_bridge_ms)
        #: Silence (ms) after which a pause is speculated on (0: never).
        self._speculate_ms = (max(self.config.speculate_after_ms, self.config.speech_pad_ms)
                              if self.config.speculate_after_ms > 0 else 0.0)
        self.reset()

    def reset(self, start_sample: int = 0) -> None:
        """Forget audio and state; the clock restarts at ``start_sample``."""
        self.vad.reset(start_sample)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = int(start_sample)
        self.state = "silence"
        self._onset = 0          # first voiced sample of the candidate/utterance
        self._voiced_ms = 0.0    # voiced time of the candidate
        self._silence_ms = 0.0   # unvoiced run inside speech
        self._last_voiced_end = 0
        #: (onset, end sample) of the last blip, for ``onset_bridge_ms``.
        self._blip: Optional[Tuple[int, int]] = None
        self._paused = False     # a PauseStart was emitted for the current pause
        #: Onset of an utterance ended by the session at a pause (``end_utterance``)
        #: that speech may still continue (``rejoin``); None once the pause has lasted
        #: ``min_silence_ms``.
        self._rejoin_onset: Optional[int] = None

    @property
    def in_speech(self) -> bool:
        return self.state == "speech"

    @property
    def buffered_samples(self) -> int:
        return len(self._buf)

    def process(self, samples: np.ndarray) -> List[TurnEvent]:
        """Feed ``[n]`` 16 kHz float32 samples; return events in time order."""
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.float32).reshape(-1)])
        events: List[TurnEvent] = []
        for frame in self.vad.process(samples):
            self._on_frame(frame, events)
        self._trim()
        return events

    def _voiced(self, prob: float) -> bool:
        cfg = self.config
        limit = cfg.threshold - cfg.hysteresis if self.state == "speech" else cfg.threshold
        return prob >= limit

    def _on_frame(self, frame: VadFrame, events: List[TurnEvent]) -> None:
        voiced = self._voiced(frame.prob)
        events.append(Activity(frame.start_sample, frame.prob, voiced))
        if self.state == "speech":
            self._in_speech(frame, voiced, events)
            return
        if self._rejoin_onset is not None and self.state == "silence" and \
                frame.end_sample - self._last_voiced_end >= _ms_to_samples(
                    self.config.min_silence_ms):
            self._rejoin_onset = None  # the silence end-pointer would have ended it here
        if self._blip is not None and frame.start_sample - self._blip[1] > self._bridge:
            self._blip = None  # too long ago to belong to the next speech
        if voiced:
            if self.state == "silence":
                self.state, self._onset, self._voiced_ms = "candidate", frame.start_sample, 0.0
                if self._blip is not None:
                    self._onset = self._blip[0]  # a short first word the VAD lost
            self._voiced_ms += CHUNK_MS
            if self._voiced_ms >= self.config.min_speech_ms:
                self.state, self._silence_ms, self._blip = "speech", 0.0, None
                self._last_voiced_end = frame.end_sample
                events.append(SpeechStart(self._onset))
        else:
            if self.state == "candidate" and self._bridge:
                self._blip = (self._onset, frame.start_sample)
            self.state = "silence"  # blip (or nothing) forgotten

    def _in_speech(self, frame: VadFrame, voiced: bool, events: List[TurnEvent]) -> None:
        cfg = self.config
        if voiced:
            self._silence_ms, self._last_voiced_end = 0.0, frame.end_sample
            if self._paused:
                self._paused = False
                events.append(SpeechResumed(frame.start_sample))
        else:
            self._silence_ms += CHUNK_MS
        if self._silence_ms >= cfg.min_silence_ms:
            events.append(self._cut(self._last_voiced_end + self._pad, forced=False))
        elif self._speculate_ms and not self._paused and self._silence_ms >= self._speculate_ms:
            self._paused = True
            segment, start, end = self._segment(self._last_voiced_end + self._pad)
            events.append(PauseStart(segment, start, end))
        elif frame.end_sample - self._onset >= cfg.max_utterance_s * SAMPLE_RATE:
            events.append(self._cut(frame.end_sample, forced=True))

    def end_utterance(self) -> None:
        """The session took the current pause for the end (no :class:`UtteranceEnd`
        follows); voiced audio after it starts a new utterance, unless :meth:`rejoin`."""
        if self.state == "speech":
            self.state, self._paused = "silence", False
            self._rejoin_onset = self._onset

    @property
    def can_rejoin(self) -> bool:
        """Speech after an :meth:`end_utterance` pause shorter than ``min_silence_ms``."""
        return self._rejoin_onset is not None and self.state in ("candidate", "speech")

    def rejoin(self) -> bool:
        """Make the speech under way continue the utterance ended by :meth:`end_utterance`
        (its segment then starts at that utterance's pre-roll).  False when it cannot
        (:attr:`can_rejoin`)."""
        if not self.can_rejoin:
            return False
        self._onset, self._rejoin_onset = self._rejoin_onset, None
        return True

    def _segment(self, end: int):
        """(samples [n], start, end) of the utterance from its pre-roll up to ``end``."""
        start = max(self._onset - self._pad, self._buf_start)
        end = min(end, self._buf_start + len(self._buf))
        return self._buf[start - self._buf_start:end - self._buf_start].copy(), start, end

    def _cut(self, end: int, forced: bool) -> UtteranceEnd:
        segment, start, end = self._segment(end)
        self.state, self._paused, self._rejoin_onset = "silence", False, None
        return UtteranceEnd(segment, start, end, forced)

    def _trim(self) -> None:
        # Keep pre-roll + the candidate in silence/candidate; everything in speech.
        if self._rejoin_onset is not None:
            keep_from = self._rejoin_onset - self._pad
        elif self.state in ("speech", "candidate"):
            keep_from = self._onset - self._pad
        else:
            keep_from = self.vad.next_sample - self._pad
            if self._blip is not None:  # it may still start the next utterance
                keep_from = min(keep_from, self._blip[0] - self._pad)
        drop = max(0, keep_from - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
