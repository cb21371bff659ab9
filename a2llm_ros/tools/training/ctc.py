"""Auxiliary CTC loss on the audio encoder (training only; not part of the model).

A linear head on the encoder's 50 Hz states predicts the question's characters
with connectionist temporal classification.  Every audio frame gets a
gradient, so the encoder learns what was said (speaker-independent phonetic
content) much faster than from the LLM's answer loss alone, whose few
question-dependent tokens are the only audio signal there.  The head is
discarded after training (it is kept in the resumable state only).
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: CTC output symbols; index 0 is the blank.
CTC_SYMBOLS = " abcdefghijklmnopqrstuvwxyz'"
BLANK = 0


def ctc_targets(text: str) -> List[int]:
    """Lower-cased letters, apostrophes and single spaces -> symbol ids (1-based)."""
    clean = re.sub(r"[^a-z' ]+", " ", text.lower().replace("’", "'"))
    clean = re.sub(r" +", " ", clean).strip()
    return [CTC_SYMBOLS.index(c) + 1 for c in clean]


class CTCHead(nn.Module):
    """Encoder states [B, T, d] -> log-probabilities [B, T, len(CTC_SYMBOLS) + 1]."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, len(CTC_SYMBOLS) + 1)

    def forward(self, states):  # [B, T, d] -> [B, T, C]
        return F.log_softmax(self.proj(states).float(), dim=-1)


def ctc_loss(head: CTCHead, audio_encoder, mel, mel_lengths,
             texts: Sequence[str]) -> torch.Tensor:
    """Mean CTC loss of ``texts`` given the batch's log-mel [B, M, T] (+ lengths [B])."""
    states, valid = audio_encoder.encode(mel, mel_lengths)  # [B, T50, d], [B, T50]
    logp = head(states)  # [B, T50, C]
    targets, lengths = _flat_targets(texts)
    in_lengths = valid.sum(1) if valid is not None else torch.full(
        (logp.shape[0],), logp.shape[1], dtype=torch.long)
    return F.ctc_loss(logp.transpose(0, 1), targets.to(logp.device), in_lengths.cpu(),
                      lengths, blank=BLANK, reduction="mean", zero_infinity=True)


def _flat_targets(texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    ids = [ctc_targets(t) for t in texts]
    flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
    return flat, torch.tensor([len(row) for row in ids], dtype=torch.long)


@torch.no_grad()
def greedy_decode(head: CTCHead, audio_encoder, mel, mel_lengths=None) -> List[str]:
    """Best-path decoding (diagnostics): collapse repeats, drop blanks."""
    states, valid = audio_encoder.encode(mel, mel_lengths)
    best = head(states).argmax(-1)  # [B, T]
    out = []
    for b in range(best.shape[0]):
        n = int(valid[b].sum()) if valid is not None else best.shape[1]
        prev, chars = BLANK, []
        for k in best[b, :n].tolist():
            if k != prev and k != BLANK:
                chars.append(CTC_SYMBOLS[k - 1])
            prev = k
        out.append("".join(chars))
    return out
