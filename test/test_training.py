"""Training curriculum: config files, resumable loop, stage semantics and a smoke run."""
import json
import os

import numpy as np
import pytest
import torch

from a2llm_ros.tools.training.config import (STAGES, TrainConfig, config_yaml, load_train_config,
                                             replace_stage)
from a2llm_ros.tools.training.loop import (lr_at, load_optimizer_tensors, make_optimizer,
                                           optimizer_tensors, read_losses, run_loop)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("preset", ["tiny", "edge", "paper"])
def test_config_file_per_preset_matches_preset(preset):
    path = os.path.join(ROOT, "config", f"train_{preset}.yaml")
    cfg = load_train_config(path)
    assert cfg == TrainConfig.preset(preset)
    assert cfg.preset_name == preset


def test_paper_preset_uses_lora_rank_64_and_tiny_is_smaller():
    assert TrainConfig.preset("paper").lora_rank == 64
    assert TrainConfig.preset("tiny").lora_rank < 64


def test_unknown_config_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("preset: tiny\njoint:\n  stepz: 3\n")
    with pytest.raises(KeyError, match="joint.stepz"):
        load_train_config(str(path))


def test_yaml_round_trip(tmp_path):
    cfg = replace_stage(TrainConfig.preset("tiny"), "joint", steps=7)
    path = tmp_path / "c.yaml"
    path.write_text(config_yaml(cfg))
    assert load_train_config(str(path)) == cfg


# ----------------------------------------------------------------------------- loop

def test_lr_schedule_warms_up_then_decays_to_floor():
    sc = TrainConfig.preset("tiny").base
    lrs = [lr_at(s, sc) for s in range(sc.steps)]
    assert lrs[0] < lrs[sc.warmup_steps - 1] == pytest.approx(sc.lr)
    assert lrs[-1] == pytest.approx(sc.lr * sc.min_lr_ratio, rel=0.05)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[sc.warmup_steps:], lrs[sc.warmup_steps + 1:]))


def test_optimizer_state_round_trips_through_tensors():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = make_optimizer(list(net.parameters()), TrainConfig.preset("tiny").base)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    tensors = optimizer_tensors(opt)
    other = make_optimizer(list(net.parameters()), TrainConfig.preset("tiny").base)
    load_optimizer_tensors(other, tensors)
    for k, v in optimizer_tensors(other).items():
        assert torch.equal(v, tensors[k]), k


def _toy_run(run_dir, steps, stop_after=None):
    """Regression on fixed data; raises KeyboardInterrupt after ``stop_after`` steps."""
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    sc = replace_stage(TrainConfig.preset("tiny"), "base", steps=steps, warmup_steps=2,
                       log_every=1, checkpoint_every=2).base
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def step(i):
        if stop_after is not None and i == stop_after:
            raise KeyboardInterrupt
        rows = torch.as_tensor(np.random.default_rng(i).integers(64, size=8))
        return {"total": ((net(x[rows]) - y[rows]) ** 2).mean()}

    def save(path):
        os.makedirs(path, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  os.path.join(path, "w.safetensors"))

    def load(path):
        net.load_state_dict(load_file(os.path.join(path, "w.safetensors")))
    run_loop("toy", str(run_dir), sc, list(net.parameters()), step, save, load,
             progress=False)
    return net


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    whole = _toy_run(tmp_path / "a", steps=10)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "b", steps=10, stop_after=7)
    assert os.path.isfile(tmp_path / "b" / "resume" / "state.json")
    resumed = _toy_run(tmp_path / "b", steps=10)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    steps = [r["step"] for r in read_losses(str(tmp_path / "b" / "losses.jsonl"))]
    assert steps == list(range(1, 11))


# ----------------------------------------------------------------------------- smoke run

@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from a2llm_ros.tools.data.synth import build_synthetic
    root = str(tmp_path_factory.mktemp("flameqa"))
    build_synthetic(root, seed=0, n_pairs=6, n_question_voices=2, workers=1)
    return root


