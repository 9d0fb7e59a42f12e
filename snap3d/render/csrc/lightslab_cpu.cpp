// Light-slab rendering on the CPU, inference only: rays -> slab -> (u,v,s,t) -> the
// decoder's first layer read from folded feature planes -> the rest of the MLP -> (given a
// background) colour and alpha composited as LightSlabModel._composite does.
//
// Same arithmetic as LightSlabModel.decode_rays in snap3d/representations/lightslab.py
// (the reference): the model's concatenated plane features feed a linear layer, and
// bilinear interpolation commutes with it, so each plane is stored already multiplied by
// its block of that layer's weights ("folded", [K, rows, cols, H] per coordinate pair,
// every level resampled onto the finest grid, which refines the coarser ones exactly).
// A ray then costs 6 pairs x 4 taps x H multiply-adds instead of sampling 6 x levels
// planes and a matrix product. Rays go through in batches: the geometry of a batch runs
// in loops the compiler vectorises, then each ray gathers its taps and runs the MLP.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

namespace {

constexpr int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
constexpr int kSlabFields = 22;  // rotation 9, origin 3, depths 2, centers 4, half extents 4
constexpr int kBatch = 64;       // rays per batch
constexpr int kMaxWidth = 256;   // widest layer (the model falls back to PyTorch beyond)

// The hot loops are compiled twice on x86-64, for AVX2+FMA and for the baseline, and the
// drivers pick one at run time (``use_avx2``).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SNAP3D_X86 1
#define SNAP3D_AVX2 __attribute__((target("avx2,fma")))
#else
#define SNAP3D_X86 0
#define SNAP3D_AVX2
#endif
#if defined(__GNUC__) || defined(__clang__)
#define SNAP3D_INLINE inline __attribute__((always_inline))
#define SNAP3D_VECTORS 1
typedef float v8f __attribute__((vector_size(32)));
#else
#define SNAP3D_INLINE inline
#define SNAP3D_VECTORS 0
#endif

struct Plane {
    const float *data;  // [K, rows, cols, H]
    int rows, cols;
};

struct Layer {
    const float *weight;  // [out, in]
    const float *bias;    // [out]
    int in, out;
    std::vector<float> transposed;  // [in, out]
};

struct Decoder {
    const float *slabs;    // [K, kSlabFields]
    const float *sectors;  // [K, 3]
    float centre[3];
    int num_slabs;
    bool by_direction;
    float min_cos;
    Plane planes[6];
    const float *bias;  // [H], the first layer's
    int hidden;
    std::vector<Layer> layers;  // after the first: ReLU before each
    const float *background;  // [3]: composite (output rgb, alpha), or null: raw outputs
    bool has_alpha;           // composite: the last raw output is an opacity logit
    int out_dim;
};

// What a batch of rays carries between the stages.
struct Batch {
    int n;
    int32_t slab[kBatch];
    float ol[3][kBatch];  // origin and direction in the slab's frame
    float dl[3][kBatch];
    bool valid[kBatch];
    float unit[4][kBatch];  // (u,v,s,t) mapped to [0,1]
    float depth[2][kBatch], centre[4][kBatch], scale[4][kBatch];  // each ray's slab's
    int32_t offset[6][kBatch];  // element offset of the top-left tap, per plane
    float fy[6][kBatch], fx[6][kBatch];
    alignas(64) float x[kBatch * kMaxWidth];  // activations, a row per ray
    alignas(64) float y[kBatch * kMaxWidth];
};

// The slab nearest a viewpoint v (any length: the argmax does not depend on it).
SNAP3D_INLINE int nearest_slab(const Decoder &dec, const float *v) {
    int k = 0;
    float best = -INFINITY;
    for (int s = 0; s < dec.num_slabs; ++s) {
        const float *c = dec.sectors + 3 * s;
        const float dot = v[0] * c[0] + v[1] * c[1] + v[2] * c[2];
        if (dot > best) best = dot, k = s;
    }
    return k;
}

// x in slab k's frame: R (x - origin) for points, R x for directions.
SNAP3D_INLINE void to_slab(const Decoder &dec, int k, const float *x, bool point, float *out) {
    const float *slab = dec.slabs + static_cast<int64_t>(k) * kSlabFields;
    const float *R = slab, *origin = slab + 9;
    float y[3];
    for (int i = 0; i < 3; ++i) y[i] = point ? x[i] - origin[i] : x[i];
    for (int i = 0; i < 3; ++i) out[i] = R[3 * i] * y[0] + R[3 * i + 1] * y[1] + R[3 * i + 2] * y[2];
}

// (u,v,s,t) of rays [0, n) of the batch, with slab constants given per ray by
// depth(i, j), centre(i, c), scale(i, c): one branch-free loop.
template <typename Depth, typename Centre, typename Scale>
SNAP3D_INLINE void intersect_with(Batch &b, float min_cos, Depth depth, Centre centre, Scale scale) {
    const int n = b.n;
    const float c2 = min_cos * min_cos;
    for (int i = 0; i < n; ++i) {
        const float ox = b.ol[0][i], oy = b.ol[1][i], oz = b.ol[2][i];
        const float dx = b.dl[0][i], dy = b.dl[1][i], dz = b.dl[2][i];
        // cos(ray, normal) > min_cos, without the square root
        const bool valid = (dz > 0) & (dz * dz > c2 * (dx * dx + dy * dy + dz * dz));
        const float inv = 1.f / (valid ? dz : 1.f);
        const float t0 = (depth(i, 0) - oz) * inv, t1 = (depth(i, 1) - oz) * inv;
        const float raw[4] = {ox + t0 * dx, oy + t0 * dy, ox + t1 * dx, oy + t1 * dy};
        for (int c = 0; c < 4; ++c) {
            // invalid rays take uvst 0, the middle of the planes
            const float x = valid ? (raw[c] - centre(i, c)) * scale(i, c) : 0.f;
            b.unit[c][i] = (std::min(std::max(x, -1.f), 1.f) + 1.f) * 0.5f;
        }
        b.valid[i] = valid;
    }
}

// (u,v,s,t) of the batch's rays: all in slab ``fixed``, or (fixed < 0) each in b.slab[i],
// whose constants are gathered first.
SNAP3D_INLINE void intersect(const Decoder &dec, Batch &b, int fixed) {
    if (fixed >= 0) {
        const float *slab = dec.slabs + static_cast<int64_t>(fixed) * kSlabFields;
        float depth[2] = {slab[12], slab[13]}, centre[4], scale[4];
        for (int c = 0; c < 4; ++c) centre[c] = slab[14 + c], scale[c] = 1.f / slab[18 + c];
        intersect_with(
            b, dec.min_cos, [&](int, int j) { return depth[j]; },
            [&](int, int c) { return centre[c]; }, [&](int, int c) { return scale[c]; });
        return;
    }
    for (int i = 0; i < b.n; ++i) {
        const float *slab = dec.slabs + static_cast<int64_t>(b.slab[i]) * kSlabFields;
        b.depth[0][i] = slab[12], b.depth[1][i] = slab[13];
        for (int c = 0; c < 4; ++c) b.centre[c][i] = slab[14 + c], b.scale[c][i] = 1.f / slab[18 + c];
    }
    intersect_with(
        b, dec.min_cos, [&](int i, int j) { return b.depth[j][i]; },
        [&](int i, int c) { return b.centre[c][i]; }, [&](int i, int c) { return b.scale[c][i]; });
}

// Top-left tap and fractions of every ray on every plane.
SNAP3D_INLINE void locate(const Decoder &dec, Batch &b) {
    const int H = dec.hidden;
    for (int p = 0; p < 6; ++p) {
        const Plane &plane = dec.planes[p];
        const float *ua = b.unit[kPairs[p][0]], *ub = b.unit[kPairs[p][1]];
        const float rmax = static_cast<float>(plane.rows - 1), cmax = static_cast<float>(plane.cols - 1);
        const int r_hi = plane.rows - 2, c_hi = plane.cols - 2, rows = plane.rows, cols = plane.cols;
        int32_t *offset = b.offset[p];
        float *fy = b.fy[p], *fx = b.fx[p];
        const int32_t *slab = b.slab;
        const int n = b.n;
        for (int i = 0; i < n; ++i) {
            const float y = ua[i] * rmax, x = ub[i] * cmax;
            // the last cell takes the far border (fraction 1), so that every tap exists
            const int y0 = std::min(static_cast<int>(y), r_hi), x0 = std::min(static_cast<int>(x), c_hi);
            fy[i] = y - static_cast<float>(y0);
            fx[i] = x - static_cast<float>(x0);
            offset[i] = ((slab[i] * rows + y0) * cols + x0) * H;
        }
    }
}

// out = weight x + bias (weight [D,H]); eight partial sums per row so that the compiler
// vectorises the reduction.
SNAP3D_INLINE void dense(const float *__restrict x, const float *__restrict weight,
                         const float *__restrict bias, float *__restrict out, int D, int H) {
    const int H8 = H & ~7;
    for (int d = 0; d < D; ++d) {
        const float *w = weight + static_cast<int64_t>(d) * H;
        float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int h = 0; h < H8; h += 8) {
            for (int j = 0; j < 8; ++j) part[j] += w[h + j] * x[h + j];
        }
        float sum = ((part[0] + part[1]) + (part[2] + part[3])) +
                    ((part[4] + part[5]) + (part[6] + part[7]));
        for (int h = H8; h < H; ++h) sum += w[h] * x[h];
        out[d] = sum + bias[d];
    }
}

