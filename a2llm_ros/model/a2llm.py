"""The full A²-LLM: audio encoder + audio LLM + motion connector + tokenizers + codec.

Training (:meth:`A2LLM.forward_train`) on a :class:`TrainBatch` made by
:meth:`A2LLM.collate`:

* LM loss: next-token cross-entropy over the answer after Step-Audio-2's chat
  prompt (``... <|BOT|>assistant\n<tts_start>``, see
  :mod:`a2llm_ros.model.audio_llm`), reported separately for text targets
  (text ids, ``<tts_pad>``, ``<|EOT|>``) and speech targets (speech ids and
  ``<tts_end>``), over the full vocabulary.
* Motion loss: the connector's cross-entropy on the answer's motion codes.
  Its queries are the LLM last hidden states at the INPUT positions of the
  answer's speech tokens (the state produced by feeding each speech token),
  five per motion segment; ``n_segments = min(n_speech // 5, n_motion_codes)``
  and the rest of either side is dropped.
"""
from __future__ import annotations

import contextlib
import os
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
from a2llm_ros.model.audio_encoder import Adapter, AudioEncoder
from a2llm_ros.checkpoint_files import resolve_backbone
from a2llm_ros.model.audio_llm import build_llm, llm_hidden, llm_logits
from a2llm_ros.model.chat import (IGNORE_INDEX, TASK_ANSWER, TASK_TRANSCRIBE, Prompt, Vocab,
                                  build_answer_sequence, build_prompt, n_positions,
                                  splice_audio, text_sequence)
from a2llm_ros.model.connector import MotionConnector
from a2llm_ros.model.motion_tokenizer import MotionTokenizer
from a2llm_ros.model.codecs import make_codec
from a2llm_ros.model.configs import STEP_KIND
from a2llm_ros.model.text_tokenizer import TextTokenizer, make_tiny_tokenizer

__all__ = ["A2LLM", "TrainBatch", "TASK_ANSWER", "TASK_TRANSCRIBE", "make_text_tokenizer"]


@dataclass
class TrainBatch:
    """A padded training batch (build with :meth:`A2LLM.collate`).

    ``mel`` [B, M, T] log-mel of the questions (zero-padded), ``mel_lengths``
    [B]; ``answer_ids`` [B, La] interleaved answer ids (padded with
    ``<|EOT|>``), ``answer_is_text`` / ``answer_is_speech`` [B, La] bool kinds,
    ``answer_lengths`` [B]; ``motion_codes`` [B, S, L] (zero-padded),
    ``motion_lengths`` [B] segments used per sample; ``task`` [B] 0 = answer
    (after ``<tts_start>``), 1 = transcribe (the "answer" is the question's text;
    auxiliary ASR loss ``asr_ce``).
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
    """A new model's tokenizer: the tiny one, or the backbone folder's files."""
    if not cfg.llm.backbone:
        return make_tiny_tokenizer(cfg.codec.n_codes)
    return TextTokenizer.load(resolve_backbone(cfg.llm.backbone, base_dir))


#: Step-Audio-2-mini's codec folder inside the backbone folder.
TOKEN2WAV_DIR = "token2wav"


def codec_folder(cfg: A2LLMConfig, base_dir: Optional[str] = None) -> Optional[str]:
    """Where a pretrained codec's files are: ``codec.token2wav_dir`` (relative to
    ``base_dir``), else the backbone's ``token2wav/``; None for trained codecs."""
    if cfg.codec.kind != STEP_KIND:
        return None
    if cfg.codec.token2wav_dir:
        return resolve_backbone(cfg.codec.token2wav_dir, base_dir)
    if not cfg.llm.backbone:
        return None
    return os.path.join(resolve_backbone(cfg.llm.backbone, base_dir), TOKEN2WAV_DIR)


