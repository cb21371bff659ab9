"""Device buffers, host staging and streams for the TensorRT runtime and builder.

Two implementations behind one small interface: pycuda when it imports, else
torch's CUDA allocator (:func:`device_memory` picks).  Both the runtime
(:mod:`a2llm_ros.engines.tensorrt_runtime`) and the INT8 calibrator of the
builder (:mod:`a2llm_ros.engines.tensorrt_build`) use it, so neither imports
the other for it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np

from a2llm_ros.engines.config import BackendConfig, EngineError


def _device_index(cfg: BackendConfig) -> int:
    return int(cfg.device.split(":")[1]) if cfg.device.startswith("cuda:") else 0


# ----------------------------------------------------------------------------- device memory

class Buffer:
    """A device allocation: ``ptr`` (int), ``nbytes``, the owning object, a write counter."""

    def __init__(self, ptr: int, nbytes: int, owner: Any):
        self.ptr, self.nbytes, self.owner = int(ptr), int(nbytes), owner
        self.version = 0


@dataclass
class DeviceTensor:
    """A tensor in a runner-owned device buffer (valid until that buffer is rewritten)."""

    buffer: Buffer
    shape: Tuple[int, ...]
    dtype: np.dtype
    version: int

    @property
    def ptr(self) -> int:
        return self.buffer.ptr

    @property
    def valid(self) -> bool:
        return self.buffer.version == self.version

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class PycudaMemory:
    """Device memory, pinned host memory and a stream from pycuda (primary context)."""

    name = "pycuda"

    def __init__(self, device_index: int = 0):
        import pycuda.driver as cuda
        self.cuda = cuda
        cuda.init()
        self.context = cuda.Device(device_index).retain_primary_context()
        with self.activate():
            self.stream = cuda.Stream()

    @contextlib.contextmanager
    def activate(self):
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def alloc(self, nbytes: int) -> Buffer:
        mem = self.cuda.mem_alloc(max(int(nbytes), 1))
        return Buffer(int(mem), nbytes, mem)

    def host(self, nbytes: int) -> np.ndarray:
        return self.cuda.pagelocked_empty(max(int(nbytes), 1), np.uint8)

    def htod(self, buf: Buffer, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(buf.ptr, host, self.stream)

    def dtoh(self, host: np.ndarray, buf: Buffer) -> None:
        self.cuda.memcpy_dtoh_async(host, buf.ptr, self.stream)

    def memset(self, buf: Buffer, nbytes: int) -> None:
        self.cuda.memset_d8_async(buf.ptr, 0, int(nbytes), self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def mem_info(self) -> Tuple[int, int]:
        with self.activate():
            free, total = self.cuda.mem_get_info()
        return int(free), int(total)


class TorchMemory:
    """The same services from torch: CUDA byte tensors, pinned tensors, a torch stream."""

    name = "torch"

    def __init__(self, device_index: int = 0):
        import torch
        if not torch.cuda.is_available():
            raise EngineError("torch has no CUDA device for the TensorRT buffers")
        self.torch = torch
        self.device = torch.device("cuda", device_index)
        self.stream = torch.cuda.Stream(device=self.device)

    @contextlib.contextmanager
    def activate(self):
        with self.torch.cuda.device(self.device):
            yield

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def alloc(self, nbytes: int) -> Buffer:
        t = self.torch.empty(max(int(nbytes), 1), dtype=self.torch.uint8, device=self.device)
        return Buffer(t.data_ptr(), nbytes, t)

    def host(self, nbytes: int) -> np.ndarray:
        return self.torch.empty(max(int(nbytes), 1), dtype=self.torch.uint8,
                                pin_memory=True).numpy()

    def htod(self, buf: Buffer, host: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.owner[:host.size].copy_(self.torch.from_numpy(host), non_blocking=True)

    def dtoh(self, host: np.ndarray, buf: Buffer) -> None:
        with self.torch.cuda.stream(self.stream):
            self.torch.from_numpy(host).copy_(buf.owner[:host.size], non_blocking=True)

    def memset(self, buf: Buffer, nbytes: int) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.owner[:int(nbytes)].zero_()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def mem_info(self) -> Tuple[int, int]:
        free, total = self.torch.cuda.mem_get_info(self.device)
        return int(free), int(total)


def device_memory(cfg: BackendConfig):
    """pycuda memory when pycuda imports, else torch CUDA memory; EngineError when neither."""
    index = _device_index(cfg)
    try:
        import pycuda.driver  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA driver
        pycuda_error = f"{type(exc).__name__}: {exc}"
    else:
        return PycudaMemory(index)
    try:
        import torch
        if torch.cuda.is_available():
            return TorchMemory(index)
        torch_error = "torch has no CUDA device"
    except ImportError as exc:
        torch_error = str(exc)
    raise EngineError(f"the TensorRT runtime needs pycuda ({pycuda_error}) or torch with CUDA "
                      f"({torch_error}) for its buffers and streams; pip install pycuda")