// acc[h] += the bilinear sample of one folded plane (four taps, weights w).
SNAP3D_INLINE void add_bilinear(float *__restrict acc, const float *__restrict t00,
                                const float *__restrict t01, const float *__restrict t10,
                                const float *__restrict t11, float w00, float w01, float w10,
                                float w11, int H) {
    for (int h = 0; h < H; ++h) {
        acc[h] += w00 * t00[h] + w01 * t01[h] + w10 * t10[h] + w11 * t11[h];
    }
}

// y[i, :] = bias + x[i, :] W^T for the rays i < n (rounded up to 4: rows past n are
// scratch) with wt = W^T [in, out], out a multiple of 8: blocks of 4 rays x 8 V outputs
// held in registers.
template <int V>
SNAP3D_INLINE void gemm_block(const float *__restrict x, const float *__restrict wt,
                              const float *__restrict bias, float *__restrict y, int in, int out,
                              int i, int o) {
#if SNAP3D_VECTORS
    v8f acc[4][V];
    for (int v = 0; v < V; ++v) {
        v8f b;
        std::memcpy(&b, bias + o + 8 * v, sizeof b);
        for (int r = 0; r < 4; ++r) acc[r][v] = b;
    }
    for (int h = 0; h < in; ++h) {
        v8f w[V];
        for (int v = 0; v < V; ++v) std::memcpy(&w[v], wt + static_cast<int64_t>(h) * out + o + 8 * v, sizeof(v8f));
        for (int r = 0; r < 4; ++r) {
            const float xr = x[(i + r) * kMaxWidth + h];
            for (int v = 0; v < V; ++v) acc[r][v] += xr * w[v];
        }
    }
    for (int r = 0; r < 4; ++r) {
        for (int v = 0; v < V; ++v) std::memcpy(y + (i + r) * kMaxWidth + o + 8 * v, &acc[r][v], sizeof(v8f));
    }
#else
    for (int r = 0; r < 4; ++r) {
        for (int d = o; d < o + 8 * V; ++d) {
            float sum = bias[d];
            for (int h = 0; h < in; ++h) sum += x[(i + r) * kMaxWidth + h] * wt[static_cast<int64_t>(h) * out + d];
            y[(i + r) * kMaxWidth + d] = sum;
        }
    }
#endif
}

