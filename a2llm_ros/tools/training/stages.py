"""The A²-LLM training curriculum, stage by stage.

=====  ============  =====================================================
stage  run           what is trained (everything else frozen)
=====  ============  =====================================================
0      ``rvq``       speech codec fit (k-means on the answers' log-mels) and
                     the motion RVQ-VAE on answer FLAME windows
0      ``base``      audio encoder + LLM on the LM loss (text + speech) —
                     stands in for the pretrained audio LLM of the paper
                     when there is none (``tiny``); skipped when steps = 0
1      ``connector`` Motion Connector on frozen LLM hidden states (cached)
2      ``joint``     "LoRA reset": any LoRA from before is discarded, a
                     fresh LoRA (rank ``lora_rank``) + the connector are
                     trained on LM + motion loss
3      ``affective`` the stage-2 LoRA + connector, on the high-intensity
                     subset (plus ``affective_replay`` of the rest)
=====  ============  =====================================================

Each run starts from the previous run's ``checkpoint/`` in the output
directory, writes its own, and is skipped when already ``done``.  The final
checkpoint (``final/``) merges the LoRA when ``merge_lora`` and stores
tensors in ``storage_dtype``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from a2llm_ros.checkpoint import init_model, load_checkpoint, save_checkpoint
from a2llm_ros.checkpoint_files import read_config, resolve_checkpoint
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.model.a2llm import A2LLM, TASK_ANSWER, TASK_TRANSCRIBE, TrainBatch
from a2llm_ros.model.audio_llm import base_causal_lm
from a2llm_ros.model.step_audio import is_step_folder, step_config
from a2llm_ros.tools.training.config import SHARDED_RUNS, STAGE_RUNS, TrainConfig, autocast_dtype
from a2llm_ros.tools.training.ctc import CTCHead, ctc_loss, greedy_decode
from a2llm_ros.tools.training.data import RUN_IDS, TrainData, sample_rng, segments_for
from a2llm_ros.tools.training.distributed import (DistContext, equal_shares, full_parameters,
                                                  global_objective, shard_layers)
from a2llm_ros.tools.training.hidden_cache import (CACHE_DIR, HiddenStates, RecomputedHidden,
                                                   open_disk_cache, shard_range)
from a2llm_ros.tools.training.loop import is_done, mark_done, run_loop
from a2llm_ros.tools.training.memory import apply_memory_settings

RUN_ORDER = ("rvq", "base", "connector", "joint", "affective")
FINAL_DIR = "final"
#: Training-only modules (the CTC head) beside a resumable checkpoint.
AUX_FILE = "training_aux.safetensors"
#: Transcription rows are drawn as if from steps shifted by this (independent draws).
ASR_STEP_OFFSET = 1_000_003
TRAINING_INFO = "training.json"
#: Stream tag of the per-step dropout seeds (sample_rng uses 1 for augmentation).
DROPOUT_STREAM = 2


class Trainer:
    """Runs curriculum stages into ``out_dir`` (see module docstring)."""

    def __init__(self, cfg: TrainConfig, data: TrainData, out_dir: str,
                 model_config: Optional[A2LLMConfig] = None, init: Optional[str] = None,
                 progress: bool = True, resume: bool = True,
                 ctx: Optional[DistContext] = None):
        """``ctx``: this process's place in a ``torchrun`` job (default: alone)."""
        self.cfg, self.data, self.out_dir = cfg, data, out_dir
        self.ctx = ctx or DistContext()
        self.model_config = model_config or start_config(cfg.preset_name, init)
        backbone = self.model_config.llm.backbone
        if cfg.base.steps == 0 and not init and not (backbone and is_step_folder(backbone)):
            raise ValueError(f"training preset {cfg.preset_name!r} skips the base run "
                             f"(base.steps 0), so it needs a pretrained audio LLM: --init "
                             f"a Step-Audio-2-mini folder or a checkpoint made on one "
                             f"(`a2llm init --preset {cfg.preset_name} --backbone DIR`)")
        self.init, self.progress, self.resume = init, progress, resume
        self.device = _pick_device(self.ctx.device_name(cfg.device))
        self.autocast = autocast_dtype(cfg.precision, str(self.device))
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        os.makedirs(out_dir, exist_ok=True)

    # -- bookkeeping --------------------------------------------------------------------
    def run_dir(self, run: str) -> str:
        return os.path.join(self.out_dir, run)

    def checkpoint_dir(self, run: str) -> str:
        return os.path.join(self.run_dir(run), "checkpoint")

    def _previous_checkpoint(self, run: str) -> Optional[str]:
        index = RUN_ORDER.index(run)
        for prev in reversed(RUN_ORDER[:index]):
            path = self.checkpoint_dir(prev)
            if os.path.isfile(os.path.join(path, "config.json")):
                return path
        return None

    def _load_start(self, run: str) -> A2LLM:
        prev = self._previous_checkpoint(run)
        if prev is None:
            if RUN_ORDER.index(run) > 0:
                raise FileNotFoundError(f"training run {run!r} needs the checkpoint of an "
                                        f"earlier run in {self.out_dir} (run stage 0 first)")
            if self.init and not is_step_folder(self.init):
                return load_checkpoint(self.init, expected_config=self.model_config)
            # no init, or a bare Step-Audio-2-mini folder (its weights, new A²-LLM parts)
            return init_model(self.model_config, seed=self.cfg.seed)
        return load_checkpoint(prev, expected_config=self.model_config)

    # -- public -------------------------------------------------------------------------
    def run_stage(self, stage: int) -> List[dict]:
        """Run every run of curriculum stage ``stage`` (0-3); returns summaries."""
        if stage not in STAGE_RUNS:
            raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage}")
        return [self.run(name) for name in STAGE_RUNS[stage]]

    def run(self, name: str) -> dict:
        """One run (skipped when its ``done.json`` exists)."""
        run_dir = self.run_dir(name)
        if is_done(run_dir):
            with open(os.path.join(run_dir, "done.json")) as f:
                summary = json.load(f)
            if self.ctx.is_main:
                print(f"{name}: already done ({summary.get('seconds', '?')} s), skipping")
            return summary
        torch.manual_seed(self.cfg.seed * 1000 + RUN_IDS[name])
        model = self._load_start(name).to(self.device)
        report = apply_memory_settings(model, self.cfg, name, self.device, self.data)
        if self.ctx.is_main:
            print(report)
        summary = getattr(self, "_run_" + name)(model, run_dir)
        self._saver(model)(self.checkpoint_dir(name))  # rank 0 writes (FSDP: all gather)
        if self.ctx.is_main:  # one writer; the others wait, then read
            mark_done(run_dir, summary)
        self.ctx.barrier()
        return summary

    def finalize(self, out: Optional[str] = None) -> str:
        """Final checkpoint from the last finished run (LoRA merged when configured)."""
        last = next((r for r in reversed(RUN_ORDER) if is_done(self.run_dir(r))), None)
        if last is None:
            raise FileNotFoundError(f"no finished training run in {self.out_dir}")
        model = load_checkpoint(self.checkpoint_dir(last))
        merged = self.cfg.merge_lora and hasattr(model.llm, "peft_config")
        if merged:
            model.llm = model.llm.merge_and_unload()
        out = out or os.path.join(self.out_dir, FINAL_DIR)
        shutil.rmtree(out, ignore_errors=True)
        dtype = getattr(torch, self.cfg.storage_dtype) if self.cfg.storage_dtype else None
        # a merged LoRA changed the backbone's weights: they are stored (full weights);
        # unmerged, the adapter goes to lora/ beside the backbone reference
        save_checkpoint(model, out, dtype=dtype, backbone_weights=merged)
        with open(os.path.join(out, TRAINING_INFO), "w") as f:
            json.dump(self.info(last), f, indent=2)
        return out

    def info(self, last_run: str) -> dict:
        """Provenance written beside the final checkpoint."""
        runs = {}
        for name in RUN_ORDER:
            path = os.path.join(self.run_dir(name), "done.json")
            if os.path.isfile(path):
                with open(path) as f:
                    runs[name] = json.load(f)
        return {"train_config": self.cfg.to_dict(), "last_run": last_run, "runs": runs,
                "total_seconds": round(sum(r.get("seconds", 0) for r in runs.values()), 1),
                "n_train_samples": len(self.data), "torch_threads": torch.get_num_threads(),
                "device": str(self.device)}

    # -- save / load of the model part of the resumable state ----------------------------
    def _save(self, model: A2LLM, path: str, aux: Optional[torch.nn.Module] = None) -> None:
        shutil.rmtree(path, ignore_errors=True)
        save_checkpoint(model, path)
        if aux is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in aux.state_dict().items()},
                      os.path.join(path, AUX_FILE))

    def _saver(self, model: A2LLM, aux: Optional[torch.nn.Module] = None):
        """``save(path)`` for every rank: FSDP shards are gathered, rank 0 writes."""
        def save(path: str) -> None:
            with full_parameters(model, keep=self.ctx.is_main):
                if self.ctx.is_main:
                    self._save(model, path, aux)
        return save

    def _loader(self, model: A2LLM, aux: Optional[torch.nn.Module] = None):
        def load(path: str) -> None:
            other = load_checkpoint(path)
            with full_parameters(model, load=True):  # FSDP: each rank keeps its shard
                _copy_weights(other, model)
            if aux is not None:
                aux.load_state_dict(load_file(os.path.join(path, AUX_FILE)))
        return load

    # -- runs ---------------------------------------------------------------------------
    def _run_rvq(self, model: A2LLM, run_dir: str) -> dict:
        t0 = time.time()
        waves = self.data.unique_answer_waves(self.cfg.codec_fit_max_samples)
        model.speech_tokenizer.fit(waves, seed=self.cfg.seed)
        codec_s = time.time() - t0
        mt = model.motion_tokenizer
        mt.set_normalization_from_frames(self.data.flame_frames())
        mt.train()
        sc = self.cfg.rvq
        # EMA codebooks see the global batch (equal to one process); detached after the run
        mt.quantizer.gather = self.ctx.gather if self.ctx.distributed else None

        def step(i: int) -> Dict[str, torch.Tensor]:
            x = self.data.rvq_windows(i, self.cfg.seed, sc.batch_size,
                                      self.cfg.rvq_window_frames)  # [B, T, D]
            x = np.stack(self.ctx.shard(x, "rvq.batch_size"))  # this rank's windows
            _, losses = mt(torch.as_tensor(x, device=self.device))
            return equal_shares(losses, self.ctx)

        params = list(mt.parameters())
        summary = run_loop("stage0/rvq", run_dir, sc, params, step,
                           self._saver(model), self._loader(model),
                           resume=self.resume, progress=self.progress, ctx=self.ctx,
                           autocast=self.autocast)
        mt.eval()
        mt.quantizer.gather = None
        summary["codec_fit_seconds"] = round(codec_s, 2)
        summary["seconds"] = round(summary["seconds"] + codec_s, 1)
        return summary

    def _prepare_codes(self, model: A2LLM) -> None:
        self.data.compute_speech_codes(model.speech_tokenizer)
        self.data.compute_motion_codes(model.motion_tokenizer)

    def _lm_step(self, model: A2LLM, run: str, motion: bool,
                 pool: Optional[Sequence[int]] = None, replay: float = 0.0,
                 n_asr: int = 0, ctc_head: Optional[CTCHead] = None):
        """Step function: answer rows (+ ``n_asr`` transcription rows) -> losses.

        With ``ctc_head`` the auxiliary CTC loss on every row's question audio
        is added (``ctc``, weight ``ctc_weight``).
        """
        sc = self.cfg.stage(run)

        seed, ctx, aug = self.cfg.seed, self.ctx, self.cfg.augment

        def step(i: int) -> Dict[str, torch.Tensor]:
            seed_step(seed, run, i, ctx.rank)  # dropout masks (LoRA) of this rank and step
            drawn = self.data.draw(run, i, seed, sc.batch_size, pool, replay)
            mine = ctx.shard(range(len(drawn)), f"{run}.batch_size")  # global positions
            idx = [drawn[p] for p in mine]
            items = self.data.items(idx, [sample_rng(seed, run, i, p) for p in mine], aug)
            tasks = [TASK_ANSWER] * len(items)
            if n_asr:
                asr_drawn = self.data.draw(run, i + ASR_STEP_OFFSET, seed, n_asr)
                asr_mine = ctx.shard(range(n_asr), "asr_samples")
                asr_idx = [asr_drawn[p] for p in asr_mine]
                rngs = [sample_rng(seed, run, i, len(drawn) + p) for p in asr_mine]
                items += self.data.transcription_items(asr_idx, rngs, aug)
                tasks += [TASK_TRANSCRIBE] * len(asr_idx)
                idx = idx + asr_idx
            batch = model.collate_samples(items, tasks).to(self.device)
            losses = model.forward_train(batch, motion=motion,
                                         motion_weight=self.cfg.motion_weight,
                                         asr_weight=self.cfg.asr_weight)
            weights = {"text_ce": 1.0, "speech_ce": 1.0, "asr_ce": self.cfg.asr_weight}
            if motion:
                weights["motion_ce"] = self.cfg.motion_weight
            if ctc_head is not None:
                texts = [self.data.samples[j].question_text for j in idx]
                losses["ctc"] = ctc_loss(ctc_head, model.encoder, batch.mel,
                                         batch.mel_lengths, texts)
                losses["total"] = losses["total"] + self.cfg.ctc_weight * losses["ctc"]
                weights["ctc"] = self.cfg.ctc_weight
            return global_objective(losses, term_counts(batch), ctx, weights)
        return step

    def _run_base(self, model: A2LLM, run_dir: str) -> dict:
        if self.cfg.base.steps == 0:
            return {"run": "stage0/base", "steps": 0, "seconds": 0.0, "skipped": True}
        self._prepare_codes(model)
        model.train()
        _freeze(model)
        params = _unfreeze(list(model.encoder.parameters()) + list(model.adapter.parameters())
                           + list(model.llm.parameters()))
        head = None
        if self.cfg.ctc_weight > 0:
            head = CTCHead(model.cfg.audio.d_model).to(self.device)
            params += list(head.parameters())
        params = self._shard(model, params, "base")
        summary = run_loop("stage0/base", run_dir, self.cfg.base, params,
                           self._lm_step(model, "base", motion=False,
                                         n_asr=self.cfg.asr_samples, ctc_head=head),
                           self._saver(model, head), self._loader(model, head),
                           resume=self.resume, progress=self.progress, ctx=self.ctx,
                           autocast=self.autocast)
        model.eval()
        if head is not None:
            summary["ctc_greedy_example"] = self._ctc_example(model, head)
        return summary

    def _ctc_example(self, model: A2LLM, head: CTCHead) -> List[str]:
        """CTC best paths of two training questions (a sanity line in done.json)."""
        batch = model.collate_samples(self.data.items([0, len(self.data) - 1])).to(self.device)
        return greedy_decode(head, model.encoder, batch.mel, batch.mel_lengths)

    def _run_connector(self, model: A2LLM, run_dir: str) -> dict:
        self._prepare_codes(model)
        model.eval()
        _freeze(model)
        t0 = time.time()
        hidden = self._cache_hidden(model, run_dir)
        cache_s = time.time() - t0
        model.connector.train()
        params = _unfreeze(list(model.connector.parameters()))
        sc = self.cfg.connector

        def step(i: int) -> Dict[str, torch.Tensor]:
            seed_step(self.cfg.seed, "connector", i, self.ctx.rank)  # connector dropout
            idx = self.data.draw("connector", i, self.cfg.seed, sc.batch_size)
            idx = self.ctx.shard(idx, "connector.batch_size")
            batch = self._motion_batch(model, idx)
            losses = model.motion_loss_from_hidden([hidden[j] for j in idx], batch)
            counts = {"motion": float(batch.motion_lengths.sum())}
            return global_objective(dict(losses, total=losses["motion_ce"]), counts,
                                    self.ctx, {"motion_ce": 1.0})

        summary = run_loop("stage1/connector", run_dir, sc, params, step,
                           self._saver(model), self._loader(model),
                           resume=self.resume, progress=self.progress, ctx=self.ctx,
                           autocast=self.autocast)
        model.eval()
        summary["hidden_cache_seconds"] = round(cache_s, 2)
        return summary

    def _cache_hidden(self, model: A2LLM, run_dir: str, batch_size: int = 16) -> HiddenStates:
        """Frozen-LLM hidden states at every sample's speech inputs, ``hidden[j]`` [n_j, H],
        kept as ``cfg.hidden_cache`` says (see :mod:`a2llm_ros.tools.training.hidden_cache`)."""
        def states(idx: Sequence[int]) -> List[torch.Tensor]:
            batch = model.collate_samples(self.data.items(idx)).to(self.device)
            return [h.detach() for h in model.speech_hidden_states(batch)]  # [n_i, H]

        def batches(lo: int = 0, hi: int = len(self.data)):
            for start in range(lo, hi, batch_size):
                idx = list(range(start, min(start + batch_size, hi)))
                yield idx, states(idx)
        if self.cfg.hidden_cache == "recompute":
            return RecomputedHidden(lambda j: states([j])[0], len(self.data))
        if self.cfg.hidden_cache == "disk":  # each rank computes its share of the samples
            ctx = self.ctx
            rows = [len(codes) for codes in self.data.speech_codes]
            mine = shard_range(len(rows), ctx.rank, ctx.world_size)
            return open_disk_cache(os.path.join(run_dir, CACHE_DIR), lambda: batches(*mine),
                                   rows, model.cfg.llm.hidden_size, self.device,
                                   self.progress and ctx.is_main, ctx.rank, ctx.world_size,
                                   ctx.barrier)
        return [h for _, hs in batches() for h in hs]

    def _motion_batch(self, model: A2LLM, idx: Sequence[int]) -> TrainBatch:
        """A TrainBatch holding only the motion targets of ``idx`` (for the connector)."""
        L = model.cfg.motion.n_levels
        n_seg = [segments_for(self.data.speech_codes[i], self.data.motion_codes[i]) for i in idx]
        S = max(max(n_seg), 1)
        codes = torch.zeros(len(idx), S, L, dtype=torch.long)
        for row, (i, n) in enumerate(zip(idx, n_seg)):
            codes[row, :n] = torch.as_tensor(self.data.motion_codes[i][:n])
        empty = torch.zeros(len(idx), 0)
        return TrainBatch(mel=empty, mel_lengths=empty.long(), answer_ids=empty.long(),
                          answer_is_text=empty.bool(), answer_is_speech=empty.bool(),
                          answer_lengths=empty.long(),
                          motion_codes=codes.to(self.device),
                          motion_lengths=torch.tensor(n_seg, device=self.device))

    def _run_joint(self, model: A2LLM, run_dir: str) -> dict:
        self._prepare_codes(model)
        reset_lora(model, self.cfg)
        return self._lora_run(model, run_dir, "joint", "stage2/joint")

    def _run_affective(self, model: A2LLM, run_dir: str) -> dict:
        self._prepare_codes(model)
        if not hasattr(model.llm, "peft_config"):
            reset_lora(model, self.cfg)  # stage 2 skipped: start a LoRA here
        pool = self.data.high_intensity()
        if not pool:
            raise ValueError("stage 3 needs high-intensity samples; the training data has none")
        return self._lora_run(model, run_dir, "affective", "stage3/affective", pool,
                              self.cfg.affective_replay)

    def _shard(self, model: A2LLM, params: List[torch.nn.Parameter], run: str
               ) -> List[torch.nn.Parameter]:
        """FSDP (``distributed: fsdp`` under torchrun, ``run`` in :data:`SHARDED_RUNS`):
        the LLM's decoder layers sharded over the ranks; ``params`` with the sharded
        ones replaced.  Else ``params``."""
        if not self.ctx.distributed or self.cfg.strategy != "fsdp" or run not in SHARDED_RUNS:
            return params
        return shard_layers(base_causal_lm(model.llm).model.layers, params)

    def _lora_run(self, model: A2LLM, run_dir: str, run: str, label: str,
                  pool: Optional[Sequence[int]] = None, replay: float = 0.0) -> dict:
        model.train()
        _freeze(model)
        lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
        params = self._shard(model, _unfreeze(lora + list(model.connector.parameters())), run)
        summary = run_loop(label, run_dir, self.cfg.stage(run), params,
                           self._lm_step(model, run, motion=True, pool=pool, replay=replay,
                                         n_asr=self.cfg.asr_samples_lora),
                           self._saver(model), self._loader(model),
                           resume=self.resume, progress=self.progress, ctx=self.ctx,
                           autocast=self.autocast)
        model.eval()
        summary["lora_params"] = sum(p.numel() for p in lora)
        return summary


