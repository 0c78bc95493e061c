// Host launchers for the kernels in engines/*.cu: each runs its kernel once for every
// (block, thread) index of the grid, in order, like a GPU with one very slow core.
// Built by tests/engines/test_cuda_kernels.py with g++ and loaded through ctypes.
#include "cuda_host_shim.h"
#include "../engines/preprocess.cu"
#include "../engines/overlay.cu"

// gz: the frames of a batched launch (blockIdx.z); 1 for one frame and for the tables.
#define FOR_EACH_THREAD(gx, gy, gz, bx, by, CALL)                                      \
    gridDim = {gx, gy, gz}; blockDim = {bx, by, 1};                                     \
    for (blockIdx.z = 0; blockIdx.z < gz; blockIdx.z++)                                 \
    for (blockIdx.y = 0; blockIdx.y < gy; blockIdx.y++)                                 \
        for (blockIdx.x = 0; blockIdx.x < gx; blockIdx.x++)                             \
            for (threadIdx.y = 0; threadIdx.y < by; threadIdx.y++)                      \
                for (threadIdx.x = 0; threadIdx.x < bx; threadIdx.x++) { CALL; }

typedef unsigned int u32;
typedef unsigned char u8;

extern "C" void host_linear_resize_coeffs(u32 gx, u32 gy, u32 gz, u32 bx, u32 by,
                                          int src_len, int dst_len, int clamp_edges, int* ofs, short* w)
{
    FOR_EACH_THREAD(gx, gy, gz, bx, by, linear_resize_coeffs(src_len, dst_len, clamp_edges, ofs, w));
}

#define PREPROCESS_PARAMS const u8* src, int src_h, int src_w, int src_pitch,              \
    const int* xofs, const short* xw, const int* yofs, const short* yw,                    \
    float mr, float mg, float mb, float sr, float sg, float sb
#define PREPROCESS_ARGS src, src_h, src_w, src_pitch, xofs, xw, yofs, yw, mr, mg, mb, sr, sg, sb

extern "C" void host_preprocess_bgr_f32(u32 gx, u32 gy, u32 gz, u32 bx, u32 by, PREPROCESS_PARAMS,
                                        float* dst, int dst_h, int dst_w)
{
    FOR_EACH_THREAD(gx, gy, gz, bx, by, preprocess_bgr_f32(PREPROCESS_ARGS, dst, dst_h, dst_w));
}

extern "C" void host_preprocess_bgr_f16(u32 gx, u32 gy, u32 gz, u32 bx, u32 by, PREPROCESS_PARAMS,
                                        unsigned short* dst, int dst_h, int dst_w)
{
    FOR_EACH_THREAD(gx, gy, gz, bx, by, preprocess_bgr_f16(PREPROCESS_ARGS, dst, dst_h, dst_w));
}

extern "C" void host_overlay_bgr(u32 gx, u32 gy, u32 gz, u32 bx, u32 by, const u8* image, int height, int width,
                                 const int* labels, int label_h, int label_w, int label_step,
                                 const u8* lut, int alpha256, int mode, u8* out)
{
    FOR_EACH_THREAD(gx, gy, gz, bx, by, overlay_bgr(image, height, width, labels, label_h, label_w,
                                                label_step, lut, alpha256, mode, out));
}

extern "C" void host_argmax_channels(u32 gx, u32 gy, u32 gz, u32 bx, u32 by, const float* logits,
                                     int num_classes, int plane, int* labels)
{
    FOR_EACH_THREAD(gx, gy, gz, bx, by, argmax_channels(logits, num_classes, plane, labels));
}

extern "C" void host_zone_histogram(u32 gx, u32 gy, u32 gz, u32 bx, u32 by, const int* labels, int plane,
                                    int label_step, const u8* cells, int cells_step, int num_classes, int bins,
                                    unsigned int* counts)
{
    FOR_EACH_THREAD(gx, gy, gz, bx, by, zone_histogram(labels, plane, label_step, cells, cells_step,
                                                   num_classes, bins, counts));
}
