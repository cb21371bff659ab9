"""Stage 1's frozen-LLM hidden states, kept where ``TrainConfig.hidden_cache`` says.

Every form is indexed the same way: ``hidden[j]`` is sample j's last hidden
states at its answer's speech-token inputs, a tensor [n_j, H] on the training
device.

``memory``
    A Python list of device tensors (fast; N x n x H values in device memory:
    tens of GB at H = 3584 for 100 k samples).
``disk``
    :class:`DiskHiddenCache`: one raw file ``hidden.bin`` [sum n_j, H] plus
    ``index.json`` (sample count, width, dtype, rows per sample) in the run's
    ``hidden_cache/`` folder, read through ``np.memmap`` (the OS pages rows in
    and out).  Rows are stored in the dtype the LLM produced them in, so the
    cache is lossless: float32 on CPU, bfloat16 on CUDA (as its raw 16 bits,
    ``int16``, because numpy has no bfloat16; 2 bytes a value, half of
    float32).  Casting float32 states to float16 would halve the CPU file but
    change the losses slightly; bfloat16 -> float16 could overflow or flush
    small values.  The index is written last, so a cache whose ``index.json``
    exists and matches the data (count, width, rows) is complete and is reused
    (a resumed run skips the forward passes); otherwise it is rebuilt.
``recompute``
    :class:`RecomputedHidden`: the frozen LLM runs for sample j whenever
    ``hidden[j]`` is read (one forward per sample and step; nothing stored).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, List, Sequence, Tuple, Union

import numpy as np
import torch

CACHE_DIR = "hidden_cache"
DATA_FILE = "hidden.bin"
INDEX_FILE = "index.json"
#: Bumped when the file layout changes (older caches are rebuilt).
FORMAT = 1
#: Torch dtype name -> numpy dtype of the stored values (bfloat16 as raw bits).
STORED = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}

#: (sample indices, their hidden states [n_i, H]) in increasing index order.
Batches = Iterable[Tuple[Sequence[int], List[torch.Tensor]]]


class DiskHiddenCache:
    """Read side of the on-disk cache: ``cache[j]`` -> tensor [n_j, H] on ``device``."""

    def __init__(self, folder: str, device: torch.device):
        with open(os.path.join(folder, INDEX_FILE)) as f:
            index = json.load(f)
        self.folder, self.device = folder, device
        self.dtype_name: str = index["dtype"]
        self.width: int = int(index["width"])
        rows = np.asarray(index["rows"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(rows)])  # [N + 1]
        total = int(self.offsets[-1])
        path = os.path.join(folder, DATA_FILE)
        self._data = (np.memmap(path, dtype=STORED[self.dtype_name], mode="r",
                                shape=(total, self.width))
                      if total else np.zeros((0, self.width), STORED[self.dtype_name]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, j: int) -> torch.Tensor:
        rows = np.array(self._data[self.offsets[j]:self.offsets[j + 1]])  # [n_j, H] copy
        out = torch.from_numpy(rows)
        if self.dtype_name == "bfloat16":
            out = out.view(torch.bfloat16)
        return out.to(self.device)

    @property
    def nbytes(self) -> int:
        """Size of the data file."""
        return int(self._data.nbytes)


def read_index(folder: str) -> dict:
    """The cache's ``index.json`` ({} when absent or unreadable)."""
    try:
        with open(os.path.join(folder, INDEX_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def is_complete(folder: str, rows: Sequence[int], width: int) -> bool:
    """Whether ``folder`` holds a finished cache of these per-sample ``rows`` x ``width``."""
    index = read_index(folder)
    if index.get("format") != FORMAT or index.get("dtype") not in STORED:
        return False
    if int(index.get("width", -1)) != width or list(index.get("rows", [])) != list(rows):
        return False
    itemsize = np.dtype(STORED[index["dtype"]]).itemsize
    path = os.path.join(folder, DATA_FILE)
    expected = sum(rows) * width * itemsize
    return os.path.isfile(path) and os.path.getsize(path) == expected


def write_cache(folder: str, batches: Batches, rows: Sequence[int], width: int,
                progress: bool = True) -> None:
    """Write every sample's hidden states [n_i, H] to ``folder`` (index last).

    ``rows`` [N] are the expected n_i; a batch that disagrees raises (the data
    changed between counting and computing).  The data goes to a temporary
    file per process first, so concurrent writers cannot interleave.
    """
    from tqdm import tqdm
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{DATA_FILE}.tmp-{os.getpid()}")
    dtype_name = None
    bar = tqdm(total=len(rows), desc="hidden cache", unit="sample", disable=not progress,
               dynamic_ncols=True, mininterval=2.0)
    with open(tmp, "wb") as f:
        for idx, hidden in batches:
            for i, h in zip(idx, hidden):
                _check_rows(i, h, rows[i], width)
                dtype_name = str(h.dtype).replace("torch.", "")
                f.write(_raw_bytes(h))
            bar.update(len(idx))
    bar.close()
    os.replace(tmp, os.path.join(folder, DATA_FILE))
    index = {"format": FORMAT, "n_samples": len(rows), "width": width,
             "dtype": dtype_name or "float32", "rows": [int(n) for n in rows]}
    tmp_index = os.path.join(folder, f"{INDEX_FILE}.tmp-{os.getpid()}")
    with open(tmp_index, "w") as f:
        json.dump(index, f)
    os.replace(tmp_index, os.path.join(folder, INDEX_FILE))


def _check_rows(i: int, h: torch.Tensor, expected: int, width: int) -> None:
    if tuple(h.shape) != (expected, width):
        raise ValueError(f"hidden cache: sample {i} gave hidden states {tuple(h.shape)}, "
                         f"expected ({expected}, {width})")
    if str(h.dtype).replace("torch.", "") not in STORED:
        raise ValueError(f"hidden cache: cannot store {h.dtype}")


def _raw_bytes(h: torch.Tensor) -> bytes:
    """Tensor [n, H] -> its values' bytes (bfloat16 through its 16-bit pattern)."""
    h = h.detach().cpu().contiguous()
    if h.dtype == torch.bfloat16:
        h = h.view(torch.int16)
    return h.numpy().tobytes()


def open_disk_cache(folder: str, batches: Callable[[], Batches], rows: Sequence[int],
                    width: int, device: torch.device, progress: bool = True
                    ) -> DiskHiddenCache:
    """The cache in ``folder``: reused when complete for ``rows`` x ``width``, else
    (re)built from ``batches()`` first."""
    if not is_complete(folder, rows, width):
        write_cache(folder, batches(), rows, width, progress)
    return DiskHiddenCache(folder, device)


class RecomputedHidden:
    """``hidden[j]`` computed on demand by ``compute(j)`` (no storage)."""

    def __init__(self, compute: Callable[[int], torch.Tensor], n_samples: int):
        self.compute, self.n_samples = compute, n_samples

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, j: int) -> torch.Tensor:
        return self.compute(j)


#: Any form of the stage-1 hidden states (indexed ``hidden[j]`` -> [n_j, H]).
HiddenStates = Union[List[torch.Tensor], DiskHiddenCache, RecomputedHidden]

__all__ = ["HiddenStates", "DiskHiddenCache", "RecomputedHidden", "open_disk_cache", "write_cache",
           "is_complete", "read_index", "CACHE_DIR"]