# ----------------------------------------------------------------------------- helpers

def term_counts(batch: TrainBatch) -> Dict[str, float]:
    """Labelled tokens per loss term of a batch (what each token mean divides by):
    answer text and speech tokens, transcription tokens, motion segments, rows."""
    B, La = batch.answer_ids.shape
    answer = torch.ones(B, dtype=torch.bool, device=batch.answer_ids.device)
    if batch.task is not None:
        answer = batch.task == TASK_ANSWER
    inside = torch.arange(La, device=answer.device)[None] < batch.answer_lengths[:, None]
    text = batch.answer_is_text & inside & answer[:, None]  # [B, La]
    return {"text": float(text.sum()), "speech": float((inside & answer[:, None]).sum()
                                                       - text.sum()),
            "asr": float((inside & ~answer[:, None]).sum()),
            "motion": float(batch.motion_lengths[answer].sum()), "rows": float(B)}


def seed_step(seed: int, run: str, step: int, rank: int) -> None:
    """Seed torch's generator (dropout) from (seed, run, step, rank): ranks draw
    independent masks for their rows, and a resumed run draws the ones it would have.
    (Not for the RVQ run: its dead-code restarts must agree on every rank.)"""
    key = np.random.default_rng([seed, RUN_IDS[run], step, DROPOUT_STREAM, rank])
    torch.manual_seed(int(key.integers(2 ** 62)))