SNAP3D_INLINE void gemm(const float *x, const Layer &layer, float *y, int n) {
    for (int i = 0; i < n; i += 4) {
        int o = 0;
        for (; o + 16 <= layer.out; o += 16) {
            gemm_block<2>(x, layer.transposed.data(), layer.bias, y, layer.in, layer.out, i, o);
        }
        if (o < layer.out) gemm_block<1>(x, layer.transposed.data(), layer.bias, y, layer.in, layer.out, i, o);
    }
}

// The first layer of ray i into row: the bias plus the six planes' bilinear samples.
SNAP3D_INLINE void first_layer(const Decoder &dec, const Batch &b, int i, float *row) {
    const int H = dec.hidden;
    for (int h = 0; h < H; ++h) row[h] = dec.bias[h];
    for (int p = 0; p < 6; ++p) {
        const Plane &plane = dec.planes[p];
        const float *t00 = plane.data + b.offset[p][i];
        const float *t10 = t00 + static_cast<int64_t>(plane.cols) * H;
        const float fy = b.fy[p][i], fx = b.fx[p][i];
        add_bilinear(row, t00, t00 + H, t10, t10 + H, (1 - fy) * (1 - fx), (1 - fy) * fx,
                     fy * (1 - fx), fy * fx, H);
    }
}

