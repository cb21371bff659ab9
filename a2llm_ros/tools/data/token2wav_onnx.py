"""Tiny stand-ins for the two ONNX files of Step-Audio-2-mini's ``token2wav/`` folder.

Step-Audio-2-mini ships CosyVoice2's two front-end graphs (by name and role; that
they are byte-identical to CosyVoice2's copies has not been checked):

* ``speech_tokenizer_v2_25hz.onnx``: the S3 speech tokenizer v2 (128-bin Whisper
  log-mel of 16 kHz audio, 100 frames/s -> 25 Hz ids in ``[0, 6561)``);
* ``campplus.onnx``: the CAM++ speaker encoder (80-bin Kaldi fbank, mean-normalised
  over time -> 192-dim embedding).

The graphs written here are about 130 kB each, deterministic (seeded numpy weights), depend
on their input, and carry exactly the real graph's input/output names, dtypes and
ranks, so code that opens the real files can be tested without the ~520 MB download.

What the real graphs look like, and where that comes from
---------------------------------------------------------
Tokenizer (``S3_INPUTS`` / ``S3_OUTPUT``):

* inputs ``feats`` float32 ``[B, 128, T]`` and ``feats_length`` int32 ``[B]``; output
  ``indices``. Source: github ``dengzii/rwkv-mobile`` (a fork of rwkv-mobile),
  ``src/multimodal/tts/frontend.cpp`` and ``src/multimodal/tts/cosyvoice.cpp``: a C++
  ONNX Runtime front end for CosyVoice2 that runs the 128-mel tokenizer by the names
  ``{"feats", "feats_length"}`` -> ``{"indices"}``, ``feats_length`` an ``int32_t``
  tensor of shape ``[1]``. The same three names are used by other ports of later
  releases of that tokenizer (a Rust ``ort`` front end for ``speech_tokenizer_v3.onnx``,
  and a Core ML conversion of it that calls ``predict({"feats", "feats_length"})["indices"]``;
  both found by content search, repository not shown), and CosyVoice itself
  (``cosyvoice/cli/frontend.py``, ``tools/extract_speech_token.py``) feeds
  ``get_inputs()[0]`` the mel and ``get_inputs()[1]`` ``np.int32`` lengths.
* output rank 2 (``[B, T']``): github ``xingchensong/S3Tokenizer``, commit 84e647a
  ("v2 works"), ``test/test_onnx.py``: the v1 graph returns ``[B, 1, T']`` and the
  test adds a leading axis only ``if name == 'speech_tokenizer_v2_25hz'`` before
  indexing ``[0, 0, :]``, i.e. v2 returns ``[B, T']``; the current test handles
  "ndim == 2" and "ndim == 3" outputs.
* output dtype int32: rwkv-mobile reads ``indices`` with
  ``GetTensorMutableData<int32_t>`` and copies ``count * sizeof(int32_t)`` bytes
  (int64 data read that way would give every other id as 0, so the port would not
  work); ``S3Tokenizer``'s torch re-implementation of the v2 graph
  (``s3tokenizer/model_v2.py``, ``FSQCodebook.encode``) also ends in ``.int()``.
  This is the least certain fact here (indirect evidence; the Rust port accepts both
  int64 and int32), so consumers should accept either integer type.

CAM++ (``CAMPPLUS_INPUT`` / ``CAMPPLUS_OUTPUT``):

* input ``input`` float32 ``[B, T, 80]``, output ``output`` float32 ``[B, 192]``.
  Source: the same rwkv-mobile files (``extract_speech_embedding``: Kaldi fbank,
  80 bins, mean subtracted per bin, run as ``{"input"}`` -> ``{"output"}``) and the
  Rust ``ort`` port above (``inputs!["input" => ...]``, ``outputs["output"]``
  extracted as f32). The ``campplus.onnx`` of CosyVoice2-0.5B, Fun-CosyVoice3 and
  ``openbmb/MiniCPM-o-4_5`` ``assets/token2wav/`` is one file (28,303,423 bytes,
  sha256 ``a6ac6a63...0f4d73`` in several download manifests); that
  Step-Audio-2-mini's copy is the same file is likely but not verified. (The same
  manifest lists ``speech_tokenizer_v2_25hz.onnx`` at 496,082,973 bytes.)

Uncertain / not modelled
------------------------
* Token count: the real tokenizer has two stride-2 convolutions (kernel 3, padding
  1; ``s3tokenizer/model_v2.py``), so it returns ``ceil(T / 4)`` ids for ``T`` mel
  frames; the tiny graph returns ``T // 4`` (tail frames dropped). Both agree when
  ``T`` is a multiple of 4 (whole 640-sample tokens of 16 kHz audio).
* Symbolic dimension names, batch > 1 behaviour and whether the 128 / 80 feature
  axes are static in the real graphs are not known; here only the feature axes are
  static. The real tokenizer is only used on <= 30 s (3000 frames) windows.
* The exact output dtype of ``indices`` (see above).

The tiny graphs (opset 17, IR version 8, dynamic ``B`` and ``T``):

* tokenizer: frames at or past ``feats_length`` are zeroed (so the lengths input is
  used, as in the real graph), the first ``4 * (T // 4)`` frames are grouped by 4 into
  512-dim vectors, projected onto ``K`` seeded random directions, ``ArgMax`` picks
  one, and ``(k * 1459 + offset) mod 6561`` spreads the ``K`` choices over the vocab;
* CAM++: statistics pooling over time (mean and root-mean-square per bin; the RMS
  part keeps the output input-dependent for mean-normalised fbank), a seeded
  ``[160, 192]`` projection plus bias, ``Tanh``.
"""
from typing import Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

