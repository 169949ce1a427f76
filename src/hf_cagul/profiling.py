"""Measuring a fit: wall time, peak memory, trainable parameters, whether weights changed.

Used by ``hf-cagul compare`` and the benchmarks in ``bench/``. Peak memory is the CUDA
allocator's peak on a GPU, else the process's resident memory sampled every millisecond: both
are measured above the level at entry, so what was loaded before (the VLM) does not count.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FitMeasurement", "measure", "release_memory", "trainable_parameters", "weights_digest"]


@dataclass
class FitMeasurement:
    """What `measure` found: seconds, peak bytes above the start, and on which device."""

    seconds: float = 0.0
    peak_bytes: int = 0
    device: str = "cpu"

    @property
    def peak_megabytes(self) -> float:
        """``peak_bytes`` in MiB."""
        return self.peak_bytes / 2**20


def release_memory() -> None:
    """Collect garbage and hand freed memory back (CUDA cache, glibc heap)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def measure(cuda: bool | None = None) -> Iterator[FitMeasurement]:
    """Time the block and record its peak memory above the level at entry.

    Args:
        cuda: Measure GPU memory (the CUDA allocator's peak); default: when CUDA is available.
            Otherwise the resident memory of the process is sampled every millisecond (Linux).
    """
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    release_memory()
    result = FitMeasurement(device="cuda" if use_cuda else "cpu")
    done = threading.Event()
    sampler = None
    if use_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        start = _rss_bytes()

        def sample() -> None:
            while not done.is_set():
                result.peak_bytes = max(result.peak_bytes, _rss_bytes() - start)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    clock = time.perf_counter()
    try:
        yield result
    finally:
        if use_cuda:
            torch.cuda.synchronize()
            result.peak_bytes = torch.cuda.max_memory_allocated() - start
        result.seconds = time.perf_counter() - clock
        done.set()
        if sampler is not None:
            sampler.join()


def trainable_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` that require gradients."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes and bytes of every tensor in ``module``'s state dict.

    Two equal digests mean bit-identical weights; use it to prove a fit left a model untouched
    without keeping a copy of it.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
