"""Training memory: gradient checkpointing, the stage-1 hidden cache, the memory estimate."""
import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch

from a2llm_ros.checkpoint import init_model
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.model.audio_encoder import n_frames_50
from a2llm_ros.model.chat import n_positions
from a2llm_ros.model.audio_llm import base_causal_lm
from a2llm_ros.tools.training import hidden_cache, memory
from a2llm_ros.tools.training.config import STAGES, TrainConfig, replace_stage
from a2llm_ros.tools.training.loop import make_optimizer, read_losses
from a2llm_ros.tools.training.stages import _freeze, _unfreeze, reset_lora

TINY = A2LLMConfig.preset("tiny")
TINY_TRAIN = TrainConfig.preset("tiny")
B = 2  # rows of the test batch
ACCEL_80GB = memory.ACCELERATORS["a100"].memory_bytes


def _batch(model, seed: int = 0, seconds: float = 1.0, n_speech: int = 20):
    rng = np.random.default_rng(seed)
    waves = [rng.standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1
             for _ in range(B)]
    speech = [rng.integers(0, TINY.codec.n_codes, n_speech) for _ in range(B)]
    motion = [rng.integers(0, TINY.motion.codebook_size, (n_speech // 5, TINY.motion.n_levels))
              for _ in range(B)]
    return model.collate(waves, ["hello there"] * B, speech, motion)


def _trainable(model, lora: bool):
    """Freeze all, then unfreeze as the joint (LoRA + connector) or base run does."""
    model.train()
    _freeze(model)
    if not lora:
        return _unfreeze(list(model.encoder.parameters()) + list(model.adapter.parameters())
                         + list(model.llm.parameters()))
    torch.manual_seed(1)
    reset_lora(model, TINY_TRAIN)
    lora_params = [p for n, p in model.llm.named_parameters() if "lora_" in n]
    with torch.no_grad():  # lora_B starts at 0: make every LoRA gradient non-zero
        for p in lora_params:
            p.normal_(0.0, 0.05)
    return _unfreeze(lora_params + list(model.connector.parameters()))


def _losses_and_grads(checkpointing: bool, lora: bool):
    model = init_model(TINY, seed=0)
    batch = _batch(model)
    params = _trainable(model, lora)
    base_causal_lm(model.llm).gradient_checkpointing = checkpointing
    model.encoder.gradient_checkpointing = checkpointing
    losses = model.forward_train(batch, motion=lora)
    losses["total"].backward()
    return {k: v.detach() for k, v in losses.items()}, [p.grad for p in params]


# ----------------------------------------------------------------------------- checkpointing

@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_keeps_losses_and_gradients(lora):
    plain_losses, plain_grads = _losses_and_grads(False, lora)
    ckpt_losses, ckpt_grads = _losses_and_grads(True, lora)
    assert plain_losses.keys() == ckpt_losses.keys()
    for key, value in plain_losses.items():
        assert torch.allclose(value, ckpt_losses[key], rtol=0, atol=1e-6), key
    assert all(g is not None and bool(g.abs().sum() > 0) for g in plain_grads)
    for a, b in zip(plain_grads, ckpt_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_checkpointing_only_in_training_with_grad(monkeypatch):
    import a2llm_ros.model.audio_encoder as audio_encoder
    import a2llm_ros.model.qwen2 as qwen2
    calls = []

    def counting(fn, *args, **kwargs):
        calls.append(type(fn).__name__)
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)
    monkeypatch.setattr(qwen2, "checkpoint", counting)
    monkeypatch.setattr(audio_encoder, "checkpoint", counting)
    model = init_model(TINY, seed=0)
    batch = _batch(model)
    _trainable(model, lora=False)
    memory.apply_memory_settings(model, dataclasses.replace(TINY_TRAIN,
                                                            gradient_checkpointing=True),
                                 "base", "cpu")
    model.forward_train(batch, motion=False)
    # prefix pass + row pass through every decoder layer, every encoder block once
    assert calls.count("DecoderLayer") == 2 * TINY.llm.n_layers
    assert calls.count("ResidualAttentionBlock") == TINY.audio.n_layers
    calls.clear()
    with torch.no_grad():
        model.forward_train(batch, motion=False)
    model.eval()
    model.forward_train(batch, motion=False)
    assert calls == []


# ----------------------------------------------------------------------------- hidden cache

def _build_toy(root: str) -> None:
    from a2llm_ros.tools.data.synth import build_synthetic
    build_synthetic(root, seed=0, n_pairs=6, n_question_voices=2, workers=1)


@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """Toy data and a finished stage 0 (a few steps) to start connector runs from."""
    from a2llm_ros.tools.training.data import TrainData
    from a2llm_ros.tools.training.stages import Trainer
    root = str(tmp_path_factory.mktemp("flameqa"))
    _build_toy(root)
    cfg = dataclasses.replace(TINY_TRAIN, threads=0)
    steps = {"rvq": 2, "base": 1, "connector": 4, "joint": 1, "affective": 1}
    for run in STAGES:
        cfg = replace_stage(cfg, run, steps=steps[run], batch_size=4, warmup_steps=1,
                            log_every=1, checkpoint_every=0)
    out = str(tmp_path_factory.mktemp("stage0"))
    data = TrainData(root)
    Trainer(cfg, data, out, progress=False).run_stage(0)
    return {"cfg": cfg, "data": data, "out": out}


def _connector_losses(stage0, tmp_path, mode: str):
    from a2llm_ros.tools.training.stages import Trainer
    out = str(tmp_path / mode)
    shutil.copytree(stage0["out"], out)
    cfg = dataclasses.replace(stage0["cfg"], hidden_cache=mode)
    Trainer(cfg, stage0["data"], out, progress=False).run("connector")
    rows = read_losses(os.path.join(out, "connector", "losses.jsonl"))
    return [r["motion_ce"] for r in rows], os.path.join(out, "connector")


def test_connector_losses_same_for_memory_disk_and_recompute(stage0, tmp_path):
    in_memory, _ = _connector_losses(stage0, tmp_path, "memory")
    on_disk, run_dir = _connector_losses(stage0, tmp_path, "disk")
    recomputed, _ = _connector_losses(stage0, tmp_path, "recompute")
    assert len(in_memory) == 4
    assert on_disk == in_memory  # float32 rows stored losslessly
    assert np.allclose(recomputed, in_memory, rtol=1e-5)  # one sample per forward
    folder = os.path.join(run_dir, hidden_cache.CACHE_DIR)
    rows = [len(c) for c in stage0["data"].speech_codes]
    assert hidden_cache.is_complete(folder, rows, TINY.llm.hidden_size)
    assert os.path.getsize(os.path.join(folder, hidden_cache.DATA_FILE)) == \
        sum(rows) * TINY.llm.hidden_size * 4


def _states(rows, width, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, width, generator=g).to(dtype) for n in rows]


def test_disk_cache_round_trips_bfloat16_and_is_reused(tmp_path):
    rows, width, folder = [3, 0, 5, 2], 8, str(tmp_path / "cache")
    states = _states(rows, width, torch.bfloat16)
    batches = lambda: [([0, 1], states[:2]), ([2, 3], states[2:])]  # noqa: E731
    cache = hidden_cache.open_disk_cache(folder, batches, rows, width, torch.device("cpu"),
                                         progress=False)
    assert len(cache) == 4 and cache.nbytes == sum(rows) * width * 2
    for j, h in enumerate(states):
        assert cache[j].dtype == torch.bfloat16 and torch.equal(cache[j], h)

    def must_not_run():
        raise AssertionError("a complete cache must be reused")
    again = hidden_cache.open_disk_cache(folder, must_not_run, rows, width,
                                         torch.device("cpu"), progress=False)
    assert torch.equal(again[2], states[2])


def test_disk_cache_rebuilt_when_data_changed_or_incomplete(tmp_path):
    rows, width, folder = [2, 3], 4, str(tmp_path / "cache")
    first = _states(rows, width, torch.float32, seed=0)
    hidden_cache.write_cache(folder, [([0, 1], first)], rows, width, progress=False)
    new_rows = [2, 4]
    second = _states(new_rows, width, torch.float32, seed=1)
    cache = hidden_cache.open_disk_cache(folder, lambda: [([0, 1], second)], new_rows, width,
                                         torch.device("cpu"), progress=False)
    assert torch.equal(cache[1], second[1])
    os.remove(os.path.join(folder, hidden_cache.INDEX_FILE))  # interrupted build
    assert not hidden_cache.is_complete(folder, new_rows, width)
    with pytest.raises(ValueError, match="sample 1"):
        hidden_cache.write_cache(folder, [([0, 1], first)], new_rows, width, progress=False)


# ----------------------------------------------------------------------------- estimate

def test_param_counts_equal_the_real_tiny_model_and_peft_lora():
    model = init_model(TINY, seed=0)
    counts = memory.param_counts(TINY, TINY_TRAIN.lora_rank, TINY_TRAIN.lora_targets)
    for part in ("encoder", "adapter", "llm", "connector", "motion_tokenizer"):
        assert counts[part] == sum(p.numel() for p in getattr(model, part).parameters()), part
    reset_lora(model, TINY_TRAIN)
    peft_lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    assert counts["lora"] == peft_lora


def test_paper_param_counts_match_step_audio_2_mini_published_config():
    H, F, L, heads, kv, V = 3584, 18944, 28, 28, 4, 158720
    dh = H // heads
    layer = (H * H + H) + 2 * (H * kv * dh + kv * dh) + H * H + 3 * H * F + 2 * H
    llm = 2 * V * H + L * layer + H  # embedding, untied head, layers, final norm
    d, n_layers, mels, ff, ah = 1280, 32, 128, 4 * 1280, 2048
    block = (4 * d * d + 3 * d) + (2 * d * ff + ff + d) + 4 * d
    encoder = (mels * d * 3 + d) + (d * d * 3 + d) + 1500 * d + n_layers * block + 2 * d
    adapter = (d * d * 3 + d) + (d * ah + ah) + (ah * H + H)
    counts = memory.param_counts(A2LLMConfig.preset("paper"))
    assert counts["llm"] == llm and abs(llm / 1e9 - 7.66) < 0.01
    assert counts["encoder"] == encoder and counts["adapter"] == adapter


def test_estimate_matches_the_bytes_of_a_real_tiny_lora_step():
    model = init_model(TINY, seed=0)
    batch = _batch(model)
    params = _trainable(model, lora=True)
    opt = make_optimizer(params, TINY_TRAIN.joint)
    model.forward_train(batch)["total"].backward()
    opt.step()
    est = memory.estimate(TINY, TINY_TRAIN, "joint", device="cpu")

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    moments = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    assert est.bytes["trained weights"] == nbytes(params)
    assert est.bytes["gradients"] == nbytes(p.grad for p in params)
    assert est.bytes["AdamW moments"] == nbytes(moments)
    assert est.bytes["frozen weights"] == nbytes(frozen)


def _saved_bytes(fn, exclude):
    """Bytes of the distinct storages autograd saves while ``fn`` runs (minus ``exclude``)."""
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_activation_formula_matches_saved_tensors_at_tiny(mode):
    model = init_model(TINY, seed=0)
    batch = _batch(model, seconds=2.0, n_speech=50)
    if mode == "lora":
        _trainable(model, lora=True)
    else:
        model.train()
        _freeze(model)
        _unfreeze(list(model.llm.parameters()))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = _saved_bytes(lambda: model.forward_train(batch, motion=False), weights)
    prompt = model.prompt(n_positions(int(batch.mel_lengths[0])))
    P0 = prompt.patch_start
    T = len(prompt.ids) - P0 + int(batch.answer_lengths.max())
    args = (4, mode, TINY_TRAIN.lora_rank, TINY_TRAIN.lora_targets)
    layer = (memory.llm_layer_bytes(TINY.llm, B, T, P0 + T, *args)
             + memory.llm_layer_bytes(TINY.llm, 1, P0, P0, *args))
    head = memory.head_bytes(TINY.llm.vocab_size, TINY.llm.hidden_size,
                             int(batch.answer_lengths.sum()), 4, mode)
    assert measured == pytest.approx(TINY.llm.n_layers * layer + head, rel=0.05)


def test_encoder_activation_formula_matches_saved_tensors_at_tiny():
    model = init_model(TINY, seed=0)
    batch = _batch(model, seconds=2.0)
    model.train()
    _freeze(model)
    _unfreeze(list(model.encoder.parameters()) + list(model.adapter.parameters()))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = _saved_bytes(lambda: model.encode_audio(batch.mel, batch.mel_lengths), weights)
    T50 = n_frames_50(batch.mel.shape[-1])
    formula = (TINY.audio.n_layers * memory.encoder_block_bytes(TINY.audio, B, T50, 4)
               + memory.encoder_stem_bytes(TINY.audio, B, T50, 4))
    assert measured == pytest.approx(formula, rel=0.05)


def test_paper_estimate_is_sane():
    paper, tcfg = A2LLMConfig.preset("paper"), TrainConfig.preset("paper")
    assert tcfg.gradient_checkpointing and tcfg.hidden_cache == "disk"
    one = memory.estimate(paper, tcfg, "joint", 1, "cuda")
    eight = memory.estimate(paper, tcfg, "joint", 8, "cuda")  # distributed: auto = fsdp
    ddp8 = memory.estimate(paper, tcfg, "joint", 8, "cuda", parallelism="ddp")
    gb = 1e9
    # bf16 backbone: 2 B x (7.66 G LLM + 0.64 G encoder + 0.015 G adaptor)
    assert 16.0 * gb < one.bytes["frozen weights"] < 17.0 * gb
    assert one.trained_params == one.params["lora"] + one.params["connector"]
    assert 0.1e9 < one.params["lora"] < 0.2e9  # r = 64 on all seven projections
    assert eight.parallelism == "fsdp" and one.parallelism == memory.ONE_PROCESS
    # FSDP: the decoder layers' bf16 weights split over 8; encoder, embeddings, head whole
    layers = 2 * one.params["llm_layers"]
    assert eight.bytes["frozen weights"] == pytest.approx(
        one.bytes["frozen weights"] - layers * 7 / 8)
    assert one.total_bytes < ACCEL_80GB and eight.total_bytes < one.total_bytes / 2
    assert one.bytes["frozen weights"] == ddp8.bytes["frozen weights"]  # DDP replicates
    # the connector run shards nothing: DDP whatever the strategy
    assert memory.estimate(paper, tcfg, "connector", 8, "cuda").parallelism == "ddp"
    assert ddp8.total_bytes < one.total_bytes < ACCEL_80GB
    # checkpointing: far fewer activations than without
    plain = memory.estimate(paper, dataclasses.replace(tcfg, gradient_checkpointing=False),
                            "joint", 1, "cuda")
    assert plain.bytes["LLM activations"] > 8 * one.bytes["LLM activations"]
    # 100 k samples x 125 speech tokens x 3584 x bf16 ~ 90 GB, on disk, not on the GPU
    conn = memory.estimate(paper, tcfg, "connector", 1, "cuda", n_samples=100_000)
    assert 80 * gb < conn.hidden_cache_bytes < 100 * gb and "hidden cache" not in conn.bytes
    # FLOPs: ~ (4 + 2) x 6.5 G x tokens per step; A100 slower than H100 by their peaks
    a100, h100 = (one.step_seconds(memory.ACCELERATORS[k]) for k in ("a100", "h100"))
    assert 0.3 < h100 < a100 < 5.0


def test_main_prints_reports_and_the_docs_table(capsys):
    assert memory.main(["--preset", "paper", "--run", "joint", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "paper joint: 8 device(s), fsdp" in out and "A100" in out
    assert memory.main(["--table"]) == 0
    table = capsys.readouterr().out
    assert "| paper | joint | 8 (fsdp) |" in table and "| edge | joint | 8 (ddp) |" in table
    assert "| edge | connector | 1 (one process) |" in table
    # the table in docs/training.md is this one (regenerate it with --table)
    docs = os.path.join(os.path.dirname(__file__), "..", "docs", "training.md")
    rows = [line for line in open(docs).read().splitlines()
            if line.startswith(("| paper |", "| edge |"))]
    assert rows == [line for line in table.splitlines()
                    if line.startswith(("| paper |", "| edge |"))]