class A2LLM(nn.Module):
    """Audio-in, text + speech + FLAME-motion-out model.

    Children (checkpoint prefixes): ``encoder`` and ``adapter`` (Step's audio
    encoder and adaptor), ``llm`` (Qwen2: ``llm.model.*``, ``llm.lm_head``),
    ``connector``, ``motion_tokenizer``; the speech codec is kept beside them.
    """

    def __init__(self, cfg: A2LLMConfig, text_tokenizer: Optional[TextTokenizer] = None,
                 base_dir: Optional[str] = None, dtype: torch.dtype = torch.float32,
                 meta_backbone: bool = False):
        """``meta_backbone``: build encoder, adaptor and LLM without storage (their
        weights are assigned from a backbone folder afterwards)."""
        super().__init__()
        self.cfg = cfg
        self.layout = FlameLayout(n_expr=cfg.motion.n_expr)
        self.text_tokenizer = text_tokenizer or make_text_tokenizer(cfg, base_dir)
        self.vocab = Vocab.from_tokenizer(self.text_tokenizer, cfg.codec.n_codes,
                                          cfg.llm.vocab_size)
        with torch.device("meta") if meta_backbone else contextlib.nullcontext():
            self.encoder = AudioEncoder(cfg.audio).to(dtype)
            self.adapter = Adapter(cfg.audio).to(dtype)
            self.llm = build_llm(cfg.llm, dtype)
        #: Absolute path of the backbone folder the weights came from (or None).
        self.backbone_dir: Optional[str] = None
        #: Directory that relative folder paths in ``cfg`` are relative to (or None).
        self.base_dir: Optional[str] = os.path.abspath(base_dir) if base_dir else None
        self.connector = MotionConnector(cfg.connector)
        self.motion_tokenizer = MotionTokenizer(cfg.motion)
        self.speech_tokenizer, self.token2wav = make_codec(cfg.codec,
                                                           codec_folder(cfg, base_dir))
        self.register_buffer("mel_filters", mel_filterbank(cfg.mel), persistent=False)

    # -- helpers -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mel_filters.device

    def n_params(self) -> int:
        """Parameters of all neural parts."""
        return sum(p.numel() for p in self.parameters())

    def log_mel(self, wave) -> torch.Tensor:
        """Question wave [N] float32 16 kHz -> log-mel [M, (N + pad) // 160]."""
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        return log_mel_spectrogram(wave, self.cfg.mel, self.mel_filters.cpu())

    def embed_ids(self, ids) -> torch.Tensor:
        """Token ids [..] -> LLM input embeddings [.., H]."""
        emb = self.llm.get_input_embeddings()
        return emb(torch.as_tensor(ids, device=emb.weight.device))

    def encode_audio(self, mel, lengths=None) -> torch.Tensor:
        """Log-mel [B, M, T] (+ lengths [B]) -> adaptor outputs [B, A, H] at 12.5 Hz."""
        p = next(self.encoder.parameters())
        return self.adapter(self.encoder(mel.to(p.device, p.dtype), lengths))

    def prompt(self, n_patches: int, task: int = TASK_ANSWER) -> Prompt:
        """The chat prompt's ids for ``n_patches`` audio positions."""
        return build_prompt(self.text_tokenizer, self.vocab, n_patches, task)

    def prompt_embeds(self, prompt: Prompt, audio_embeds) -> torch.Tensor:
        """Prompt ids with the ``<audio_patch>`` rows replaced: audio [n, H] -> [P, H]."""
        return splice_audio(prompt, self.embed_ids(prompt.ids), audio_embeds)  # [P, H]

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
            answer_ids=torch.full((B, La), self.vocab.eot, dtype=torch.long),
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
        return text_sequence(ids, self.vocab)

    def collate_samples(self, samples: Sequence,
                        tasks: Optional[Sequence[int]] = None) -> TrainBatch:
        """Same as :meth:`collate` for a list of (wave, text, speech codes, motion codes)."""
        waves, texts, speech, motion = zip(*samples)
        return self.collate(waves, texts, speech, motion, tasks)

    # -- training ----------------------------------------------------------------------
    def _hidden(self, batch: TrainBatch):
        """LLM hidden states of the batch's rows after the shared prompt prefix.

        Every prompt starts with the same ids up to the first ``<audio_patch>``
        (system turn, ``<|BOT|>human``, ``<audio_start>``): that prefix is run
        once and its keys/values serve every row, which is exactly the
        full-sequence forward of each row.  -> (hidden [B, T, H], mask [B, T],
        answer offsets [B] within the rows).
        """
        audio = self.encode_audio(batch.mel, batch.mel_lengths)  # [B, A, H]
        B = audio.shape[0]
        tasks = batch.task if batch.task is not None else [TASK_ANSWER] * B
        answer = self.embed_ids(batch.answer_ids)  # [B, La, H]
        rows, offsets, prefix = [], [], None
        for i in range(B):
            prompt = self.prompt(n_positions(int(batch.mel_lengths[i])), int(tasks[i]))
            full = self.prompt_embeds(prompt, audio[i])  # [P, H]
            a = prompt.patch_start
            prefix = full[:a] if prefix is None else prefix
            rest = full[a:]
            offsets.append(rest.shape[0])
            rows.append(torch.cat([rest, answer[i, :int(batch.answer_lengths[i])]]))
        T = max(r.shape[0] for r in rows)
        embeds = answer.new_zeros(B, T, answer.shape[-1])
        mask = torch.zeros(B, T, dtype=torch.long, device=answer.device)
        for i, r in enumerate(rows):
            embeds[i, :r.shape[0]] = r
            mask[i, :r.shape[0]] = 1
        _, past = llm_hidden(self.llm, prefix[None])  # kv [1, G, S, dh] per layer
        past = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in past]
        full_mask = torch.cat([mask.new_ones(B, prefix.shape[0]), mask], dim=1)
        hidden, _ = llm_hidden(self.llm, embeds, full_mask, past)  # [B, T, H]
        return hidden, mask, offsets

    def forward_train(self, batch: TrainBatch, motion: bool = True,
                      motion_weight: float = 1.0,
                      asr_weight: float = 1.0) -> Dict[str, torch.Tensor]:
        """Losses: ``text_ce``, ``speech_ce``, ``lm`` (their sum, plus asr_weight *
        ``asr_ce`` when the batch has transcription rows), ``motion_ce``, and
        ``motion_ce_level{l}``; ``total`` = lm + motion_weight * motion_ce.

        ``motion=False`` skips the connector (``total`` = lm), e.g. while the
        audio LLM itself is trained."""
        hidden, mask, offsets = self._hidden(batch)  # [B, T, H]
        B, T = mask.shape
        labels_text = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=mask.device)
        labels_speech = labels_text.clone()
        labels_asr = labels_text.clone()
        speech_hidden = []
        for i in range(B):
            n, o = int(batch.answer_lengths[i]), offsets[i]
            ids = batch.answer_ids[i, :n]
            # position o - 1 (the prompt's last token) predicts answer token 0
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
        hidden, _, offsets = self._hidden(batch)  # [B, T, H]
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