#if SNAP3D_VECTORS
// The same for H = 8 V, the sums held in registers across the planes.
template <int V>
SNAP3D_INLINE void first_layer_fixed(const Decoder &dec, const Batch &b, int i, float *row) {
    constexpr int H = 8 * V;
    v8f acc[V];
    // a vector at a time: one copy of the whole array is split in 16-byte moves through the
    // stack that the 32-byte loads then wait on
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) std::memcpy(&acc[v], dec.bias + 8 * v, sizeof(v8f));
#pragma GCC unroll 6
    for (int p = 0; p < 6; ++p) {
        const Plane &plane = dec.planes[p];
        const float *t00 = plane.data + b.offset[p][i];
        const float *t10 = t00 + static_cast<int64_t>(plane.cols) * H;
        const float fy = b.fy[p][i], fx = b.fx[p][i];
        const float w00 = (1 - fy) * (1 - fx), w01 = (1 - fy) * fx, w10 = fy * (1 - fx),
                    w11 = fy * fx;
#pragma GCC unroll 8
        for (int v = 0; v < V; ++v) {
            v8f a, c, d, e;
            std::memcpy(&a, t00 + 8 * v, sizeof a);
            std::memcpy(&c, t00 + H + 8 * v, sizeof c);
            std::memcpy(&d, t10 + 8 * v, sizeof d);
            std::memcpy(&e, t10 + H + 8 * v, sizeof e);
            acc[v] += w00 * a + w01 * c + w10 * d + w11 * e;
        }
    }
    std::memcpy(row, acc, sizeof acc);
}
#endif

// Ask for the cache lines of ray i's taps (they are scattered over the planes: without
// this, each ray waits on its loads).
constexpr int kAhead = 4;
SNAP3D_INLINE void prefetch_taps(const Decoder &dec, const Batch &b, int i) {
#if SNAP3D_VECTORS
    const int64_t bytes = static_cast<int64_t>(dec.hidden) * 2 * sizeof(float);
    for (int p = 0; p < 6; ++p) {
        const Plane &plane = dec.planes[p];
        const char *t00 = reinterpret_cast<const char *>(plane.data + b.offset[p][i]);
        const char *t10 = t00 + static_cast<int64_t>(plane.cols) * dec.hidden * sizeof(float);
        __builtin_prefetch(t00);
        __builtin_prefetch(t10);
        __builtin_prefetch(t00 + bytes - 1);
        __builtin_prefetch(t10 + bytes - 1);
    }
#endif
}

