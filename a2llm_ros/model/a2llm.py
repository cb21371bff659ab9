"""The full A²-LLM: audio encoder + audio LLM + motion connector + tokenizers + codec.

Training (:meth:`A2LLM.forward_train`) on a :class:`TrainBatch` made by
:meth:`A2LLM.collate`:

* LM loss: next-token cross-entropy over the answer part of
  ``<bos> <audio_in_start> audio <audio_in_end> <answer> answer...`` (see
  :mod:`a2llm_ros.model.audio_llm`), reported separately for text targets
  (text ids and ``<text_end>``) and speech targets (speech ids and
  ``<speech_end>``), over the full vocabulary.
* Motion loss: the connector's cross-entropy on the answer's motion codes.
  Its queries are the LLM last hidden states at the INPUT positions of the
  answer's speech tokens (the state produced by feeding each speech token),
  five per motion segment; ``n_segments = min(n_speech // 5, n_motion_codes)``
  and the rest of either side is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from a2llm_ros.audio.features import log_mel_spectrogram, mel_filterbank
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.constants import SPEECH_TOKENS_PER_SEGMENT
from a2llm_ros.flame.layout import FlameLayout
from a2llm_ros.model.audio_encoder import AudioEncoder, n_positions
from a2llm_ros.model.audio_llm import (IGNORE_INDEX, AnswerSequence, VocabLayout,
                                       build_answer_sequence, build_llm, llm_hidden,
                                       llm_logits)
from a2llm_ros.model.connector import MotionConnector
from a2llm_ros.model.motion_tokenizer import MotionTokenizer
from a2llm_ros.model.speech_codec import make_codec
from a2llm_ros.model.text_tokenizer import CharTokenizer, HFTokenizer, TextTokenizer

PROMPT_PREFIX = ("<bos>", "<audio_in_start>")
PROMPT_SUFFIX = ("<audio_in_end>", "<answer>")
#: TrainBatch.task values and the special token that follows ``<audio_in_end>``.
TASK_ANSWER, TASK_TRANSCRIBE = 0, 1
TASK_TOKENS = {TASK_ANSWER: "<answer>", TASK_TRANSCRIBE: "<transcribe>"}


@dataclass
class TrainBatch:
    """A padded training batch (build with :meth:`A2LLM.collate`).

    ``mel`` [B, M, T] log-mel of the questions (zero-padded), ``mel_lengths``
    [B]; ``answer_ids`` [B, La] interleaved answer ids (padded with
    ``<pad>``), ``answer_is_text`` / ``answer_is_speech`` [B, La] bool kinds,
    ``answer_lengths`` [B]; ``motion_codes`` [B, S, L] (zero-padded),
    ``motion_lengths`` [B] segments used per sample; ``task`` [B] 0 = answer
    (after ``<answer>``), 1 = transcribe (the "answer" is the question's text
    after ``<transcribe>``; auxiliary ASR loss ``asr_ce``).
    """

    mel: torch.Tensor
    mel_lengths: torch.Tensor
    answer_ids: torch.Tensor
    answer_is_text: torch.Tensor
    answer_is_speech: torch.Tensor
    answer_lengths: torch.Tensor
    motion_codes: torch.Tensor
    motion_lengths: torch.Tensor
    task: Optional[torch.Tensor] = None

    def to(self, device) -> "TrainBatch":
        return TrainBatch(**{f.name: None if getattr(self, f.name) is None
                             else getattr(self, f.name).to(device) for f in fields(self)})


def make_text_tokenizer(cfg: A2LLMConfig, base_dir: Optional[str] = None) -> TextTokenizer:
    """Default text tokenizer for ``cfg``: printable ASCII chars, or the HF backbone's."""
    if cfg.text.kind == "char":
        return CharTokenizer.printable_ascii()
    from a2llm_ros.model.audio_llm import resolve_hf_path
    return HFTokenizer(resolve_hf_path(cfg.llm.hf_path, base_dir))


