"""The CUDA kernels (engines/*.cu) built as host C++ (cuda_host_shim.h, cuda_host_runner.cpp beside
this file) and called through ctypes; the GPU build when one is here; the shared frames they run on."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engines import cuda_kernels as ck

HERE = Path(__file__).resolve().parent


def find_shared_data() -> Path | None:
    """../shared/data beside the checkout (or beside an ancestor, for git worktrees)."""
    for parent in HERE.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return None


DATA = find_shared_data()
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data (CamVid, Cityscapes sample) not found")


P = ctypes.c_void_p
I = ctypes.c_int
U = ctypes.c_uint
F = ctypes.c_float
PRE = [U, U, U, U, U, P, I, I, I, P, P, P, P, F, F, F, F, F, F, P, I, I]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the kernels for the host; apt-get install g++")
    lib = tmp_path_factory.mktemp("cuda_host") / "kernels_host.so"
    # -ffp-contract=off: no FMA may change a rounding the GPU build does not make either.
    subprocess.run([cxx, "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-Wall", "-Werror",
                    "-o", str(lib), str(HERE / "cuda_host_runner.cpp")], check=True)
    so = ctypes.CDLL(str(lib))
    so.host_linear_resize_coeffs.argtypes = [U, U, U, U, U, I, I, I, P, P]
    so.host_preprocess_bgr_f32.argtypes = PRE
    so.host_preprocess_bgr_f16.argtypes = PRE
    so.host_overlay_bgr.argtypes = [U, U, U, U, U, P, I, I, P, I, I, I, P, I, I, P]
    so.host_argmax_channels.argtypes = [U, U, U, U, U, P, I, I, P]
    return so


def ptr(a: np.ndarray):
    return a.ctypes.data_as(P)


def gpu_kernels():
    try:
        return ck.CudaKernels()
    except Exception as e:   # no pycuda/CuPy, or no usable GPU
        pytest.skip(f"no CUDA GPU with pycuda or CuPy here ({str(e).splitlines()[0][:120]})")