// The taps and the MLP of every ray of the batch; output rows at out (out_dim each).
SNAP3D_INLINE void decode(const Decoder &dec, Batch &b, float *out) {
    const int H = dec.hidden;
    float *x = b.x, *y = b.y;
    for (int i = 0; i < b.n; ++i) {
        float *row = x + i * kMaxWidth;
        if (i + kAhead < b.n) prefetch_taps(dec, b, i + kAhead);
        switch (SNAP3D_VECTORS ? H : 0) {
#if SNAP3D_VECTORS
            case 16: first_layer_fixed<2>(dec, b, i, row); break;
            case 24: first_layer_fixed<3>(dec, b, i, row); break;
            case 32: first_layer_fixed<4>(dec, b, i, row); break;
            case 48: first_layer_fixed<6>(dec, b, i, row); break;
            case 64: first_layer_fixed<8>(dec, b, i, row); break;
#endif
            default: first_layer(dec, b, i, row);
        }
    }
    int width = H;
    for (const Layer &layer : dec.layers) {
        for (int i = 0; i < b.n; ++i) {
            float *row = x + i * kMaxWidth;
            for (int h = 0; h < width; ++h) row[h] = std::max(row[h], 0.f);
        }
        if (layer.out % 8 == 0) {
            gemm(x, layer, y, b.n);
        } else {
            for (int i = 0; i < b.n; ++i) {
                dense(x + i * kMaxWidth, layer.weight, layer.bias, y + i * kMaxWidth, layer.out, width);
            }
        }
        width = layer.out;
        std::swap(x, y);
    }
    if (dec.background == nullptr) {
        for (int i = 0; i < b.n; ++i) {
            std::memcpy(out + static_cast<int64_t>(i) * dec.out_dim, x + i * kMaxWidth, sizeof(float) * width);
        }
        return;
    }
    // colour sigmoid(raw[0:3]) over the background with alpha = hit x sigmoid(raw[3])
    for (int i = 0; i < b.n; ++i) {
        const float *raw = x + i * kMaxWidth;
        float *px = out + static_cast<int64_t>(i) * 4;
        float alpha = b.valid[i] ? 1.f : 0.f;
        if (dec.has_alpha) alpha *= 1.f / (1.f + std::exp(-raw[3]));
        for (int c = 0; c < 3; ++c) {
            const float colour = 1.f / (1.f + std::exp(-raw[c]));
            px[c] = dec.background[c] + alpha * (colour - dec.background[c]);
        }
        px[3] = alpha;
    }
}

// Rays in world coordinates: origins [n,3], directions [n,3] (n <= kBatch).
#define SNAP3D_RAYS(NAME, ATTR)                                                                 \
    ATTR void NAME(const Decoder &dec, int n, const float *origins, const float *dirs, Batch &b, \
                   float *out, bool *valid) {                                                   \
        b.n = n;                                                                                \
        for (int i = 0; i < n; ++i) {                                                           \
            const float *o = origins + 3 * i, *d = dirs + 3 * i;                                \
            float v[3], ol[3], dl[3];                                                           \
            for (int j = 0; j < 3; ++j) v[j] = dec.by_direction ? -d[j] : o[j] - dec.centre[j]; \
            const int k = nearest_slab(dec, v);                                                 \
            to_slab(dec, k, o, true, ol);                                                       \
            to_slab(dec, k, d, false, dl);                                                      \
            b.slab[i] = k;                                                                      \
            for (int j = 0; j < 3; ++j) b.ol[j][i] = ol[j], b.dl[j][i] = dl[j];                 \
        }                                                                                       \
        intersect(dec, b, dec.num_slabs == 1 ? 0 : -1);       \
        locate(dec, b);                                                                         \
        decode(dec, b, out);                                                                    \
        for (int i = 0; i < n; ++i) valid[i] = b.valid[i];                                      \
    }

