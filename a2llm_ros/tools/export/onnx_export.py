"""``a2llm export --format onnx``: every component as its own ONNX graph, checked with ORT.

This module holds the export primitives; :mod:`a2llm_ros.tools.export.exporter` runs
them with the checks of :mod:`a2llm_ros.tools.export.parity` and writes the manifest.

For each graph of :mod:`a2llm_ros.tools.export.graphs` this writes ``<name>.onnx``
and a sidecar ``<name>.json`` (I/O names, dtypes and shapes with named
dynamic axes, the TensorRT optimisation-profile shapes derived from the
config, the opset, the SHA-256 of the ONNX bytes and the parity result), plus
``manifest.json`` tying the directory to the checkpoint it came from.

Graphs use ONNX opset :data:`~a2llm_ros.tools.export.graphs.OPSET` and only ops
that TensorRT's ONNX parser supports (:data:`TENSORRT_OPS`, from the
onnx-tensorrt operator matrix of TensorRT 10); export fails otherwise.

Parity: every graph is run with ONNX Runtime (CPU) on inputs other than the
export example (other lengths, several streaming steps) and compared with the
PyTorch modules it was made from (``A2LLM.encode_audio``,
``Qwen2LM.forward`` with its KV cache, ``MotionConnector.step``,
``MotionTokenizer.decode_step``, ``GriffinLimToken2Wav.step``); the maximum
absolute error is printed and asserted against a per-graph tolerance.

The Griffin-Lim token-to-wave decoder (momentum 0.99) is chaotic: a 1e-6
relative change of its input changes the waveform by the signal's own size
after ~10 tokens, in PyTorch itself, so its waveform cannot match any other
implementation sample for sample (near-zero STFT bins have no stable phase;
even at 0 iterations PyTorch float32 differs from a float64 run by up to
~1e-2).  Its check therefore compares the arithmetic (DFT, overlap-add,
phase start, cross-fade, state) on graphs exported with 0 and 2 iterations
against a float64 run of the PyTorch decoder: ORT's error must not exceed
twice PyTorch float32's own (+ 1e-4); and the full graph must reproduce the
codebook's target spectrum as closely as PyTorch does (log-magnitude error
at most ``1.5 x`` PyTorch's + 0.05).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Dict, List, Optional

import torch

from a2llm_ros.engines.config import BackendConfig, EngineError
from a2llm_ros.engines.manifest import (FORMAT, MANIFEST, checkpoint_fingerprint, onnx_sha256,
                                        read_json, write_json)
from a2llm_ros.tools.export.graphs import OPSET, GraphSpec, Token2WavStepGraph, build_spec

#: ONNX operators TensorRT 10's ONNX parser supports (onnx-tensorrt operator matrix).
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split())
#: Opsets TensorRT 10's ONNX parser accepts.
TENSORRT_OPSETS = (9, 20)


# ----------------------------------------------------------------------------- export

def unsupported_ops(proto) -> List[str]:
    """ONNX op types of ``proto`` that TensorRT's parser does not support."""
    ops = {n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx")}
    custom = {f"{n.domain}::{n.op_type}" for n in proto.graph.node
              if n.domain not in ("", "ai.onnx")}
    return sorted((ops - TENSORRT_OPS) | custom)


def _opset(proto) -> int:
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's deprecation and tracer warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def trace_to_onnx(module: torch.nn.Module, inputs: Dict[str, torch.Tensor],
                  input_names: List[str], output_names: List[str], path: str,
                  dynamic_axes: Optional[dict] = None) -> None:
    """TorchScript-trace export (opset :data:`OPSET`) of ``module`` to ``path``."""
    with _quiet(), torch.no_grad():
        torch.onnx.export(module.eval(), tuple(inputs[n] for n in input_names), path,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes or {}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


def repeat_token_graph(proto, n: int):
    """Chain ``n`` copies of a one-token graph into a chunk graph.

    The one-token graph has inputs ``token [1] i32, <state...>`` and outputs
    ``audio [s], <state>_out...``; the result has inputs ``tokens [n] i32,
    n_valid [1] i32, <state...>`` and outputs ``audio [n * s]`` plus the state
    after token ``n_valid - 1`` (tokens past ``n_valid`` are computed and
    ignored).  Initialisers are shared by all copies.
    """
    import onnx
    from onnx import TensorProto, helper

    g = proto.graph
    state_in = [i.name for i in g.input[1:]]
    state_out = [o.name for o in g.output[1:]]
    token_in, audio_out = g.input[0].name, g.output[0].name
    shared = {t.name for t in g.initializer}
    nodes, consts = [], []

    def const(name, values):
        consts.append(helper.make_tensor(name, TensorProto.INT64 if name.endswith("_i64")
                                         else TensorProto.INT32, [len(values)], values))
        return name

    axes0 = const("rep/axes0_i64", [0])
    current = dict(zip(state_in, state_in))  # state name -> tensor holding it now
    audios, states = [], {s: [] for s in state_out}
    for i in range(n):
        pre = f"t{i}/"
        tok = pre + "token"
        nodes.append(helper.make_node(
            "Slice", ["tokens", const(f"rep/s{i}_i64", [i]), const(f"rep/e{i}_i64", [i + 1]),
                      axes0], [tok], name=pre + "slice_token"))
        rename = {token_in: tok}
        rename.update({s: current[s] for s in state_in})

        def name_of(x, pre=pre, rename=rename):
            if x == "" or x in shared:
                return x
            return rename.get(x, pre + x)

        for node in g.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = pre + (node.name or node.op_type)
            copy.input[:] = [name_of(x) for x in node.input]
            copy.output[:] = [name_of(x) for x in node.output]
            nodes.append(copy)
        audios.append(name_of(audio_out))
        for s_in, s_out in zip(state_in, state_out):
            current[s_in] = name_of(s_out)
            states[s_out].append(name_of(s_out))
    nodes.append(helper.make_node("Concat", audios, ["audio"], axis=0, name="rep/audio"))
    # index of the state to return: clamp(n_valid, 1, n) - 1 (int32 Max/Min/Sub)
    nodes += [helper.make_node("Max", ["n_valid", const("rep/one", [1])], ["rep/nv_lo"]),
              helper.make_node("Min", ["rep/nv_lo", const("rep/n", [n])], ["rep/nv"]),
              helper.make_node("Sub", ["rep/nv", "rep/one"], ["rep/pick"])]
    for s_out, names in states.items():
        ups = []
        for j, name in enumerate(names):
            ups.append(f"rep/{s_out}_u{j}")
            nodes.append(helper.make_node("Unsqueeze", [name, axes0], [ups[-1]]))
        nodes += [helper.make_node("Concat", ups, [f"rep/{s_out}_all"], axis=0),
                  helper.make_node("Gather", [f"rep/{s_out}_all", "rep/pick"],
                                   [f"rep/{s_out}_sel"], axis=0),
                  helper.make_node("Squeeze", [f"rep/{s_out}_sel", axes0], [s_out])]
    audio_len = g.output[0].type.tensor_type.shape.dim[0].dim_value * n
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT32, [n]),
              helper.make_tensor_value_info("n_valid", TensorProto.INT32, [1])] + \
        list(g.input[1:])
    outputs = [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [audio_len])] + \
        list(g.output[1:])
    graph = helper.make_graph(nodes, g.name + f"_x{n}", inputs, outputs,
                              initializer=list(g.initializer) + consts)
    out = helper.make_model(graph, opset_imports=list(proto.opset_import),
                            producer_name="a2llm_ros")
    out.ir_version = proto.ir_version
    return onnx.shape_inference.infer_shapes(out)