S3_INPUTS: Tuple[Tuple[str, str, int], ...] = (
    ("feats", "float32", 3), ("feats_length", "int32", 1))
S3_OUTPUT: Tuple[str, str, int] = ("indices", "int32", 2)
CAMPPLUS_INPUT: Tuple[str, str, int] = ("input", "float32", 3)
CAMPPLUS_OUTPUT: Tuple[str, str, int] = ("output", "float32", 2)

S3_MELS = 128
S3_VOCAB = 6561
S3_FRAMES_PER_TOKEN = 4
CAMPPLUS_BINS = 80
CAMPPLUS_DIM = 192

OPSET = 17
IR_VERSION = 8
#: Directions of the tiny tokenizer's projection (distinct ids it can emit).
TOKENIZER_CODES = 64
#: Coprime to 6561 = 3**8, so the K codes land on K distinct, spread-out ids.
_ID_STRIDE = 1459

_ONNX_TYPES = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32,
               "int64": TensorProto.INT64}


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.asarray(value), name + "_v"))


def _save(graph: onnx.GraphProto, path: str, doc: str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="a2llm_ros-test", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def write_tiny_speech_tokenizer(path: str, seed: int = 0) -> None:
    """Write a tiny ``speech_tokenizer_v2_25hz.onnx`` look-alike to ``path``.

    ``feats`` float32 ``[B, 128, T]`` + ``feats_length`` int32 ``[B]`` ->
    ``indices`` int32 ``[B, T // 4]`` in ``[0, 6561)``; deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    group = S3_MELS * S3_FRAMES_PER_TOKEN
    proj = rng.standard_normal((group, TOKENIZER_CODES)).astype(np.float32)
    proj /= np.sqrt(group)
    offset = int(rng.integers(0, S3_VOCAB))
    (x_name, _, _), (len_name, _, _) = S3_INPUTS
    out_name = S3_OUTPUT[0]
    nodes = [
        _const("zero", np.array(0, np.int64)),
        _const("zero_1", np.array([0], np.int64)),
        _const("one", np.array(1, np.int64)),
        _const("one_1", np.array([1], np.int64)),
        _const("two_1", np.array([2], np.int64)),
        _const("four", np.array(S3_FRAMES_PER_TOKEN, np.int64)),
        _const("group_shape", np.array([0, -1, group], np.int64)),
        _const("proj", proj),
        _const("stride", np.array(_ID_STRIDE, np.int64)),
        _const("offset", np.array(offset, np.int64)),
        _const("vocab", np.array(S3_VOCAB, np.int64)),
        # T, and the mask of frames inside each item's length: [B, 1, T]
        helper.make_node("Shape", [x_name], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "two_1"], ["t_1"], axis=0),
        helper.make_node("Squeeze", ["t_1", "zero_1"], ["t"]),
        helper.make_node("Range", ["zero", "t", "one"], ["frame_idx"]),
        helper.make_node("Cast", [len_name], ["len64"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["len64", "one_1"], ["len_col"]),
        helper.make_node("Less", ["frame_idx", "len_col"], ["valid"]),
        helper.make_node("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["valid_f", "one_1"], ["mask"]),
        helper.make_node("Mul", [x_name, "mask"], ["masked"]),
        # keep 4 * (T // 4) frames, group them by 4: [B, T // 4, 512]
        helper.make_node("Div", ["t_1", "four"], ["n_tok"]),
        helper.make_node("Mul", ["n_tok", "four"], ["t_keep"]),
        helper.make_node("Slice", ["masked", "zero_1", "t_keep", "two_1"], ["kept"]),
        helper.make_node("Transpose", ["kept"], ["frames"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["frames", "group_shape"], ["groups"]),
        # nearest of K directions -> an id spread over the vocabulary
        helper.make_node("MatMul", ["groups", "proj"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["code"], axis=-1, keepdims=0),
        helper.make_node("Mul", ["code", "stride"], ["spread"]),
        helper.make_node("Add", ["spread", "offset"], ["shifted"]),
        helper.make_node("Mod", ["shifted", "vocab"], ["ids"], fmod=0),
        helper.make_node("Cast", ["ids"], [out_name], to=_ONNX_TYPES[S3_OUTPUT[1]]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_s3_tokenizer_v2",
        [helper.make_tensor_value_info(x_name, _ONNX_TYPES[S3_INPUTS[0][1]],
                                       ["batch", S3_MELS, "frames"]),
         helper.make_tensor_value_info(len_name, _ONNX_TYPES[S3_INPUTS[1][1]], ["batch"])],
        [helper.make_tensor_value_info(out_name, _ONNX_TYPES[S3_OUTPUT[1]],
                                       ["batch", "tokens"])])
    _save(graph, path, "tiny test stand-in for speech_tokenizer_v2_25hz.onnx")


def write_tiny_campplus(path: str, seed: int = 0) -> None:
    """Write a tiny ``campplus.onnx`` look-alike to ``path``.

    ``input`` float32 ``[B, T, 80]`` -> ``output`` float32 ``[B, 192]`` in ``(-1, 1)``.
    """
    rng = np.random.default_rng(seed + 1)
    stats = 2 * CAMPPLUS_BINS
    weight = (rng.standard_normal((stats, CAMPPLUS_DIM)) / np.sqrt(stats)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(CAMPPLUS_DIM)).astype(np.float32)
    x_name, out_name = CAMPPLUS_INPUT[0], CAMPPLUS_OUTPUT[0]
    nodes = [
        _const("weight", weight),
        _const("bias", bias),
        _const("eps", np.array(1e-6, np.float32)),
        helper.make_node("ReduceMean", [x_name], ["mean"], axes=[1], keepdims=0),
        helper.make_node("Mul", [x_name, x_name], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["power"], axes=[1], keepdims=0),
        helper.make_node("Add", ["power", "eps"], ["power_eps"]),
        helper.make_node("Sqrt", ["power_eps"], ["rms"]),
        helper.make_node("Concat", ["mean", "rms"], ["pooled"], axis=1),
        helper.make_node("MatMul", ["pooled", "weight"], ["hidden"]),
        helper.make_node("Add", ["hidden", "bias"], ["pre"]),
        helper.make_node("Tanh", ["pre"], [out_name]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_campplus",
        [helper.make_tensor_value_info(x_name, _ONNX_TYPES[CAMPPLUS_INPUT[1]],
                                       ["batch", "frames", CAMPPLUS_BINS])],
        [helper.make_tensor_value_info(out_name, _ONNX_TYPES[CAMPPLUS_OUTPUT[1]],
                                       ["batch", CAMPPLUS_DIM])])
    _save(graph, path, "tiny test stand-in for campplus.onnx")


__all__ = ["S3_INPUTS", "S3_OUTPUT", "CAMPPLUS_INPUT", "CAMPPLUS_OUTPUT",
           "write_tiny_speech_tokenizer", "write_tiny_campplus"]
