"""The PyTorch model as the generator's :class:`~a2llm_ros.engines.backend.Backend`, and
the non-incremental reference the streaming path is tested against.

:class:`TorchBackend` keeps the model's lower-level calls public for the export parity
checks and benchmarks (``encode_audio``, ``embed_tokens``, ``llm_prefill``,
``llm_decode``, ``forward_full``: tensors in, logits out); the generator only uses the
array-typed :class:`~a2llm_ros.engines.backend.Backend` methods, which sample the next
token on the model's device and return its id.

:func:`generate_batch` is the reference: full-sequence forward passes without KV
cache for every token, then one pass for the speech hidden states,
``connector.generate``, whole-sequence motion decode and ``token2wav.decode``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from a2llm_ros.constants import SPEECH_TOKENS_PER_SEGMENT
from a2llm_ros.engines.backend import Backend, LLMStep, Pick
from a2llm_ros.generation import (AnswerReader, GenerationConfig, TokenChooser, TurnResult,
                                  check_question)
from a2llm_ros.model.a2llm import A2LLM
from a2llm_ros.model.audio_llm import llm_hidden, llm_logits
from a2llm_ros.model.chat import SPEECH, TEXT, n_positions, prompt_tail, splice_audio
from a2llm_ros.model.connector import sample_codes


class TorchBackend(Backend):
    """The PyTorch model with a growing key/value cache (one tensor pair per layer)."""

    kind = "torch"

    def __init__(self, model: A2LLM):
        self.model = model.eval()
        #: The schedule's kind masks [V] on the model's device.
        self._masks: Dict[str, torch.Tensor] = {
            k: torch.from_numpy(model.vocab.kind_mask(k)).to(model.device) for k in (TEXT, SPEECH)}
        #: Prompt positions :meth:`prefill` returns hidden states of (the prefill graphs'
        #: ``tail``: the last audio position and the chat template after it).
        self.prompt_tail = prompt_tail(model)

    # -- Backend -------------------------------------------------------------------------
    def rng(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.model.device).manual_seed(int(seed))

    def prefill(self, wave, pick: Pick, rng) -> LLMStep:
        logits, tail, cache = self.llm_prefill(prompt_embeds(self, wave), self.prompt_tail)
        return self.choose(logits, pick, rng), tail, cache

    def decode(self, token: int, cache, pick: Pick, rng) -> LLMStep:
        logits, hidden, cache = self.llm_decode(token, cache)
        return self.choose(logits, pick, rng), hidden, cache

    def host(self, hidden) -> np.ndarray:
        return hidden.detach().float().cpu().numpy().reshape(-1)

    def init_motion_state(self):
        return (self.model.connector.init_state(1),
                self.model.motion_tokenizer.init_decode_state(1))

    @torch.no_grad()
    def motion_step(self, hidden: Sequence[torch.Tensor], state, temperature: float,
                    top_k: int, rng):
        connector_state, decoder_state = state
        x = torch.stack(list(hidden))[None].to(_connector_dtype(self.model))  # [1, 5, H]
        codes, connector_state = self.model.connector.step(
            x, connector_state, temperature, rng, top_k)  # [1, L]
        frames, decoder_state = self.model.motion_tokenizer.decode_step(
            codes[:, None], decoder_state)  # [1, 5, D]
        return frames[0].float().cpu().numpy(), (connector_state, decoder_state)

    def init_codec_state(self):
        return self.model.token2wav.init_state()

    def codec_step(self, codes, state):
        audio, state = self.model.token2wav.step(torch.as_tensor(codes, dtype=torch.long),
                                                 state)
        return _host_audio(audio), state

    def codec_flush(self, state):
        audio, state = self.model.token2wav.flush(state)
        return _host_audio(audio), state

    def choose(self, logits: torch.Tensor, pick: Pick, rng) -> int:
        """:class:`Pick` on device logits [V] (sampling with ``rng`` on their device)."""
        if pick.forced is not None:
            return int(pick.forced)
        logits = logits.detach().float()
        if pick.allowed is not None:
            keep = self._masks[pick.allowed].to(logits.device)
            if pick.banned is not None:
                keep = keep.clone()
                keep[pick.banned] = False
            logits = logits.masked_fill(~keep, float("-inf"))
        return int(sample_codes(logits[None], pick.temperature, rng, pick.top_k)[0])

    # -- the model's lower-level calls (parity checks, benchmarks, the reference) --------
    @torch.no_grad()
    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [M, T] -> audio embeddings [1, A, H]."""
        return self.model.encode_audio(mel[None])

    @torch.no_grad()
    def embed_tokens(self, ids) -> torch.Tensor:
        """Token ids -> embeddings [1, n, H]."""
        return self.model.embed_ids(list(ids))[None]

    def _run(self, embeds, cache=None, tail: int = 0):
        """-> (logits [V], hidden [H] of the last position, or [tail, H] of the last
        ``tail`` positions, cache)."""
        hidden, cache = llm_hidden(self.model.llm, embeds, past=cache)  # [1, T, H]
        out = hidden[0, -tail:] if tail else hidden[0, -1]  # [tail, H] | [H]
        return llm_logits(self.model.llm, hidden[0, -1]).float(), out, cache

    @torch.no_grad()
    def llm_prefill(self, embeds: torch.Tensor, tail: int = 0):
        """Prompt embeddings [1, P, H] -> (logits [V], hidden [H] of the last position, or
        [tail, H] of the last ``tail`` positions, cache)."""
        return self._run(embeds, tail=tail)

    @torch.no_grad()
    def llm_decode(self, token_id: int, cache):
        """Feed one token -> (logits [V], hidden [H], cache)."""
        return self._run(self.embed_tokens([token_id]), cache)

    @torch.no_grad()
    def forward_full(self, embeds: torch.Tensor):
        """Reference path without cache: embeds [1, T, H] -> (logits [T, V], hidden [T, H])."""
        hidden, _ = llm_hidden(self.model.llm, embeds)
        return llm_logits(self.model.llm, hidden[0]).float(), hidden[0]