// Pixels j0 .. j0+n-1 of a pinhole row, all from origin o: the world direction of pixel j
// is d0 + j dj. ``fixed``: the slab of every ray (-1: chosen per ray by its direction).
#define SNAP3D_ROW(NAME, ATTR)                                                                  \
    ATTR void NAME(const Decoder &dec, int j0, int n, const float *o, const double *d0,         \
                   const double *dj, int fixed, Batch &b, float *out, bool *valid) {           \
        b.n = n;                                                                                \
        if (fixed >= 0) {                                                                       \
            const float *R = dec.slabs + static_cast<int64_t>(fixed) * kSlabFields;             \
            float ol[3], a[3], s[3];                                                            \
            to_slab(dec, fixed, o, true, ol);                                                   \
            for (int r = 0; r < 3; ++r) {                                                       \
                a[r] = static_cast<float>(R[3 * r] * (d0[0] + j0 * dj[0]) +                     \
                                          R[3 * r + 1] * (d0[1] + j0 * dj[1]) +                 \
                                          R[3 * r + 2] * (d0[2] + j0 * dj[2]));                 \
                s[r] = static_cast<float>(R[3 * r] * dj[0] + R[3 * r + 1] * dj[1] +             \
                                          R[3 * r + 2] * dj[2]);                                \
            }                                                                                   \
            for (int i = 0; i < n; ++i) {                                                       \
                b.slab[i] = fixed;                                                              \
                for (int r = 0; r < 3; ++r) b.ol[r][i] = ol[r], b.dl[r][i] = a[r] + i * s[r];  \
            }                                                                                   \
            intersect(dec, b, fixed);                                                     \
        } else {                                                                                \
            for (int i = 0; i < n; ++i) {                                                       \
                float d[3], ol[3], dl[3], v[3];                                                 \
                for (int r = 0; r < 3; ++r) {                                                   \
                    d[r] = static_cast<float>(d0[r] + (j0 + i) * dj[r]);                        \
                    v[r] = -d[r];                                                               \
                }                                                                               \
                const int k = nearest_slab(dec, v);                                             \
                to_slab(dec, k, o, true, ol);                                                   \
                to_slab(dec, k, d, false, dl);                                                  \
                b.slab[i] = k;                                                                  \
                for (int r = 0; r < 3; ++r) b.ol[r][i] = ol[r], b.dl[r][i] = dl[r];             \
            }                                                                                   \
            intersect(dec, b, -1);               \
        }                                                                                       \
        locate(dec, b);                                                                         \
        decode(dec, b, out);                                                                    \
        for (int i = 0; i < n; ++i) valid[i] = b.valid[i];                                      \
    }

SNAP3D_RAYS(rays_baseline, )
SNAP3D_ROW(row_baseline, )
#if SNAP3D_X86
SNAP3D_RAYS(rays_avx2, SNAP3D_AVX2)
SNAP3D_ROW(row_avx2, SNAP3D_AVX2)
const bool use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif

void decode_rays(const Decoder &dec, int n, const float *origins, const float *dirs, Batch &b,
                 float *out, bool *valid) {
#if SNAP3D_X86
    if (use_avx2) return rays_avx2(dec, n, origins, dirs, b, out, valid);
#endif
    rays_baseline(dec, n, origins, dirs, b, out, valid);
}

void decode_row(const Decoder &dec, int j0, int n, const float *o, const double *d0,
                const double *dj, int fixed, Batch &b, float *out, bool *valid) {
#if SNAP3D_X86
    if (use_avx2) return row_avx2(dec, j0, n, o, d0, dj, fixed, b, out, valid);
#endif
    row_baseline(dec, j0, n, o, d0, dj, fixed, b, out, valid);
}

const float *float_ptr(const at::Tensor &t, const char *what) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
                "lightslab: ", what, " must be a contiguous float32 CPU tensor");
    return t.data_ptr<float>();
}

