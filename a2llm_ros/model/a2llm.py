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
from a2llm_ros.model.audio_llm import (IGNORE_INDEX, VocabLayout, build_answer_sequence,
                                       build_llm, llm_hidden, llm_logits)
from a2llm_ros.model.connector import MotionConnector
from a2llm_ros.model.motion_tokenizer import MotionTokenizer
from a2llm_ros.model.speech_codec import make_codec
from a2llm_ros.model.text_tokenizer import CharTokenizer, HFTokenizer, TextTokenizer

PROMPT_PREFIX = ("<bos>", "<audio_in_start>")
PROMPT_SUFFIX = ("<audio_in_end>", "<answer>")


@dataclass
class TrainBatch:
    """A padded training batch (build with :meth:`A2LLM.collate`).

    ``mel`` [B, M, T] log-mel of the questions (zero-padded), ``mel_lengths``
    [B]; ``answer_ids`` [B, La] interleaved answer ids (padded with
    ``<pad>``), ``answer_is_text`` / ``answer_is_speech`` [B, La] bool kinds,
    ``answer_lengths`` [B]; ``motion_codes`` [B, S, L] (zero-padded),
    ``motion_lengths`` [B] segments used per sample.
    """

    mel: torch.Tensor
    mel_lengths: torch.Tensor
    answer_ids: torch.Tensor
    answer_is_text: torch.Tensor
    answer_is_speech: torch.Tensor
    answer_lengths: torch.Tensor
    motion_codes: torch.Tensor
    motion_lengths: torch.Tensor

    def to(self, device) -> "TrainBatch":
        return TrainBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


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

    def prompt_embeds(self, audio_embeds) -> torch.Tensor:
        """Audio embeddings [B, A, H] -> prompt embeddings [B, A + 4, H]."""
        B = audio_embeds.shape[0]
        pre = self.embed_ids([self.vocab.special(t) for t in PROMPT_PREFIX])  # [2, H]
        suf = self.embed_ids([self.vocab.special(t) for t in PROMPT_SUFFIX])  # [2, H]
        audio_embeds = audio_embeds.to(pre.dtype)
        return torch.cat([pre.expand(B, -1, -1), audio_embeds, suf.expand(B, -1, -1)], dim=1)

    # -- data --------------------------------------------------------------------------
    def collate(self, question_waves: Sequence, answer_texts: Sequence[str],
                answer_speech_tokens: Sequence, answer_motion_codes: Sequence) -> TrainBatch:
        """Lists of (wave [N], text, speech codes [n], motion codes [S, L]) -> TrainBatch."""
        mels = [self.log_mel(w) for w in question_waves]  # [M, T_i]
        seqs = [build_answer_sequence(self.text_tokenizer.encode(t), list(np.asarray(s)),
                                      self.vocab, self.cfg.interleave)
                for t, s in zip(answer_texts, answer_speech_tokens)]
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
            motion_lengths=torch.tensor(n_seg, dtype=torch.long))
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

    def collate_samples(self, samples: Sequence) -> TrainBatch:
        """Same as :meth:`collate` for a list of (wave, text, speech codes, motion codes)."""
        waves, texts, speech, motion = zip(*samples)
        return self.collate(waves, texts, speech, motion)

    # -- training ----------------------------------------------------------------------
    def _assemble(self, batch: TrainBatch):
        """Full input embeddings [B, T, H], attention mask [B, T] and answer offsets [B]."""
        audio = self.audio_encoder(batch.mel, batch.mel_lengths)  # [B, A, H]
        n_audio = [n_positions(int(n)) for n in batch.mel_lengths]
        answer = self.embed_ids(batch.answer_ids)  # [B, La, H]
        rows, offsets = [], []
        for i in range(audio.shape[0]):
            prompt = self.prompt_embeds(audio[i:i + 1, :n_audio[i]])[0]  # [P_i, H]
            offsets.append(prompt.shape[0])
            rows.append(torch.cat([prompt, answer[i, :int(batch.answer_lengths[i])]]))
        T = max(r.shape[0] for r in rows)
        embeds = answer.new_zeros(len(rows), T, answer.shape[-1])
        mask = torch.zeros(len(rows), T, dtype=torch.long, device=answer.device)
        for i, r in enumerate(rows):
            embeds[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        return embeds, mask, offsets

    def forward_train(self, batch: TrainBatch) -> Dict[str, torch.Tensor]:
        """Losses: ``text_ce``, ``speech_ce``, ``lm`` (sum of both), ``motion_ce``, and
        ``motion_ce_level{l}``; ``total`` = lm + motion_ce."""
        embeds, mask, offsets = self._assemble(batch)
        hidden = llm_hidden(self.llm, embeds, mask)  # [B, T, H]
        B, T = mask.shape
        labels_text = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=mask.device)
        labels_speech = labels_text.clone()
        speech_hidden = []
        for i in range(B):
            n, o = int(batch.answer_lengths[i]), offsets[i]
            ids = batch.answer_ids[i, :n]
            # position o - 1 (<answer>) predicts answer token 0
            is_text = batch.answer_is_text[i, :n]
            labels_text[i, o - 1:o - 1 + n] = torch.where(is_text, ids, IGNORE_INDEX)
            labels_speech[i, o - 1:o - 1 + n] = torch.where(is_text, IGNORE_INDEX, ids)
            pos = o + torch.nonzero(batch.answer_is_speech[i, :n])[:, 0]  # speech inputs
            speech_hidden.append(hidden[i, pos])  # [n_speech_i, H]
        # LM head only where there is a target (the prompt positions have none)
        used = (labels_text != IGNORE_INDEX) | (labels_speech != IGNORE_INDEX)  # [B, T]
        logits = llm_logits(self.llm, hidden[used]).float()  # [N, V]
        text_ce = F.cross_entropy(logits, labels_text[used], ignore_index=IGNORE_INDEX)
        speech_ce = F.cross_entropy(logits, labels_speech[used], ignore_index=IGNORE_INDEX)
        out = {"text_ce": text_ce, "speech_ce": speech_ce, "lm": text_ce + speech_ce}
        out.update(self._motion_loss(speech_hidden, batch))
        out["total"] = out["lm"] + out["motion_ce"]
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
