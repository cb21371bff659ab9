"""``a2llm backbone-check``: the prompt and first-step logits of a backbone, as JSON.

For one question WAV it writes what an independent implementation of
Step-Audio-2-mini (the reference code, another runtime) can be compared with:

* ``prompt_ids``: the whole chat prompt (system prompt :data:`SYSTEM_PROMPT`, the
  question's ``<audio_patch>`` run, ``<|BOT|>assistant\\n<tts_start>``);
* ``n_audio_patches``: the number of ``<audio_patch>`` positions;
* ``first_step_top``: the ten largest ``[id, logit]`` pairs of the unconstrained
  logits at the last prompt position (the step after ``<tts_start>``), computed
  on the CPU in float32 (no sampling, no schedule mask).

Works on a bare Step-Audio-2-mini folder or an A²-LLM checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HELP = "prompt ids and first-step top-10 logits (CPU, float32) of a checkpoint, as JSON"

#: Logits reported.
TOP = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="Step-Audio-2-mini folder or A²-LLM checkpoint directory")
    parser.add_argument("--input", required=True, help="question audio (.wav, any rate)")
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def check(ckpt_dir: str, wave) -> dict:
    """The report (see module docstring) for a validated question wave."""
    import torch

    from a2llm_ros.checkpoint import load_checkpoint
    from a2llm_ros.generation import check_question
    from a2llm_ros.engines.torch_backend import TorchBackend
    from a2llm_ros.model.chat import n_positions
    from a2llm_ros.model.chat import SYSTEM_PROMPT
    model = load_checkpoint(ckpt_dir, device="cpu", dtype=torch.float32).float()
    backend = TorchBackend(model)
    wave = check_question(wave)
    with torch.no_grad():
        mel = model.log_mel(wave)  # [M, T]
        prompt = model.prompt(n_positions(mel.shape[1]))
        audio = backend.encode_audio(mel)  # [1, A, H]
        if audio.shape[1] < prompt.n_patches:
            raise ValueError(f"audio encoder gave {audio.shape[1]} positions for "
                             f"{prompt.n_patches} <audio_patch> tokens")
        embeds = model.prompt_embeds(prompt, audio[0])[None]  # [1, P, H]
        logits, _, _ = backend.llm_prefill(embeds)  # [V] float32
    values, ids = torch.topk(logits.float(), TOP)
    return {"checkpoint": os.path.abspath(ckpt_dir), "system_prompt": SYSTEM_PROMPT,
            "n_mel_frames": int(mel.shape[1]), "n_audio_patches": int(prompt.n_patches),
            "patch_start": int(prompt.patch_start), "prompt_ids": [int(i) for i in prompt.ids],
            "vocab_size": int(logits.shape[0]),
            "first_step_top": [[int(i), float(v)] for i, v in zip(ids, values)]}


def run(args) -> int:
    import torch

    from a2llm_ros.tools.commands.generate import EXIT_BAD_INPUT, read_question
    wave = read_question(args.input, "backbone-check")
    if wave is None:
        return EXIT_BAD_INPUT
    torch.set_num_threads(max(1, args.threads))
    try:
        report = check(args.checkpoint, wave)
    except (FileNotFoundError, ValueError) as exc:
        print(f"a2llm backbone-check: {exc}", file=sys.stderr)
        return 1
    out_dir = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    top = report["first_step_top"][0]
    print(f"{len(report['prompt_ids'])} prompt ids ({report['n_audio_patches']} audio patches)"
          f"; top first-step id {top[0]} (logit {top[1]:.4f}); wrote {args.json}")
    return 0
