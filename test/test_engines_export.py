"""ONNX export of every component (tiny preset) and ONNX Runtime parity with PyTorch."""
import os

import numpy as np
import onnx
import pytest
import torch

from a2llm_ros.checkpoint import init_model, save_checkpoint
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.engines import BackendConfig, EngineError
from a2llm_ros.engines.manifest import GRAPHS
from a2llm_ros.tools.export.graphs import OPSET, prompt_overhead, token2wav_initial_state
from a2llm_ros.tools.export.exporter import export_onnx
from a2llm_ros.engines.manifest import MANIFEST, onnx_sha256, read_json
from a2llm_ros.tools.export.onnx_export import (TENSORRT_OPS, repeat_token_graph,
                                                token_step_graph, unsupported_ops)
from a2llm_ros.tools.export.parity import run_token2wav, session
from conftest import trained_refiner

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = init_model(A2LLMConfig.preset("tiny"), seed=1)
    trained_refiner(model)
    ckpt = save_checkpoint(model, str(root / "ckpt"))
    out = str(root / "onnx")
    lines = []
    manifest = export_onnx(model, out, BackendConfig.preset("tiny"), checkpoint_dir=ckpt,
                           log=lines.append)
    return model, out, manifest, lines


def test_every_component_exports_and_matches_pytorch(exported):
    _, out, manifest, lines = exported
    assert sorted(manifest["graphs"]) == sorted(GRAPHS)
    for name in GRAPHS:
        side = read_json(os.path.join(out, name + ".json"))
        parity = side["parity"]
        assert parity["ok"], (name, parity)
        assert parity["max_abs_err"] <= parity["tol"]
        line = next(ln for ln in lines if ln.split()[1] == name)
        assert line.startswith("parity") and "max|ORT - " in line
        assert ") ok" in line and "FAILED" not in line
    details = read_json(os.path.join(out, "llm_decode.json"))["parity"]["details"]
    assert max(details.values()) < 1e-4  # fp32 graphs agree to float rounding
    conn = read_json(os.path.join(out, "connector_step.json"))["parity"]
    assert "mismatches 0" in conn["note"] and "top-k masking ok" in conn["note"]
    t2w = read_json(os.path.join(out, "token2wav.json"))["parity"]
    assert t2w["spectral_error"]["onnxruntime"] <= t2w["spectral_error"]["limit"]


def test_graphs_are_tensorrt_parser_compatible_and_described(exported):
    model, out, manifest, _ = exported
    for name in GRAPHS:
        path = os.path.join(out, name + ".onnx")
        proto = onnx.load(path, load_external_data=False)
        assert unsupported_ops(proto) == []
        assert {n.op_type for n in proto.graph.node} <= TENSORRT_OPS
        assert not {"STFT", "DFT"} & {n.op_type for n in proto.graph.node}
        side = read_json(os.path.join(out, name + ".json"))
        assert side["opset"] == OPSET == 17
        assert side["onnx_sha256"] == onnx_sha256(path) == manifest["graphs"][name][
            "onnx_sha256"]
        assert [i.name for i in proto.graph.input] == [i["name"] for i in side["inputs"]]
        assert [o.name for o in proto.graph.output] == [o["name"] for o in side["outputs"]]
    llm = read_json(os.path.join(out, "llm_decode.json"))
    past = next(i for i in llm["inputs"] if i["name"] == "past_kv")
    assert past["shape"] == [4, 2, 2, "past_len", 64]  # [L, 2, G, P, dh] of the tiny LLM
    # shortest prompt: the chat format around one audio patch (a 0.1 s question)
    shortest = len(model.prompt(1).ids)
    assert shortest == prompt_overhead(model) + 1 > 50
    assert llm["profiles"]["default"]["past_kv"] == [[4, 2, 2, shortest, 64],
                                                     [4, 2, 2, 512, 64], [4, 2, 2, 2047, 64]]
    static = read_json(os.path.join(out, "llm.json"))
    assert list(static["profiles"]) == ["prefill", "decode"]
    assert static["profiles"]["prefill"]["inputs_embeds"] == [
        [1, len(model.prompt(n).ids), 256] for n in (1, 62, 375)]  # 0.1 s, 5 s, 30 s
    assert static["profiles"]["decode"]["inputs_embeds"] == [[1, 1, 256]] * 3
    tail = model.prompt(1).tail  # the last audio position and the template after it: 15
    assert tail == 15 and tail == len(model.prompt(7).ids) - model.prompt(7).patch_start - 6
    outs = {g: {o["name"]: o["shape"] for o in read_json(os.path.join(out, g + ".json"))[
        "outputs"]} for g in ("llm_prefill", "llm", "llm_decode")}
    assert outs["llm_prefill"]["tail"] == [1, tail, 256]
    assert outs["llm"]["tail"] == [1, "tail_len", 256] and "tail" not in outs["llm_decode"]
    audio = read_json(os.path.join(out, "audio_encoder.json"))
    assert audio["dims"]["mel_frames"] == [10, 500, 3000]
    m = read_json(os.path.join(out, MANIFEST))
    assert m["model_config"] == model.cfg.to_dict() and m["opset"] == 17
    assert m["shapes"]["chunk_tokens"] == 5


