"""CUDA's primary context, made current in whichever thread makes the call.

The app creates its engine in the main thread and runs it in the pipeline's inference
thread. A CUDA driver context is current per thread, and pycuda's allocations, streams and
modules belong to the context that was current when they were made (pycuda refuses, or
leaks, when another thread frees them without it). So device 0's primary context, the one
the CUDA runtime, TensorRT and CuPy use, is retained once per process and pushed around
every call that touches CUDA state, then popped: the calling thread is left as it was, and
TensorRT and pycuda always share one context.

    ctx = PrimaryContext("pycuda")     # imports pycuda (ImportError if absent); nothing on the GPU yet
    with ctx:                          # retained on first use, pushed; popped on exit
        buf = ctx.cuda.mem_alloc(1024)

Entering is re-entrant (the pushes nest) and cheap (one cuCtxPushCurrent/cuCtxPopCurrent
pair). CuPy needs no push: the CUDA runtime binds the primary context to each thread
itself; entering just selects device 0 (cudaSetDevice), which since CUDA 12 also makes the
context current at once for the driver-API calls of engines.cuda_kernels.CudaGraph.
"""
from __future__ import annotations

import threading

from core.errors import SetupError, first_line

BACKENDS = ("pycuda", "cupy")

_lock = threading.Lock()
_pycuda_primary = None      # device 0's primary context as a pycuda Context, retained once


def _retained_pycuda_context(cuda):
    global _pycuda_primary
    with _lock:
        if _pycuda_primary is None:
            try:
                cuda.init()
                _pycuda_primary = cuda.Device(0).retain_primary_context()
            except Exception as e:   # pycuda's own error types: no driver, no device
                first = first_line(e)
                raise SetupError(f"CUDA is not usable here ({first}): this needs an NVIDIA GPU and its "
                                   "driver") from None
        return _pycuda_primary


class PrimaryContext:
    """`with ctx:` makes device 0's primary context current in this thread for the block."""

    def __init__(self, backend: str = "pycuda"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown CUDA backend {backend!r}: use {' or '.join(BACKENDS)}")
        self.backend = backend
        if backend == "pycuda":
            import pycuda.driver as cuda      # ImportError: the caller names what to install
            self.cuda = cuda
        else:
            import cupy
            self.cupy = cupy

    def __enter__(self) -> "PrimaryContext":
        if self.backend == "pycuda":
            _retained_pycuda_context(self.cuda).push()
        else:
            self.cupy.cuda.runtime.setDevice(0)
        return self

    def __exit__(self, *exc) -> bool:
        if self.backend == "pycuda":
            self.cuda.Context.pop()
        return False