class A2LLM(nn.Module):
    """Audio-in, text + speech + FLAME-motion-out model."""

    def __init__(self, cfg: A2LLMConfig, text_tokenizer: Optional[TextTokenizer] = None,
                 base_dir: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.layout = FlameLayout(n_expr=cfg.motion.n_expr)
        self.text_tokenizer = text_tokenizer or make_text_tokenizer(cfg, base_dir)
        if self.text_tokenizer.vocab_size > cfg.llm.text_vocab_size:
            raise ValueError(f"text tokenizer has {self.text_tokenizer.vocab_size} ids > "
                             f"llm.text_vocab_size {cfg.llm.text_vocab_size}")
        self.vocab = VocabLayout(cfg.llm.text_vocab_size, cfg.codec.n_codes)
        self.audio_encoder = AudioEncoder(cfg.audio)
        self.llm = build_llm(cfg.llm, self.vocab, base_dir)
        self.connector = MotionConnector(cfg.connector)
        self.motion_tokenizer = MotionTokenizer(cfg.motion)
        self.speech_tokenizer, self.token2wav = make_codec(cfg.codec)
        self.register_buffer("mel_filters", mel_filterbank(cfg.mel), persistent=False)

    # -- helpers -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mel_filters.device

    def n_params(self) -> int:
        """Trainable parameters of all neural parts."""
        return sum(p.numel() for p in self.parameters())

    def log_mel(self, wave) -> torch.Tensor:
        """Question wave [N] float32 16 kHz -> log-mel [M, N // 160]."""
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        return log_mel_spectrogram(wave, self.cfg.mel, self.mel_filters.cpu())

    def embed_ids(self, ids) -> torch.Tensor:
        """Token ids [..] -> LLM input embeddings [.., H]."""
        emb = self.llm.get_input_embeddings()
        return emb(torch.as_tensor(ids, device=emb.weight.device))

    def prompt_embeds(self, audio_embeds, task: int = TASK_ANSWER) -> torch.Tensor:
        """Audio embeddings [B, A, H] -> prompt embeddings [B, A + 4, H]."""
        B = audio_embeds.shape[0]
        pre = self.embed_ids([self.vocab.special(t) for t in PROMPT_PREFIX])  # [2, H]
        suffix = (PROMPT_SUFFIX[0], TASK_TOKENS[int(task)])
        suf = self.embed_ids([self.vocab.special(t) for t in suffix])  # [2, H]
        audio_embeds = audio_embeds.to(pre.dtype)
        return torch.cat([pre.expand(B, -1, -1), audio_embeds, suf.expand(B, -1, -1)], dim=1)

    # -- data --------------------------------------------------------------------------
    def collate(self, question_waves: Sequence, answer_texts: Sequence[str],
                answer_speech_tokens: Sequence, answer_motion_codes: Sequence,
                tasks: Optional[Sequence[int]] = None) -> TrainBatch:
        """Lists of (wave [N], text, speech codes [n], motion codes [S, L]) -> TrainBatch.

        ``tasks[i] == TASK_TRANSCRIBE`` makes sample i a transcription target:
        its text (the question's) is the whole target, speech and motion are unused.
        """
        tasks = [TASK_ANSWER] * len(question_waves) if tasks is None else list(tasks)
        mels = [self.log_mel(w) for w in question_waves]  # [M, T_i]
        seqs = [self._target_sequence(t, s, task)
                for t, s, task in zip(answer_texts, answer_speech_tokens, tasks)]
        answer_speech_tokens = [s if task == TASK_ANSWER else []
                                for s, task in zip(answer_speech_tokens, tasks)]
        codes = [torch.as_tensor(np.asarray(c), dtype=torch.long).reshape(
            -1, self.cfg.motion.n_levels) for c in answer_motion_codes]
        n_seg = [min(len(np.asarray(s)) // SPEECH_TOKENS_PER_SEGMENT, c.shape[0])
                 for s, c in zip(answer_speech_tokens, codes)]
        B, Tm, La = len(mels), max(m.shape[1] for m in mels), max(len(s.ids) for s in seqs)
        S, L = max(max(n_seg), 1), self.cfg.motion.n_levels
        batch = TrainBatch(
            mel=torch.zeros(B, mels[0].shape[0], Tm), mel_lengths=torch.zeros(B, dtype=torch.long),
            answer_ids=torch.full((B, La), self.vocab.special("<pad>"), dtype=torch.long),
            answer_is_text=torch.zeros(B, La, dtype=torch.bool),
            answer_is_speech=torch.zeros(B, La, dtype=torch.bool),
            answer_lengths=torch.zeros(B, dtype=torch.long),
            motion_codes=torch.zeros(B, S, L, dtype=torch.long),
            motion_lengths=torch.tensor(n_seg, dtype=torch.long),
            task=torch.tensor(tasks, dtype=torch.long))
        for i, (m, s, c) in enumerate(zip(mels, seqs, codes)):
            batch.mel[i, :, :m.shape[1]] = m
            batch.mel_lengths[i] = m.shape[1]
            n = len(s.ids)
            batch.answer_ids[i, :n] = torch.tensor(s.ids)
            batch.answer_is_text[i, :n] = torch.tensor(s.is_text)
            batch.answer_is_speech[i, :n] = torch.tensor(s.is_speech_token)
            batch.answer_lengths[i] = n
            batch.motion_codes[i, :n_seg[i]] = c[:n_seg[i]]
        return batch

    def _target_sequence(self, text: str, speech, task: int):
        ids = self.text_tokenizer.encode(text)
        if task == TASK_ANSWER:
            return build_answer_sequence(ids, list(np.asarray(speech)), self.vocab,
                                         self.cfg.interleave)
        ids = list(ids) + [self.vocab.special("<text_end>")]
        n = len(ids)
        return AnswerSequence(ids=ids, is_text=[True] * n, is_speech_token=[False] * n)

    def collate_samples(self, samples: Sequence,
                        tasks: Optional[Sequence[int]] = None) -> TrainBatch:
        """Same as :meth:`collate` for a list of (wave, text, speech codes, motion codes)."""
        waves, texts, speech, motion = zip(*samples)
        return self.collate(waves, texts, speech, motion, tasks)

    # -- training ----------------------------------------------------------------------
    def _assemble(self, batch: TrainBatch):
        """Full input embeddings [B, T, H], attention mask [B, T] and answer offsets [B]."""
        audio = self.audio_encoder(batch.mel, batch.mel_lengths)  # [B, A, H]
        n_audio = [n_positions(int(n)) for n in batch.mel_lengths]
        answer = self.embed_ids(batch.answer_ids)  # [B, La, H]
        rows, offsets = [], []
        tasks = batch.task if batch.task is not None else [TASK_ANSWER] * audio.shape[0]
        for i in range(audio.shape[0]):
            prompt = self.prompt_embeds(audio[i:i + 1, :n_audio[i]], int(tasks[i]))[0]  # [P, H]
            offsets.append(prompt.shape[0])
            rows.append(torch.cat([prompt, answer[i, :int(batch.answer_lengths[i])]]))
        T = max(r.shape[0] for r in rows)
        embeds = answer.new_zeros(len(rows), T, answer.shape[-1])
        mask = torch.zeros(len(rows), T, dtype=torch.long, device=answer.device)
        for i, r in enumerate(rows):
            embeds[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        return embeds, mask, offsets

    def forward_train(self, batch: TrainBatch, motion: bool = True,
                      motion_weight: float = 1.0,
                      asr_weight: float = 1.0) -> Dict[str, torch.Tensor]:
        """Losses: ``text_ce``, ``speech_ce``, ``lm`` (their sum, plus asr_weight *
        ``asr_ce`` when the batch has transcription rows), ``motion_ce``, and
        ``motion_ce_level{l}``; ``total`` = lm + motion_weight * motion_ce.

        ``motion=False`` skips the connector (``total`` = lm), e.g. while the
        audio LLM itself is trained."""
        embeds, mask, offsets = self._assemble(batch)
        hidden = llm_hidden(self.llm, embeds, mask)  # [B, T, H]
        B, T = mask.shape
        labels_text = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=mask.device)
        labels_speech = labels_text.clone()
        labels_asr = labels_text.clone()
        speech_hidden = []
        for i in range(B):
            n, o = int(batch.answer_lengths[i]), offsets[i]
            ids = batch.answer_ids[i, :n]
            # position o - 1 (<answer>) predicts answer token 0
            is_text = batch.answer_is_text[i, :n]
            if batch.task is not None and int(batch.task[i]) == TASK_TRANSCRIBE:
                labels_asr[i, o - 1:o - 1 + n] = ids
                speech_hidden.append(hidden[i, :0])  # no speech, no motion
                continue
            labels_text[i, o - 1:o - 1 + n] = torch.where(is_text, ids, IGNORE_INDEX)
            labels_speech[i, o - 1:o - 1 + n] = torch.where(is_text, IGNORE_INDEX, ids)
            pos = o + torch.nonzero(batch.answer_is_speech[i, :n])[:, 0]  # speech inputs
            speech_hidden.append(hidden[i, pos])  # [n_speech_i, H]
        # LM head only where there is a target (the prompt positions have none)
        used = ((labels_text != IGNORE_INDEX) | (labels_speech != IGNORE_INDEX)
                | (labels_asr != IGNORE_INDEX))  # [B, T]
        logits = llm_logits(self.llm, hidden[used]).float()  # [N, V]
        text_ce = _ce(logits, labels_text[used])
        speech_ce = _ce(logits, labels_speech[used])
        out = {"text_ce": text_ce, "speech_ce": speech_ce, "lm": text_ce + speech_ce}
        if bool((labels_asr != IGNORE_INDEX).any()):
            out["asr_ce"] = _ce(logits, labels_asr[used])
            out["lm"] = out["lm"] + asr_weight * out["asr_ce"]
        if not motion:
            out["total"] = out["lm"]
            return out
        out.update(self._motion_loss(speech_hidden, batch))
        out["total"] = out["lm"] + motion_weight * out["motion_ce"]
        return out

    def motion_loss_from_hidden(self, speech_hidden: List[torch.Tensor],
                                batch: TrainBatch) -> Dict[str, torch.Tensor]:
        """Connector loss alone, from per-sample speech-token hidden states [n_i, H]."""
        return self._motion_loss(speech_hidden, batch)

    @torch.no_grad()
    def speech_hidden_states(self, batch: TrainBatch) -> List[torch.Tensor]:
        """LLM last hidden states at the answer's speech-token inputs, per sample [n_i, H]."""
        embeds, mask, offsets = self._assemble(batch)
        hidden = llm_hidden(self.llm, embeds, mask)  # [B, T, H]
        out = []
        for i in range(hidden.shape[0]):
            n = int(batch.answer_lengths[i])
            pos = offsets[i] + torch.nonzero(batch.answer_is_speech[i, :n])[:, 0]
            out.append(hidden[i, pos])  # [n_speech_i, H]
        return out

    def _motion_loss(self, speech_hidden: List[torch.Tensor], batch: TrainBatch):
        P = SPEECH_TOKENS_PER_SEGMENT
        S = batch.motion_codes.shape[1]
        H = speech_hidden[0].shape[-1]
        q = speech_hidden[0].new_zeros(len(speech_hidden), S * P, H)  # [B, 5S, H]
        for i, h in enumerate(speech_hidden):
            n = int(batch.motion_lengths[i]) * P
            q[i, :n] = h[:n]
        logits = self.connector(q, batch.motion_codes)  # [B, S, L, K]
        valid = torch.arange(S, device=q.device)[None] < batch.motion_lengths[:, None]  # [B, S]
        if not bool(valid.any()):
            zero = logits.sum() * 0.0
            return {"motion_ce": zero}
        total, per_level = self.connector.loss(logits, batch.motion_codes, valid)
        out = {"motion_ce": total}
        out.update({f"motion_ce_level{i}": v for i, v in enumerate(per_level)})
        return out


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled rows (0 when none is labelled)."""
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
