"""An external judge of intelligibility: CMU PocketSphinx (its wheel ships an English model).

Two ways of listening to a generated answer:

* :meth:`SphinxJudge.identify` — a JSGF grammar whose only sentences are the
  possible answers; the decoder must pick one of them (answer identification).
* :meth:`SphinxJudge.transcribe` — free vocabulary with the bundled US-English
  language model; :func:`word_errors` gives the WER against a reference text.

Every wave (generated and reference alike) is padded with 0.3 s of silence on
both sides and gets a fixed, seeded dither at -60 dBFS before decoding:
PocketSphinx's energy and cepstral-mean features break down on exact digital
silence (measured on espeak-ng answers: grammar identification 7/16 without,
16/16 with; free WER 0.83 -> 0.40).

The decoder's cepstral mean normalisation (CMN) adapts from one utterance to
the next, so a verdict would depend on what was heard before it (measured:
the same reference answer decoded first, then twice more, gave "the bees
about three o'clock", then "it is about three o'clock" twice).  Every decode
therefore starts from the model's initial CMN, runs one pass over the
utterance to estimate its own mean, and decodes again from that mean: a
verdict is a function of the audio alone.

Words missing from the bundled dictionary are left out of the grammar
sentences (they are listed in :attr:`SphinxJudge.oov`).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from rapidfuzz.distance import Levenshtein

from a2llm_ros.constants import SAMPLE_RATE

GRAMMAR_SEARCH = "answers"
PAD_SECONDS = 0.3
DITHER_RMS = 1e-3  # -60 dBFS
FREE_SEARCH = "_default"


def normalize_words(text: str) -> List[str]:
    """Lower-case words without punctuation (apostrophes kept: ``o'clock``)."""
    return re.findall(r"[a-z']+", text.lower().replace("’", "'"))


def word_errors(reference: str, hypothesis: str) -> Tuple[int, int]:
    """(edit distance in words, reference word count)."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    return Levenshtein.distance(ref, hyp), len(ref)


def char_error_rate(reference: str, hypothesis: str) -> float:
    """Character edit distance / reference length, on lower-cased letters and spaces."""
    ref = " ".join(normalize_words(reference))
    hyp = " ".join(normalize_words(hypothesis))
    return Levenshtein.distance(ref, hyp) / max(len(ref), 1)


def nearest_answer(text: str, answers: Dict[int, str]) -> Tuple[int, float]:
    """(answer id with the lowest character error rate, that rate)."""
    scored = [(char_error_rate(a, text), aid) for aid, a in answers.items()]
    rate, aid = min(scored)
    return aid, rate


def prepare_wave(wave: np.ndarray, seed: int = 0) -> np.ndarray:
    """Silence padding + seeded low-level dither (see module docstring)."""
    wave = np.nan_to_num(np.asarray(wave, dtype=np.float32).reshape(-1))
    wave = np.pad(wave, int(PAD_SECONDS * SAMPLE_RATE))
    noise = np.random.default_rng(seed).standard_normal(len(wave)).astype(np.float32)
    return wave + np.float32(DITHER_RMS) * noise


def _pcm16(wave: np.ndarray) -> bytes:
    wave = prepare_wave(wave)
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class SphinxJudge:
    """PocketSphinx decoder with a grammar of ``answers`` and free-vocabulary decoding."""

    def __init__(self, answers: Optional[Dict[int, str]] = None):
        from pocketsphinx import Decoder
        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        self.answers = dict(answers or {})
        self.oov: List[str] = []
        self._sentence_to_id: Dict[str, int] = {}
        self._cmn0 = self.decoder.get_cmn(False)
        if self.answers:
            self.decoder.add_jsgf_string(GRAMMAR_SEARCH, self._grammar())

    def _known(self, words: Sequence[str]) -> List[str]:
        out = []
        for w in words:
            if self.decoder.lookup_word(w) is None:
                if w not in self.oov:
                    self.oov.append(w)
            else:
                out.append(w)
        return out

    def _grammar(self) -> str:
        alternatives = []
        for aid, text in sorted(self.answers.items()):
            words = self._known(normalize_words(text))
            if not words:
                continue
            sentence = " ".join(words)
            self._sentence_to_id.setdefault(sentence, aid)
            alternatives.append(sentence)
        if not alternatives:
            raise ValueError("no answer has a word in the PocketSphinx dictionary")
        return ("#JSGF V1.0;\ngrammar answers;\npublic <answer> = "
                + " | ".join(f"( {s} )" for s in alternatives) + " ;\n")

    def _decode(self, wave: np.ndarray, search: str) -> str:
        """Decode ``wave`` independently of earlier calls (see the module docstring)."""
        pcm = _pcm16(wave)
        self.decoder.activate_search(search)
        self.decoder.set_cmn(self._cmn0)
        for _ in range(2):  # pass 1 estimates this utterance's CMN, pass 2 decodes
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, no_search=False, full_utt=True)
            self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def transcribe(self, wave: np.ndarray) -> str:
        """Free-vocabulary transcript of a 16 kHz float wave."""
        return self._decode(wave, FREE_SEARCH)

    def identify(self, wave: np.ndarray) -> Tuple[Optional[int], str]:
        """(answer id the grammar decoder heard, its sentence); ``None`` when nothing."""
        if not self.answers:
            raise ValueError("SphinxJudge.identify needs the answer set")
        heard = self._decode(wave, GRAMMAR_SEARCH)
        return self._sentence_to_id.get(" ".join(normalize_words(heard))), heard