Decoder make_decoder(const at::Tensor &slabs, const at::Tensor &sectors, const at::Tensor &centre,
                     bool by_direction, double min_cos, const std::vector<at::Tensor> &planes,
                     const at::Tensor &bias, const std::vector<at::Tensor> &weights,
                     const std::vector<at::Tensor> &biases,
                     const c10::optional<at::Tensor> &background, bool has_alpha) {
    TORCH_CHECK(planes.size() == 6, "lightslab: six folded planes expected");
    TORCH_CHECK(slabs.dim() == 2 && slabs.size(1) == kSlabFields, "lightslab: slabs must be [K,22]");
    TORCH_CHECK(weights.size() == biases.size(), "lightslab: one bias per weight");
    Decoder dec{};
    dec.slabs = float_ptr(slabs, "slabs");
    dec.num_slabs = static_cast<int>(slabs.size(0));
    TORCH_CHECK(sectors.numel() == 3 * dec.num_slabs, "lightslab: sectors must be [K,3]");
    dec.sectors = float_ptr(sectors, "sectors");
    const float *c = float_ptr(centre, "centre");
    std::copy(c, c + 3, dec.centre);
    dec.by_direction = by_direction;
    dec.min_cos = static_cast<float>(min_cos);
    dec.hidden = static_cast<int>(bias.size(0));
    dec.bias = float_ptr(bias, "bias");
    TORCH_CHECK(dec.hidden <= kMaxWidth, "lightslab: layers wider than ", kMaxWidth);
    for (int p = 0; p < 6; ++p) {
        const at::Tensor &t = planes[p];
        TORCH_CHECK(t.dim() == 4 && t.size(0) == dec.num_slabs && t.size(1) >= 2 &&
                        t.size(2) >= 2 && t.size(3) == dec.hidden,
                    "lightslab: folded plane ", p, " must be [K,rows>=2,cols>=2,H]");
        dec.planes[p] = {float_ptr(t, "plane"), static_cast<int>(t.size(1)),
                         static_cast<int>(t.size(2))};
    }
    for (int p = 0; p < 6; ++p) {
        TORCH_CHECK(planes[p].numel() < (int64_t{1} << 31), "lightslab: a folded plane is too large");
    }
    int width = dec.hidden;
    for (size_t l = 0; l < weights.size(); ++l) {
        const at::Tensor &w = weights[l];
        TORCH_CHECK(w.dim() == 2 && w.size(1) == width && w.size(0) <= kMaxWidth &&
                        biases[l].numel() == w.size(0),
                    "lightslab: layer ", l, " has the wrong shape");
        Layer layer{float_ptr(w, "weight"), float_ptr(biases[l], "bias"), width,
                    static_cast<int>(w.size(0)), {}};
        layer.transposed.resize(static_cast<size_t>(layer.in) * layer.out);
        for (int o = 0; o < layer.out; ++o) {
            for (int h = 0; h < layer.in; ++h) layer.transposed[h * layer.out + o] = layer.weight[o * layer.in + h];
        }
        dec.layers.push_back(std::move(layer));
        width = static_cast<int>(w.size(0));
    }
    dec.out_dim = width;
    dec.has_alpha = has_alpha;
    if (background.has_value() && background->defined()) {
        TORCH_CHECK(background->numel() == 3, "lightslab: background must have 3 values");
        TORCH_CHECK(width == 3 + (has_alpha ? 1 : 0), "lightslab: compositing needs rgb(a) outputs");
        dec.background = float_ptr(*background, "background");
        dec.out_dim = 4;
    }
    return dec;
}

// Rays given: origins [M,3], directions [M,3] (any length) -> (raw [M,D], valid [M]).
std::tuple<at::Tensor, at::Tensor> lightslab_rays(
    const at::Tensor &origins, const at::Tensor &directions, const at::Tensor &slabs,
    const at::Tensor &sectors, const at::Tensor &centre, bool by_direction, double min_cos,
    std::vector<at::Tensor> planes, const at::Tensor &bias, std::vector<at::Tensor> weights,
    std::vector<at::Tensor> biases, const c10::optional<at::Tensor> &background, bool has_alpha) {
    const Decoder dec = make_decoder(slabs, sectors, centre, by_direction, min_cos, planes, bias,
                                     weights, biases, background, has_alpha);
    TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3 && directions.sizes() == origins.sizes(),
                "lightslab: origins and directions must be [M,3]");
    const int64_t M = origins.size(0);
    auto out = at::empty({M, dec.out_dim}, slabs.options());
    auto valid = at::empty({M}, slabs.options().dtype(at::kBool));
    const float *po = float_ptr(origins, "origins"), *pd = float_ptr(directions, "directions");
    float *pout = out.data_ptr<float>();
    bool *pvalid = valid.data_ptr<bool>();
    at::parallel_for(0, (M + kBatch - 1) / kBatch, 16, [&](int64_t begin, int64_t end) {
        auto batch = std::make_unique<Batch>();
        for (int64_t c = begin; c < end; ++c) {
            const int64_t i = c * kBatch;
            const int n = static_cast<int>(std::min<int64_t>(kBatch, M - i));
            decode_rays(dec, n, po + 3 * i, pd + 3 * i, *batch, pout + i * dec.out_dim, pvalid + i);
        }
    });
    return {out, valid};
}