@pytest.fixture(scope="module")
def smoke_run(toy_data, tmp_path_factory):
    """All four stages on the toy set with very few steps (the 2-minute smoke training)."""
    from a2llm_ros.tools.training.data import TrainData
    from a2llm_ros.tools.training.stages import Trainer
    cfg = TrainConfig.preset("tiny", threads=0)
    steps = {"rvq": 80, "base": 12, "connector": 20, "joint": 6, "affective": 4}
    for run in STAGES:
        cfg = replace_stage(cfg, run, steps=steps[run], batch_size=4, warmup_steps=2,
                            log_every=steps[run] // 4, checkpoint_every=5)
    out = str(tmp_path_factory.mktemp("train"))
    data = TrainData(toy_data)
    trainer = Trainer(cfg, data, out, progress=False)
    summaries = [s for stage in range(4) for s in trainer.run_stage(stage)]
    final = trainer.finalize()
    return {"out": out, "final": final, "trainer": trainer, "summaries": summaries,
            "data": toy_data}


@pytest.mark.slow
def test_smoke_training_writes_every_run(smoke_run):
    out = smoke_run["out"]
    for run in STAGES:
        rows = read_losses(os.path.join(out, run, "losses.jsonl"))
        assert rows and all(np.isfinite(r["total"]) for r in rows), run
        assert os.path.isfile(os.path.join(out, run, "done.json"))
        assert os.path.isfile(os.path.join(out, run, "checkpoint", "config.json"))
    from a2llm_ros.tools.training.plot import plot_losses
    png = plot_losses(out)
    assert os.path.getsize(png) > 10_000
    rvq = read_losses(os.path.join(out, "rvq", "losses.jsonl"))
    assert rvq[-1]["recon"] < rvq[0]["recon"]


@pytest.mark.slow
def test_stage1_freezes_llm_and_stage2_resets_lora(smoke_run):
    from a2llm_ros.checkpoint import load_checkpoint
    out = smoke_run["out"]
    base = load_checkpoint(os.path.join(out, "base", "checkpoint"))
    conn = load_checkpoint(os.path.join(out, "connector", "checkpoint"))
    for (name, a), (_, b) in zip(base.llm.named_parameters(), conn.llm.named_parameters()):
        assert torch.equal(a, b), f"stage 1 changed the frozen LLM ({name})"
    changed = [k for k, v in base.connector.state_dict().items()
               if not torch.equal(v, conn.connector.state_dict()[k])]
    assert changed, "stage 1 did not train the connector"
    joint = load_checkpoint(os.path.join(out, "joint", "checkpoint"))
    assert hasattr(joint.llm, "peft_config")
    lora = {n: p for n, p in joint.llm.named_parameters() if "lora_" in n}
    assert lora and next(iter(joint.llm.peft_config.values())).r == TrainConfig.preset("tiny") \
        .lora_rank
    # the frozen base weights under the adapter are still stage 1's
    merged_free = joint.llm.get_base_model()
    for name, p in conn.llm.named_parameters():
        if "embed" in name:
            q = dict(merged_free.named_parameters())[name]
            assert torch.equal(p, q)


@pytest.mark.slow
def test_final_checkpoint_is_merged_small_and_generates(smoke_run):
    from a2llm_ros.checkpoint import load_checkpoint
    from a2llm_ros.tools.data.flameqa import FlameQAReader
    from a2llm_ros.generation import GenerationConfig, StreamingGenerator
    from a2llm_ros.engines.torch_backend import TorchBackend
    final = smoke_run["final"]
    meta = json.load(open(os.path.join(final, "config.json")))
    assert meta["lora"] is False and meta["storage_dtype"] == "float16"
    assert os.path.getsize(os.path.join(final, "model.safetensors")) < 30e6
    info = json.load(open(os.path.join(final, "training.json")))
    assert set(info["runs"]) == set(STAGES)
    model = load_checkpoint(final)
    sample = next(iter(FlameQAReader(smoke_run["data"], split="test")))
    res = StreamingGenerator(TorchBackend(model),
                             GenerationConfig(greedy=True, max_speech_tokens=15)) \
        .generate(sample.question_audio)
    assert res.frames.shape[0] == len(res.audio) // 640
    assert np.isfinite(res.frames).all()


@pytest.mark.slow
def test_finished_runs_are_skipped(smoke_run, capsys):
    trainer = smoke_run["trainer"]
    before = os.path.getmtime(os.path.join(smoke_run["out"], "joint", "done.json"))
    trainer.run_stage(2)
    assert "already done" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(smoke_run["out"], "joint", "done.json")) == before


@pytest.mark.slow
def test_stage3_draws_from_high_intensity_subset(smoke_run):
    data = smoke_run["trainer"].data
    pool = data.high_intensity()
    assert pool and len(pool) < len(data)
    idx = data.draw("affective", 0, 0, 16, pool, replay=0.25)
    assert sum(i in pool for i in idx) == 12


@pytest.mark.slow
def test_eval_report_has_every_metric(smoke_run, tmp_path):
    from a2llm_ros.tools.evaluation import evaluate, markdown_report, write_report
    from a2llm_ros.generation import GenerationConfig
    from a2llm_ros.tools.metrics import METRIC_ORDER
    report = evaluate(smoke_run["final"], smoke_run["data"], split="test", limit=2,
                      gen_cfg=GenerationConfig(greedy=True, max_speech_tokens=40),
                      progress=False)
    write_report(report, str(tmp_path / "r.json"), str(tmp_path / "r.md"))
    stored = json.load(open(tmp_path / "r.json"))
    for key in METRIC_ORDER:
        assert key in stored["metrics"], key
    for key in ("text_accuracy", "asr_grammar_accuracy", "wer_generated", "wer_reference",
                "wer_gap_points"):
        assert key in stored["answers"], key
    md = markdown_report(report)
    assert "MOD (mm)" in md and "Peak align. (ms)" in md and "PocketSphinx" in md


def test_ctc_targets_and_loss_decrease_on_one_batch():
    from a2llm_ros.model.audio_encoder import AudioEncoder
    from a2llm_ros.model.configs import AudioEncoderConfig
    from a2llm_ros.tools.training.ctc import CTC_SYMBOLS, CTCHead, ctc_loss, ctc_targets
    ids = ctc_targets("What's the time, Robo?")
    assert "".join(CTC_SYMBOLS[i - 1] for i in ids) == "what's the time robo"
    torch.manual_seed(0)
    enc = AudioEncoder(AudioEncoderConfig.preset("tiny"))
    head = CTCHead(enc.cfg.d_model)
    mel = torch.randn(2, enc.cfg.n_mels, 120)
    lengths = torch.tensor([120, 90])
    texts = ["hello there", "yes"]
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), 3e-3)
    first = None
    for _ in range(30):
        loss = ctc_loss(head, enc, mel, lengths, texts)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(first) and float(loss) < 0.5 * first


def test_train_command_reports_missing_data_clearly(tmp_path, capsys):
    from a2llm_ros.tools.cli import main
    rc = main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "cannot read the training data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
