"""Fit the tiny speech codec's mel refiner (:class:`a2llm_ros.model.speech_codec.MelRefiner`).

``python -m a2llm_ros.tools.training.codec_refiner --checkpoint DIR``: random word
sequences from the PocketSphinx dictionary are spoken (espeak-ng) by the answer voice
(:data:`~a2llm_ros.tools.data.espeak.ROBOT_VOICE`), encoded by the checkpoint's own
fitted k-means tokenizer, and the refiner learns to predict each token's true log-mel
(L1) from the centroids of its code window.  The codes, the LLM and everything else in
the checkpoint stay as they are; only the codec's ``refiner.*`` tensors are rewritten
(in place, or in a copy with ``--out``).

No answer of the data set is heard: the refiner is judged on speech it never saw.
Measured 2026-12-05 (2-core machine) on the 50 answers of the default checkpoint's data,
PocketSphinx free-vocabulary WER of the codec round trip: reference audio 53.9 %,
centroid decode 59.1 %, this refiner 54.6 % (docs/codec.md, with the variants tried).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

#: Sentences spoken for the fit, and their length range in words.
N_SENTENCES = 1500
MIN_WORDS, MAX_WORDS = 3, 10
#: Share of sentences spoken as a question, exclamation or statement (capitalised,
#: with a final mark) rather than as a bare word list.
PUNCTUATED = 0.3
EPOCHS = 6
BATCH_SENTENCES = 16
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
#: Sentences kept out of the fit to report the refiner's L1 on unseen speech.
VALIDATION_SHARE = 0.05

Pair = Tuple[torch.Tensor, torch.Tensor]  # codes int64 [n], true vectors [n, D]


def dictionary_words() -> List[str]:
    """Lower-case words of 2-10 letters from PocketSphinx's US English dictionary."""
    import pocketsphinx
    path = os.path.join(pocketsphinx.get_model_path(), "en-us", "cmudict-en-us.dict")
    with open(path, encoding="utf-8") as f:
        words = {line.split()[0] for line in f if line.strip()}
    return sorted(w for w in words if re.fullmatch(r"[a-z]{2,10}", w))