def finalize_onnx(src: str, dst: str) -> str:
    """Move an exported graph from ``src`` to ``dst``.

    A graph whose weights the exporter wrote as external data (models over the
    2 GB protobuf limit: one file per tensor, named after the tensor, which
    would collide between the LLM graphs of one directory) is re-saved with
    all of them in ``<dst>.data``.
    """
    import onnx
    proto = onnx.load(src, load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    data = os.path.basename(dst) + ".data"
    if os.path.exists(os.path.join(os.path.dirname(dst), data)):
        os.remove(os.path.join(os.path.dirname(dst), data))
    if not external:
        os.replace(src, dst)
        return dst
    proto = onnx.load(src)  # with the external tensors
    onnx.save_model(proto, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    return dst


def export_graph(spec: GraphSpec, out_dir: str) -> str:
    """Write ``<out_dir>/<spec.name>.onnx``; returns its path (checked for TensorRT ops)."""
    import onnx
    path = os.path.join(out_dir, spec.name + ".onnx")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        traced = os.path.join(tmp, spec.name + ".onnx")
        if spec.repeat:
            step = os.path.join(tmp, "step.onnx")
            trace_to_onnx(spec.module, spec.example, [io.name for io in spec.trace_inputs],
                          [io.name for io in spec.trace_outputs], step)
            onnx.save(repeat_token_graph(onnx.load(step), spec.repeat), traced)
        else:
            trace_to_onnx(spec.module, spec.example, [io.name for io in spec.inputs],
                          [io.name for io in spec.outputs], traced, spec.dynamic_axes())
        finalize_onnx(traced, path)
    proto = onnx.load(path, load_external_data=False)
    onnx.checker.check_model(path)
    bad = unsupported_ops(proto)
    lo, hi = TENSORRT_OPSETS
    if bad or not lo <= _opset(proto) <= hi:
        raise EngineError(f"{spec.name}: graph is not TensorRT-compatible (opset "
                          f"{_opset(proto)}, unsupported ops: {', '.join(bad) or 'none'})")
    return path


def sidecar(spec: GraphSpec, path: str, dims: dict, parity: Optional[dict] = None) -> dict:
    """The sidecar JSON content of an exported graph."""
    import onnx
    proto = onnx.load(path, load_external_data=False)
    from collections import Counter
    st = os.stat(path)
    return {"format": FORMAT, "graph": spec.name, "file": os.path.basename(path),
            "description": spec.description, "onnx_sha256": onnx_sha256(path),
            "onnx_size": st.st_size, "onnx_mtime_ns": st.st_mtime_ns,
            "opset": _opset(proto), "inputs": [io.to_dict() for io in spec.inputs],
            "outputs": [io.to_dict() for io in spec.outputs],
            "dims": {k: list(v) for k, v in dims.items()},
            "profiles": {p: {k: [list(s) for s in v] for k, v in shapes.items()}
                         for p, shapes in spec.profiles.items()},
            "ops": dict(sorted(Counter(n.op_type for n in proto.graph.node).items())),
            "tensorrt_unsupported_ops": unsupported_ops(proto), "parity": parity}


def decode_weight_bytes(model, bytes_per_param: float = 4.0) -> int:
    """Weight bytes one LLM decode step reads: every LLM parameter except the input
    embedding table (a decode step reads one row), which counts when tied to the head."""
    from a2llm_ros.model.audio_llm import base_causal_lm
    lm = base_causal_lm(model.llm)
    emb = lm.get_input_embeddings().weight
    total = sum(p.numel() for p in lm.parameters())  # tied weights are counted once
    head = lm.get_output_embeddings().weight
    if head.data_ptr() != emb.data_ptr():
        total -= emb.numel()
    return int(total * bytes_per_param)


def token_step_graph(model, iters: int, path: str) -> str:
    """Export the one-token Griffin-Lim graph with ``iters`` iterations (for checks)."""
    spec = build_spec("token2wav", model, BackendConfig())
    module = Token2WavStepGraph(model.token2wav, iters)
    trace_to_onnx(module, spec.example, [io.name for io in spec.trace_inputs],
                  [io.name for io in spec.trace_outputs], path)
    return path


__all__ = ["export_graph", "repeat_token_graph", "token_step_graph",
           "unsupported_ops", "onnx_sha256", "checkpoint_fingerprint", "TENSORRT_OPS",
           "MANIFEST", "read_json", "write_json", "decode_weight_bytes"]
