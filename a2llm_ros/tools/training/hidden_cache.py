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
import shutil
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

CACHE_DIR = "hidden_cache"
DATA_FILE = "hidden.bin"
INDEX_FILE = "index.json"
#: Bumped when the file layout changes (older caches are rebuilt).
FORMAT = 1
#: Torch dtype name -> numpy dtype of the stored values (bfloat16 as raw bits).
STORED = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}
#: Copy buffer of rank 0 joining the ranks' part files.
JOIN_CHUNK_BYTES = 64 << 20

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


def shard_range(n_samples: int, rank: int = 0, world_size: int = 1) -> Tuple[int, int]:
    """Samples ``[lo, hi)`` whose hidden states rank ``rank`` of ``world_size`` computes
    (contiguous, sizes differ by at most one)."""
    per, extra = divmod(n_samples, world_size)
    lo = rank * per + min(rank, extra)
    return lo, lo + per + (1 if rank < extra else 0)


def write_cache(folder: str, batches: Batches, rows: Sequence[int], width: int,
                progress: bool = True, rank: int = 0, world_size: int = 1,
                barrier: Callable[[], None] = lambda: None) -> None:
    """Write every sample's hidden states [n_i, H] to ``folder`` (index last).

    ``rows`` [N] are the expected n_i; a batch that disagrees raises (the data
    changed between counting and computing).  Under ``torchrun`` every rank
    passes the ``batches`` of its :func:`shard_range` and the job's
    ``barrier``: each rank writes a part file, then rank 0 joins the parts in
    rank order into the data file and writes the index.  Parts are named per
    rank and the data file is replaced at once, so writers cannot interleave.
    """
    os.makedirs(folder, exist_ok=True)
    lo, hi = shard_range(len(rows), rank, world_size)
    dtype_name = _write_part(folder, rank, batches, rows, width, (lo, hi), progress)
    with open(_part_path(folder, rank) + ".json", "w") as f:
        json.dump({"dtype": dtype_name}, f)
    barrier()  # every part written
    if rank == 0:
        _join_parts(folder, world_size)
        dtypes = [_part_dtype(folder, r) for r in range(world_size)]
        index = {"format": FORMAT, "n_samples": len(rows), "width": width,
                 "dtype": next((d for d in dtypes if d), "float32"),
                 "rows": [int(n) for n in rows]}
        tmp_index = os.path.join(folder, f"{INDEX_FILE}.tmp-{os.getpid()}")
        with open(tmp_index, "w") as f:
            json.dump(index, f)
        os.replace(tmp_index, os.path.join(folder, INDEX_FILE))
        _remove_parts(folder)
    barrier()  # the index is written


def _part_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"{DATA_FILE}.part-{rank}")


def _write_part(folder: str, rank: int, batches: Batches, rows: Sequence[int], width: int,
                span: Tuple[int, int], progress: bool) -> Optional[str]:
    """Rows of the samples ``span`` = [lo, hi) to this rank's part file; their dtype name."""
    from tqdm import tqdm
    expected, dtype_name = span[0], None
    bar = tqdm(total=span[1] - span[0], desc="hidden cache", unit="sample",
               disable=not progress, dynamic_ncols=True, mininterval=2.0)
    with open(_part_path(folder, rank), "wb") as f:
        for idx, hidden in batches:
            for i, h in zip(idx, hidden):
                if i != expected:
                    raise ValueError(f"hidden cache: rank {rank} got sample {i}, expected "
                                     f"{expected} (samples {span[0]}..{span[1] - 1} in order)")
                _check_rows(i, h, rows[i], width)
                dtype_name = str(h.dtype).replace("torch.", "")
                f.write(_raw_bytes(h))
                expected += 1
            bar.update(len(idx))
    bar.close()
    if expected != span[1]:
        raise ValueError(f"hidden cache: rank {rank} wrote samples up to {expected - 1}, "
                         f"expected {span[0]}..{span[1] - 1}")
    return dtype_name


def _part_dtype(folder: str, rank: int) -> Optional[str]:
    with open(_part_path(folder, rank) + ".json") as f:
        return json.load(f)["dtype"]


def _join_parts(folder: str, world_size: int) -> None:
    """The parts, in rank order, become the data file (a rename when there is one)."""
    final = os.path.join(folder, DATA_FILE)
    if world_size == 1:
        os.replace(_part_path(folder, 0), final)
        return
    tmp = f"{final}.tmp-{os.getpid()}"
    with open(tmp, "wb") as out:
        for r in range(world_size):
            with open(_part_path(folder, r), "rb") as part:
                shutil.copyfileobj(part, out, JOIN_CHUNK_BYTES)
    os.replace(tmp, final)


def _remove_parts(folder: str) -> None:
    """Part files and their metadata (also stale ones of another world size)."""
    for name in os.listdir(folder):
        if ".part-" in name:
            os.remove(os.path.join(folder, name))


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
                    width: int, device: torch.device, progress: bool = True,
                    rank: int = 0, world_size: int = 1,
                    barrier: Callable[[], None] = lambda: None) -> DiskHiddenCache:
    """The cache in ``folder``: reused when complete for ``rows`` x ``width``, else
    (re)built from ``batches()`` first.  Under ``torchrun`` every rank calls this
    with the ``batches`` of its :func:`shard_range` (see :func:`write_cache`)."""
    # all ranks agree: the index is written only after every rank reached write_cache
    if not is_complete(folder, rows, width):
        write_cache(folder, batches(), rows, width, progress, rank, world_size, barrier)
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
           "is_complete", "read_index", "shard_range", "CACHE_DIR"]
