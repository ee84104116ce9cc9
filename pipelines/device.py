"""The device a family runs on: its default device and dtype, the compute lock, and memory recovery."""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import torch


def default_device() -> str:
    """CUDA when present, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs that have it (no fp16 overflow in the SDXL VAE), else fp16; fp32 on CPU."""
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class ComputeLock:
    """The engine's lock; whoever holds it computes with the same number of CPU threads.

    torch keeps the intra-op thread count per OS thread (OpenMP), and a server runs requests on whichever worker
    thread is free: a thread that was set to another count (or made while the global default differed) would sum
    in another order and move a pixel by one level. Pinning the count on every acquire makes a request's pixels
    independent of the thread that runs it and of what ran before.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self.released_at = 0.0  # time.monotonic() of the last release: idle work waits for a quiet moment

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return got

    def release(self) -> None:
        self.released_at = time.monotonic()
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> ComputeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def upcast_vae(vae: Any) -> None:
    """Keep the VAE in fp32 from now on; latents are cast on their way in (the pipelines do not always)."""
    vae.to(torch.float32)
    decode = vae.decode

    def decode_fp32(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return decode(z.to(torch.float32), *args, **kwargs)

    vae.decode = decode_fp32


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