def random_sentences(n: int, seed: int, words: Sequence[str]) -> List[str]:
    """``n`` random word sequences (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(words, int(rng.integers(MIN_WORDS, MAX_WORDS + 1))))
        if rng.random() < PUNCTUATED:
            text = text[0].upper() + text[1:] + str(rng.choice(["?", "!", "."]))
        out.append(text)
    return out


def speech_pairs(tokenizer, sentences: Sequence[str], progress: bool = True) -> List[Pair]:
    """Each sentence spoken by the answer voice -> (its codes, its true token vectors)."""
    from tqdm import tqdm

    from a2llm_ros.tools.data import espeak
    book = tokenizer.codebook
    pairs = []
    for text in tqdm(sentences, desc="speak", disable=not progress):
        wave = torch.as_tensor(espeak.synthesize(text, espeak.ROBOT_VOICE).audio).float()
        vectors = book.token_vectors(wave)  # [n, D]
        if vectors.shape[0]:
            pairs.append((tokenizer.encode(wave), vectors))
    return pairs


def _l1(refiner, centroids: torch.Tensor, pairs: Sequence[Pair]) -> Tuple[float, float]:
    """Mean L1 of the refiner and of the plain centroids over ``pairs``."""
    with torch.no_grad():
        ref = [torch.nn.functional.l1_loss(refiner(centroids, refiner.windows(c)), v)
               for c, v in pairs]
        cen = [torch.nn.functional.l1_loss(centroids[c], v) for c, v in pairs]
    return float(torch.stack(ref).mean()), float(torch.stack(cen).mean())


def fit_refiner(token2wav, pairs: Sequence[Pair], epochs: int = EPOCHS, seed: int = 0,
                progress: bool = True) -> dict:
    """Train ``token2wav.refiner`` on ``pairs`` (L1 on log-mel); returns a summary."""
    from tqdm import tqdm
    refiner = token2wav.refiner
    if refiner is None:
        raise ValueError("this speech codec has no mel refiner (codec.refiner_hidden = 0)")
    centroids = token2wav.codebook.require_fitted()  # [K, D]
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, int(len(pairs) * VALIDATION_SHARE))
    val, train = [pairs[i] for i in order[:n_val]], [pairs[i] for i in order[n_val:]]
    if not train:
        raise ValueError(f"need more than {n_val} spoken sentences to fit the refiner")
    torch.manual_seed(seed)
    refiner.train()
    opt = torch.optim.AdamW(refiner.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    t0 = time.time()
    bar = tqdm(range(epochs), desc="refiner", disable=not progress)
    for epoch in bar:
        perm = np.random.default_rng(seed + 1 + epoch).permutation(len(train))
        for start in range(0, len(perm), BATCH_SENTENCES):
            batch = [train[i] for i in perm[start:start + BATCH_SENTENCES]]
            pred = torch.cat([refiner(centroids, refiner.windows(c)) for c, _ in batch])
            loss = torch.nn.functional.l1_loss(pred, torch.cat([v for _, v in batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(l1=f"{loss.item():.4f}")
    refiner.eval()
    val_l1, val_centroid_l1 = _l1(refiner, centroids, val)
    return {"sentences": len(pairs), "validation_sentences": len(val),
            "tokens": int(sum(c.numel() for c, _ in pairs)), "epochs": epochs,
            "validation_l1": round(val_l1, 4), "validation_centroid_l1": round(val_centroid_l1, 4),
            "seconds": round(time.time() - t0, 1)}


def _storage_dtype(ckpt: str) -> Optional[torch.dtype]:
    import json

    from a2llm_ros.constants import CONFIG_FILE
    with open(os.path.join(ckpt, CONFIG_FILE)) as f:
        stored = json.load(f).get("storage_dtype", "native")
    return None if stored == "native" else getattr(torch, stored)


def add_refiner(ckpt: str, hidden: int, context: int, lookahead: int) -> None:
    """Give a ``kmeans_mel`` checkpoint without a mel refiner an untrained one, in place:
    the codec config gains the sizes and the weights file the refiner's (zero-output)
    tensors, so it decodes exactly as before until :func:`fit_refiner` runs.  For
    checkpoints written before the refiner existed (their config lacks its fields)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from a2llm_ros.checkpoint_files import CODEC_PREFIX
    from a2llm_ros.constants import CONFIG_FILE, WEIGHTS_FILE
    from a2llm_ros.model.speech_codec import REFINER_PREFIX, MelRefiner
    with open(os.path.join(ckpt, CONFIG_FILE)) as f:
        meta = json.load(f)
    codec = meta["config"]["codec"]
    if codec.get("kind") != "kmeans_mel" or codec.get("refiner_hidden", 0) > 0:
        raise ValueError(f"{ckpt}: codec {codec.get('kind')} with refiner_hidden "
                         f"{codec.get('refiner_hidden', 0)}: nothing to add")
    codec.update(refiner_hidden=hidden, refiner_context=context, lookahead_tokens=lookahead)
    weights = os.path.join(ckpt, WEIGHTS_FILE)
    with safe_open(weights, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(weights)
    refiner = MelRefiner(codec["n_codes"], codec["stack"] * codec["n_mels"], context,
                         lookahead, hidden)
    tensors.update({CODEC_PREFIX + REFINER_PREFIX + k: v.detach().contiguous()
                    for k, v in refiner.state_dict().items()})
    save_file(tensors, weights, metadata=metadata)
    with open(os.path.join(ckpt, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--out", default=None,
                        help="write a copy of the checkpoint here (default: in place)")
    parser.add_argument("--sentences", type=int, default=N_SENTENCES)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--add", action="store_true",
                        help="first give a checkpoint without a refiner one with the tiny "
                             "preset's sizes (checkpoints from before the refiner existed)")
    args = parser.parse_args(argv)

    from a2llm_ros.checkpoint import load_checkpoint, save_checkpoint
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    from a2llm_ros.tools.data import espeak
    if not espeak.available():
        print("codec_refiner: espeak-ng is not available (run `make env`)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    ckpt = resolve_checkpoint(args.checkpoint)
    out = args.out or ckpt
    if os.path.abspath(out) != os.path.abspath(ckpt):
        shutil.copytree(ckpt, out, dirs_exist_ok=True)
    if args.add:
        from a2llm_ros.model.configs import SpeechCodecConfig
        tiny = SpeechCodecConfig.preset("tiny")
        try:
            add_refiner(out, tiny.refiner_hidden, tiny.refiner_context, tiny.lookahead_tokens)
        except ValueError as exc:
            print(f"codec_refiner: --add: {exc}", file=sys.stderr)
            return 2
    model = load_checkpoint(out)
    if getattr(model.token2wav, "refiner", None) is None:
        print(f"codec_refiner: {ckpt}: its speech codec ({model.cfg.codec.kind}, "
              f"refiner_hidden={model.cfg.codec.refiner_hidden}) has no mel refiner "
              f"(--add gives a kmeans_mel codec one)", file=sys.stderr)
        return 2
    progress = not args.no_progress
    sentences = random_sentences(args.sentences, args.seed, dictionary_words())
    pairs = speech_pairs(model.speech_tokenizer, sentences, progress)
    summary = fit_refiner(model.token2wav, pairs, args.epochs, args.seed, progress)
    save_checkpoint(model, out, dtype=_storage_dtype(out))
    print(f"mel refiner: validation L1 {summary['validation_l1']} (centroids "
          f"{summary['validation_centroid_l1']}) on {summary['validation_sentences']} unseen "
          f"sentences; {summary['tokens']} tokens, {summary['seconds']} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