def _connector_dtype(model) -> torch.dtype:
    return next(model.connector.parameters()).dtype


def _host_audio(audio) -> np.ndarray:
    return torch.as_tensor(audio).detach().reshape(-1).float().cpu().numpy()


def prompt_embeds(backend: TorchBackend, wave) -> torch.Tensor:
    """Question wave -> prompt embeddings [1, P, H] (audio in the ``<audio_patch>`` rows)."""
    model = backend.model
    mel = model.log_mel(check_question(wave))  # [M, T]
    audio = backend.encode_audio(mel)  # [1, A, H]
    prompt = model.prompt(n_positions(mel.shape[1]))
    return splice_audio(prompt, backend.embed_tokens(prompt.ids), audio)  # [1, P, H]


# ----------------------------------------------------------------------------- reference

@torch.no_grad()
def generate_batch(model: Union[A2LLM, TorchBackend], question_wave,
                   cfg: Optional[GenerationConfig] = None) -> TurnResult:
    """Non-incremental reference (module docstring); same draws as the streaming path."""
    backend = model if isinstance(model, TorchBackend) else TorchBackend(model)
    model, cfg = backend.model, cfg or GenerationConfig()
    chooser = TokenChooser(model, cfg)
    llm_rng, motion_rng = backend.rng(cfg.seed), backend.rng(int(cfg.seed) + 1)
    reader = AnswerReader(model, cfg)
    embeds = prompt_embeds(backend, question_wave)  # [1, P, H]
    fed, text_ids, codes = [], [], []
    reason = "eos"
    while True:
        logits, _ = backend.forward_full(
            torch.cat([embeds, backend.embed_tokens(fed)], dim=1) if fed else embeds)
        tok = backend.choose(logits[-1], chooser.pick(reader.schedule), llm_rng)
        kind = reader.read(tok)
        if kind == TEXT:
            text_ids.append(tok)
        if kind == SPEECH:
            codes.append(int(model.vocab.speech_code(tok)))
        if reader.finished:
            break
        fed.append(tok)
        if kind == SPEECH and len(codes) >= cfg.max_speech_tokens:
            reason = "cap"
            break
    hidden = hidden_states_for_connector(backend, embeds, fed)  # [n_speech, H]
    assert hidden.shape[0] == len(codes)
    frames = _batch_motion(model, hidden, cfg, motion_rng)
    audio = model.token2wav.decode(torch.tensor(codes, dtype=torch.long))
    text = model.text_tokenizer.decode(text_ids)
    return TurnResult(text, text_ids, codes, audio.numpy().astype(np.float32), frames, reason,
                      sample_rate=model.token2wav.sample_rate)


@torch.no_grad()
def hidden_states_for_connector(backend: TorchBackend, prompt: torch.Tensor,
                                answer_ids: List[int]) -> torch.Tensor:
    """LLM last hidden states [n_speech, H] at the input positions of the speech tokens.

    ``prompt`` [1, P, H] from :func:`prompt_embeds`; ``answer_ids`` are the
    answer tokens fed after it.  This is the connector's input, the same as
    ``A2LLM.forward_train`` uses and as :meth:`TorchBackend.decode` returns step
    by step (an exported engine can be checked against it).
    """
    vocab = backend.model.vocab
    full = torch.cat([prompt, backend.embed_tokens(answer_ids)], dim=1) if answer_ids \
        else prompt
    _, hidden = backend.forward_full(full)  # [T, H]
    pos = [prompt.shape[1] + i for i, t in enumerate(answer_ids) if vocab.is_speech(t)]
    return hidden[pos]


def _batch_motion(model: A2LLM, hidden, cfg: GenerationConfig, generator) -> np.ndarray:
    """Speech hidden [n, H] -> frames [n, D] (last partial segment padded with the last state)."""
    n, P = hidden.shape[0], SPEECH_TOKENS_PER_SEGMENT
    if n == 0:
        return np.zeros((0, model.layout.dim), np.float32)
    pad = (-n) % P
    hidden = torch.cat([hidden, hidden[-1:].expand(pad, -1)])[None]  # [1, 5S, H]
    codes = model.connector.generate(hidden.to(_connector_dtype(model)),
                                     cfg.motion_temperature, generator,
                                     cfg.motion_top_k)  # [1, S, L]
    frames = model.motion_tokenizer.decode(codes)[0, :n]  # [n, D]
    return frames.float().cpu().numpy()