def start_config(preset: str, init: Optional[str] = None) -> A2LLMConfig:
    """The model config a curriculum trains: the ``init`` checkpoint's own config
    (checkpoints carry it), a bare Step-Audio-2-mini folder's sizes with the
    ``preset``'s other parts, else the ``preset`` itself."""
    if not init:
        return A2LLMConfig.preset(preset)
    if is_step_folder(init):
        return step_config(init, preset)
    return read_config(resolve_checkpoint(init))


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _freeze(model: A2LLM) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _unfreeze(params: List[torch.nn.Parameter]) -> List[torch.nn.Parameter]:
    for p in params:
        p.requires_grad_(True)
    return params


def reset_lora(model: A2LLM, cfg: TrainConfig) -> None:
    """"LoRA reset": discard any adapter (unmerged) and attach a fresh one."""
    from a2llm_ros.model.quantize import quiet_torchao_on_cpu
    quiet_torchao_on_cpu()  # peft imports torchao when it is installed
    from peft import LoraConfig, get_peft_model
    if hasattr(model.llm, "peft_config"):
        model.llm = model.llm.unload()  # removes the LoRA layers without merging
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none")
    model.llm = get_peft_model(model.llm, lora)


@torch.no_grad()
def _copy_weights(src: A2LLM, dst: A2LLM) -> None:
    """Copy every tensor (parameters, buffers, codec) of ``src`` into ``dst``."""
    from a2llm_ros.model.speech_codec import codec_state_dict, load_codec_state_dict
    src_state = src.state_dict()
    dst_state = dst.state_dict()
    missing = sorted(set(dst_state) - set(src_state))
    if missing:
        raise KeyError(f"resume state lacks {len(missing)} tensors, e.g. {missing[:3]}")
    for key, value in dst_state.items():
        value.copy_(src_state[key].to(value.device))
    load_codec_state_dict(dst.speech_tokenizer, dst.token2wav,
                          codec_state_dict(src.speech_tokenizer, src.token2wav))