// A pinhole camera's pixels: c2w [4,4] (OpenCV), K [3,3]; output pixel (j, i) of the
// rows x cols grid is the ray through image point ((j + 0.5) * stride + ox,
// (i + 0.5) * stride + oy) -> (raw [rows*cols,D], valid [rows*cols]).
std::tuple<at::Tensor, at::Tensor> lightslab_pinhole(
    const at::Tensor &c2w, const at::Tensor &K, int64_t rows, int64_t cols, double stride,
    double ox, double oy, const at::Tensor &slabs, const at::Tensor &sectors,
    const at::Tensor &centre, bool by_direction, double min_cos, std::vector<at::Tensor> planes,
    const at::Tensor &bias, std::vector<at::Tensor> weights, std::vector<at::Tensor> biases,
    const c10::optional<at::Tensor> &background, bool has_alpha) {
    const Decoder dec = make_decoder(slabs, sectors, centre, by_direction, min_cos, planes, bias,
                                     weights, biases, background, has_alpha);
    TORCH_CHECK(c2w.numel() == 16 && K.numel() == 9, "lightslab: c2w [4,4] and K [3,3]");
    auto c2w_d = c2w.to(at::kDouble).contiguous();
    auto K_d = K.to(at::kDouble).contiguous();
    const double *T = c2w_d.data_ptr<double>(), *k = K_d.data_ptr<double>();
    const double fx = k[0], skew = k[1], cx = k[2], fy = k[4], cy = k[5];
    const float o[3] = {static_cast<float>(T[3]), static_cast<float>(T[7]),
                        static_cast<float>(T[11])};
    const int64_t M = rows * cols;
    auto out = at::empty({M, dec.out_dim}, slabs.options());
    auto valid = at::empty({M}, slabs.options().dtype(at::kBool));
    float *pout = out.data_ptr<float>();
    bool *pvalid = valid.data_ptr<bool>();
    // world direction of output pixel (j, i): C (xn, yn, 1), linear in j and i
    auto world = [&](double xn, double yn, double z, double *dst) {
        for (int r = 0; r < 3; ++r) dst[r] = T[4 * r] * xn + T[4 * r + 1] * yn + T[4 * r + 2] * z;
    };
    const double x0 = (0.5 * stride + ox - cx) / fx, y0 = (0.5 * stride + oy - cy) / fy;
    double base[3], dj[3], di[3];
    world(x0 - skew / fx * y0, y0, 1.0, base);
    world(stride / fx, 0.0, 0.0, dj);
    world(-skew / fx * stride / fy, stride / fy, 0.0, di);
    int fixed = -1;  // one slab for the whole frame unless sectors go by direction
    if (!dec.by_direction) {
        float v[3];
        for (int r = 0; r < 3; ++r) v[r] = o[r] - dec.centre[r];
        fixed = nearest_slab(dec, v);
    }
    at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
        auto batch = std::make_unique<Batch>();
        for (int64_t i = begin; i < end; ++i) {
            double d0[3];
            for (int r = 0; r < 3; ++r) d0[r] = base[r] + i * di[r];
            for (int64_t j = 0; j < cols; j += kBatch) {
                const int n = static_cast<int>(std::min<int64_t>(kBatch, cols - j));
                const int64_t idx = i * cols + j;
                decode_row(dec, static_cast<int>(j), n, o, d0, dj, fixed, *batch,
                           pout + idx * dec.out_dim, pvalid + idx);
            }
        }
    });
    return {out, valid};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(snap3d, m) {
    m.def(
        "lightslab_rays(Tensor origins, Tensor directions, Tensor slabs, Tensor sectors, "
        "Tensor centre, bool by_direction, float min_cos, Tensor[] planes, Tensor bias, "
        "Tensor[] weights, Tensor[] biases, Tensor? background, bool has_alpha) -> (Tensor, Tensor)");
    m.def(
        "lightslab_pinhole(Tensor c2w, Tensor K, int rows, int cols, float stride, float ox, "
        "float oy, Tensor slabs, Tensor sectors, Tensor centre, bool by_direction, "
        "float min_cos, Tensor[] planes, Tensor bias, Tensor[] weights, Tensor[] biases, "
        "Tensor? background, bool has_alpha) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(snap3d, CPU, m) {
    m.impl("lightslab_rays", &lightslab_rays);
    m.impl("lightslab_pinhole", &lightslab_pinhole);
}