def test_chunk_graph_selects_state_of_last_valid_token(exported, tmp_path):
    model, _, _, _ = exported
    step = token_step_graph(model, 1, str(tmp_path / "step.onnx"))
    chunk = repeat_token_graph(onnx.load(step), 5)
    onnx.save(chunk, str(tmp_path / "chunk.onnx"))
    s_chunk, s_step = session(str(tmp_path / "chunk.onnx")), session(step)
    # a 3-token chunk equals 3 single-token calls, audio and state
    state = {k: v.numpy() for k, v in token2wav_initial_state(model).items()}
    assert list(state) == ["fixed", "last_mags", "tail", "window"]  # the tiny refiner's
    assert state["window"].tolist() == [model.token2wav.refiner.empty] * 4
    ref, st = [], dict(state)
    for tok in (4, 9, 250):
        out = s_step.run(None, {"token": np.array([tok], np.int32), **st})
        ref.append(out[0])
        st = dict(zip(state, out[1:]))
    got = s_chunk.run(None, {"tokens": np.array([4, 9, 250, 1, 1], np.int32),
                             "n_valid": np.array([3], np.int32), **state})
    np.testing.assert_allclose(got[0][:3 * 640], np.concatenate(ref), atol=1e-6)
    for name, value in zip(state, got[1:]):
        np.testing.assert_allclose(value, st[name], atol=1e-6)
    # one token of lookahead: the first call decodes nothing and keeps the Griffin-Lim state
    assert not ref[0].any() and ref[1].any()
    assert st["window"].tolist() == [model.token2wav.refiner.empty, 4, 9, 250]
    assert run_token2wav(s_chunk, model, [(1, 2)]).shape == (1280,)  # flushed


def test_reexport_keeps_other_graphs_and_rejects_unknown(exported):
    model, out, _, _ = exported
    manifest = export_onnx(model, out, BackendConfig.preset("tiny"), graphs=["token_embed"],
                           verify=False, log=lambda s: None)
    assert sorted(manifest["graphs"]) == sorted(GRAPHS)
    with pytest.raises(EngineError, match="unknown graphs"):
        export_onnx(model, out, graphs=["vocoder"], log=lambda s: None)


def test_external_data_is_gathered_into_one_file_per_graph(exported, tmp_path):
    from a2llm_ros.tools.export.onnx_export import finalize_onnx
    _, out, _, _ = exported
    proto = onnx.load(os.path.join(out, "motion_decoder.onnx"))
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    # as the exporter writes >2 GB models: one external file per tensor
    onnx.save_model(proto, str(src_dir / "g.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    assert len(os.listdir(src_dir)) > 5
    dst = str(tmp_path / "motion_decoder.onnx")
    finalize_onnx(str(src_dir / "g.onnx"), dst)
    assert sorted(os.listdir(tmp_path)) == ["motion_decoder.onnx", "motion_decoder.onnx.data",
                                            "src"]
    feeds = {"codes": np.zeros((1, 1, 6), np.int32)}
    for i, inp in enumerate(session(dst).get_inputs()[1:]):
        feeds[inp.name] = np.full(inp.shape, 0.1, np.float32)
    a = session(dst).run(None, feeds)
    b = session(os.path.join(out, "motion_decoder.onnx")).run(None, feeds)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    before = onnx_sha256(dst)  # the hash covers the external data too
    with open(dst + ".data", "r+b") as f:
        f.write(b"\x01")
    assert onnx_sha256(dst) != before


def test_tied_embeddings_and_wider_gqa_export(tmp_path):
    from a2llm_ros.tools.export.onnx_export import decode_weight_bytes
    cfg = A2LLMConfig.preset("tiny", llm=dict(tie_word_embeddings=True, n_heads=8,
                                              n_kv_heads=2, rope_theta=1e6))
    model = init_model(cfg, seed=4)
    graphs = ["llm_prefill", "llm_decode", "llm"]
    manifest = export_onnx(model, str(tmp_path), BackendConfig.preset("tiny"), graphs=graphs,
                           log=lambda s: None)
    for name in graphs:
        assert read_json(str(tmp_path / (name + ".json")))["parity"]["ok"]
    # tied: the output head reads the whole table, so nothing is subtracted
    n_llm = sum(p.numel() for p in model.llm.parameters())
    assert manifest["decode_weight_bytes_fp32"] == decode_weight_bytes(model) == 4 * n_llm
