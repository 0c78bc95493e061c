// Fused overlay: labels at model resolution -> nearest upsample to the source size -> BGR
// palette -> alpha blend with the source frame -> uint8 BGR. One thread per source pixel and
// frame: blockIdx.z is the frame, so N frames (images, labels and outputs each back to back in
// one buffer) take one launch with gridDim.z = N; one frame is N = 1.
//
// Matches core/overlay.py (render_overlay) exactly: half-pixel nearest sampling in integer arithmetic
// src = ((2 * y + 1) * h) / (2 * H), the 256-entry BGR lookup table indexed by the label's
// low byte, and the fixed-point blend (image * (256 - a) + color * a + 128) >> 8 with
// a = round(alpha * 256).
//
// Same rules as preprocess.cu: CUDA C that sm_72 has, no shared memory, no #include, so it
// builds with nvcc, NVRTC and (testkit/cuda_host_shim.h) as host C++.

#define OVERLAY_MODE_BLEND 0     // "overlay"
#define OVERLAY_MODE_MASK 1      // "mask": the palette colors alone
#define OVERLAY_MODE_SIDE 2      // "side-by-side": source left, overlay right (2W wide)

// labels: label_h x label_w ints read every `label_step` ints (1 for int32 labels, 2 for
// int64 labels: their low word on a little-endian GPU). out: H x W x 3, or H x 2W x 3 in
// side-by-side mode. (2 * y + 1) * label_h stays in int range for any frame below 46k rows.
extern "C" __global__ void overlay_bgr(const unsigned char* image, int height, int width,
                                       const int* labels, int label_h, int label_w, int label_step,
                                       const unsigned char* lut_bgr, int alpha256, int mode,
                                       unsigned char* out)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= height) return;
    int out_w = mode == OVERLAY_MODE_SIDE ? 2 * width : width;
    long long frame = blockIdx.z;
    image += frame * height * width * 3;
    labels += frame * label_h * label_w * label_step;
    out += frame * height * out_w * 3;
    int ly = ((2 * y + 1) * label_h) / (2 * height);
    int lx = ((2 * x + 1) * label_w) / (2 * width);
    int label = labels[(ly * label_w + lx) * label_step] & 255;
    const unsigned char* color = lut_bgr + label * 3;
    const unsigned char* pixel = image + (y * width + x) * 3;
    unsigned char* o = out + (y * out_w + x) * 3;
    if (mode == OVERLAY_MODE_SIDE) {
        o[0] = pixel[0]; o[1] = pixel[1]; o[2] = pixel[2];
        o += width * 3;
    }
    for (int c = 0; c < 3; c++) {
        o[c] = mode == OVERLAY_MODE_MASK
            ? color[c]
            : (unsigned char)((pixel[c] * (256 - alpha256) + color[c] * alpha256 + 128) >> 8);
    }
}

// Logits [N, C, h, w] float32 -> labels [N, h, w] int32, the first maximum like numpy.argmax;
// blockIdx.z is the frame. For engines exported with --head logits, so the overlay still
// needs no host round trip.
extern "C" __global__ void argmax_channels(const float* logits, int num_classes, int plane, int* labels)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    long long frame = blockIdx.z;
    logits += frame * num_classes * plane;
    labels += frame * plane;
    float best = logits[i];
    int best_c = 0;
    for (int c = 1; c < num_classes; c++) {
        float v = logits[c * plane + i];
        if (v > best) { best = v; best_c = c; }
    }
    labels[i] = best_c;
}

// Scene analytics: the zone histogram. counts[cell][class] += 1 for every label pixel, where
// `cells` is the zones rasterized at the label map's size (app/analytics/zones.py: one byte
// per pixel, the set of zones the pixel lies in). Only the [cells x classes] counts go back to
// the host, never the label map. blockIdx.z is the frame: labels, counts (and cells, unless
// cells_step is 0 for one map shared by the batch) back to back. Labels outside 0..num_classes
// are not counted. Counts must be zeroed before the launch. Matches app/analytics/coverage.py's
// cell_histogram exactly (integer counts: the order of the atomic adds cannot change them).
extern "C" __global__ void zone_histogram(const int* labels, int plane, int label_step,
                                          const unsigned char* cells, int cells_step,
                                          int num_classes, int bins, unsigned int* counts)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    long long frame = blockIdx.z;
    labels += frame * plane * label_step;
    cells += frame * cells_step;
    counts += frame * bins;
    int label = labels[(long long)i * label_step];
    if (label < 0 || label >= num_classes) return;
    atomicAdd(counts + cells[i] * num_classes + label, 1u);
}
