// Compiles engines/*.cu as plain C++ on a machine without a GPU (the CI kernel checks).
//
// The kernels are ordinary functions here; blockIdx/threadIdx/blockDim/gridDim are globals
// that testkit/cuda_host_runner.cpp sets before each call, looping over every block and
// thread of the launch grid. That is a faithful execution because the kernels use no shared
// memory, no __syncthreads and no warp functions: each thread's work depends only on its
// indices and the inputs. Build with -ffp-contract=off so no FMA changes a rounding.
#pragma once
#include <math.h>
#include <string.h>

struct host_dim3 { unsigned int x, y, z; };
static host_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

// CUDA intrinsics the kernels use, as their exact host equivalents.
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }

// One thread at a time on the host: an atomic add is a plain add.
static inline unsigned int atomicAdd(unsigned int* address, unsigned int value)
{
    unsigned int old = *address;
    *address = old + value;
    return old;
}
