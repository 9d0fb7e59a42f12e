// Tile-based compositing of 2D Gaussians on the CPU: forward and hand-written backward.
//
// The arithmetic follows gsplat's rasterize_to_pixels kernels (same skip, clamp and
// early-termination rules), so both backends render the same images. Tiles are the
// unit of parallel work; each Gaussian is evaluated only on the pixels where its alpha
// can reach 1/255, row by row.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

struct Tiles {
    int64_t n_images, width, height, tile_size, tile_width, tile_height, n_isects;
    const int32_t *offsets;     // [I * tile_height * tile_width]
    const int32_t *flatten_ids; // [n_isects]

    int64_t count() const { return n_images * tile_width * tile_height; }
    int64_t begin(int64_t tile) const { return offsets[tile]; }
    int64_t end(int64_t tile) const { return tile + 1 < count() ? offsets[tile + 1] : n_isects; }
};

// The pixels of one tile, clipped to the image.
struct TileRect {
    int64_t image, x0, y0, x1, y1;

    TileRect(const Tiles &t, int64_t tile) {
        const int64_t per_image = t.tile_width * t.tile_height;
        image = tile / per_image;
        const int64_t local = tile % per_image;
        x0 = (local % t.tile_width) * t.tile_size;
        y0 = (local / t.tile_width) * t.tile_size;
        x1 = std::min(x0 + t.tile_size, t.width);
        y1 = std::min(y0 + t.tile_size, t.height);
    }
};

// exp(x) for the exponents of Gaussian falloff, -sigma (x <= 0 when it matters). Written
// without library calls so that a row of pixels vectorizes: Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2 / 2, and a degree-7 Taylor polynomial (truncation below 5e-9,
// a few ulp overall). Doubles, used for checking, take std::exp.
inline float exp_falloff(float x) {
    x = std::min(std::max(x, -87.0f), 88.0f);
    const float shifter = 12582912.0f; // 1.5 * 2^23: adding it rounds to an integer
    const float n = (x * 1.44269504f + shifter) - shifter;
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float q = 1.0f / 5040.0f;
    q = q * r + 1.0f / 720.0f;
    q = q * r + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    q = q * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return q * scale;
}

inline double exp_falloff(double x) { return std::exp(x); }

template <typename scalar_t> struct Rules {
    static constexpr scalar_t alpha_min = scalar_t(1) / scalar_t(255);
    static constexpr scalar_t alpha_max = scalar_t(0.999);
    static constexpr scalar_t transmittance_min = scalar_t(1e-4);
};

// One screen-space Gaussian and the pixels it can reach: where
// opacity * exp(-sigma) >= 1/255, i.e. sigma <= log(255 * opacity), an ellipse. Rows come
// from the bounding box (radii); within a row the ellipse gives an exact interval, widened
// by a pixel against rounding (the per-pixel test still decides).
template <typename scalar_t> struct Splat {
    scalar_t mx, my, a, b, c, opacity;
    // For columns(): 2 a log(255 opacity), det(conic) and b / a, 1 / a.
    scalar_t reach, det, b_over_a, inv_a;
    int32_t radius_y;
    const scalar_t *color;

    Splat() = default;
    Splat(int64_t g, const scalar_t *means2d, const scalar_t *conics, const scalar_t *opacities,
          const int32_t *radii, const scalar_t *colors, int64_t D)
        : mx(means2d[2 * g]), my(means2d[2 * g + 1]), a(conics[3 * g]), b(conics[3 * g + 1]),
          c(conics[3 * g + 2]), opacity(opacities[g]),
          reach(2 * a * std::log(scalar_t(255) * opacity)), det(a * c - b * b), b_over_a(b / a),
          inv_a(1 / a), radius_y(radii[2 * g + 1]), color(colors + g * D) {}

    // Rows [lo, hi) of [first, last) whose centres lie within the box.
    void rows(int64_t first, int64_t last, int64_t &lo, int64_t &hi) const {
        const scalar_t from = std::ceil(my - radius_y - scalar_t(0.5));
        const scalar_t to = std::floor(my + radius_y - scalar_t(0.5)) + 1;
        lo = static_cast<int64_t>(std::max<scalar_t>(from, first));
        hi = static_cast<int64_t>(std::min<scalar_t>(to, last));
    }

    // Columns [lo, hi) of [first, last) in the row at offset dy = my - (y + 0.5).
    void columns(scalar_t dy, int64_t first, int64_t last, int64_t &lo, int64_t &hi) const {
        // sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2 <= log(255 opacity)
        //   <=>  (a dx + b dy)^2 <= disc = 2 a log(255 opacity) - det dy^2
        const scalar_t disc = reach - dy * dy * det;
        if (!(a > 0) || disc < 0) {
            lo = hi = first;
            return;
        }
        // dx = mx - (x + 0.5), so x = mx - 0.5 - dx lies in centre +- half. Clamped to the
        // tile first, then truncated and widened by a pixel, which also covers rounding.
        const scalar_t centre = mx - scalar_t(0.5) + b_over_a * dy;
        const scalar_t half = std::sqrt(disc) * inv_a;
        const scalar_t below = first - 1, above = last;
        const scalar_t from = std::min(std::max(centre - half, below), above);
        const scalar_t to = std::min(std::max(centre + half, below), above);
        lo = std::max<int64_t>(static_cast<int64_t>(from) - 1, first);
        hi = std::max<int64_t>(lo, std::min<int64_t>(static_cast<int64_t>(to) + 2, last));
    }

    // For pixels x = lo + i, i < n, of the row at dy: dx[i], vis[i] = exp(-sigma) and
    // alpha[i] = min(0.999, opacity * vis), zeroed where gsplat skips the pair
    // (sigma < 0 or alpha < 1/255). Branch-free so that it vectorizes (with
    // -fno-trapping-math, which lets the compiler turn these selects into masks).
    void evaluate_row(
        scalar_t dy,
        int64_t lo,
        int n,
        scalar_t *__restrict__ dx,
        scalar_t *__restrict__ vis,
        scalar_t *__restrict__ alpha
    ) const {
        using R = Rules<scalar_t>;
        const scalar_t dx0 = mx - (lo + scalar_t(0.5)), cdy = c * dy * dy, bdy = b * dy;
        for (int i = 0; i < n; ++i) {
            const scalar_t x = dx0 - i;
            const scalar_t sigma = scalar_t(0.5) * (a * x * x + cdy) + bdy * x;
            const scalar_t v = exp_falloff(-sigma);
            const scalar_t al = std::min(R::alpha_max, opacity * v);
            dx[i] = x;
            vis[i] = v;
            const scalar_t visible = al >= R::alpha_min ? al : scalar_t(0);
            alpha[i] = sigma >= 0 ? visible : scalar_t(0);
        }
    }
};

// All Gaussians packed one struct each, with their per-Gaussian constants computed once:
// a tile's list visits Gaussians in depth order, i.e. at random in memory, and this way
// each visit touches one cache line (prefetched a few steps ahead) instead of one per
// input tensor. Culled Gaussians are never listed and stay unset.
template <typename scalar_t>
std::vector<Splat<scalar_t>> pack_splats(
    int64_t count,
    const scalar_t *means2d,
    const scalar_t *conics,
    const scalar_t *opacities,
    const int32_t *radii,
    const scalar_t *colors,
    int64_t D
) {
    std::vector<Splat<scalar_t>> splats(count);
    at::parallel_for(0, count, 4096, [&](int64_t first, int64_t last) {
        for (int64_t g = first; g < last; ++g) {
            if (radii[2 * g] > 0 || radii[2 * g + 1] > 0) {
                splats[g] = Splat<scalar_t>(g, means2d, conics, opacities, radii, colors, D);
            }
        }
    });
    return splats;
}

// How many list entries ahead the next Gaussians are fetched into cache.
constexpr int64_t kPrefetch = 8;

template <typename scalar_t>
inline void prefetch(
    const std::vector<Splat<scalar_t>> &splats, const Tiles &tiles, const scalar_t *colors,
    int64_t D, int64_t k
) {
    const int64_t g = tiles.flatten_ids[k];
    __builtin_prefetch(&splats[g]);
    __builtin_prefetch(colors + g * D);
}

// Runs body(tile) over all tiles, largest lists first, handing tiles out
// dynamically because their costs differ a lot.
template <typename Body>
void for_each_tile(const Tiles &tiles, const Body &body) {
    std::vector<int64_t> order(tiles.count());
    for (int64_t i = 0; i < tiles.count(); ++i) {
        order[i] = i;
    }
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return tiles.end(a) - tiles.begin(a) > tiles.end(b) - tiles.begin(b);
    });
    std::atomic<int64_t> next{0};
    const int64_t n_workers = std::min<int64_t>(at::get_num_threads(), tiles.count());
    at::parallel_for(0, n_workers, 1, [&](int64_t first, int64_t last) {
        for (int64_t worker = first; worker < last; ++worker) {
            while (true) {
                const int64_t i = next.fetch_add(1);
                if (i >= tiles.count()) {
                    break;
                }
                body(order[i]);
            }
        }
    });
}

// Composites one row segment of pixels (T, done, last point at its first pixel) with the
// alphas of Gaussian k: returns each pixel's weight alpha * T and counts the pixels that
// terminate. Written with integer masks so that it vectorizes.
template <typename scalar_t>
inline int composite_row(
    int n,
    int32_t k,
    const scalar_t *__restrict__ alpha,
    scalar_t *__restrict__ T,
    int32_t *__restrict__ done,
    int32_t *__restrict__ last,
    scalar_t *__restrict__ weight
) {
    using R = Rules<scalar_t>;
    int stopped = 0;
    for (int i = 0; i < n; ++i) {
        const scalar_t a = alpha[i], t = T[i], next_T = t * (1 - a);
        const int32_t live = (a > 0 ? 1 : 0) & (1 - done[i]);
        // gsplat stops before the Gaussian that would bring T to 1e-4 or below.
        const int32_t stop = live & (next_T <= R::transmittance_min ? 1 : 0);
        const int32_t use = live & (1 - stop);
        const scalar_t w = a * t;
        weight[i] = use ? w : scalar_t(0);
        T[i] = use ? next_T : t;
        last[i] = use ? k : last[i];
        done[i] |= stop;
        stopped += stop;
    }
    return stopped;
}

template <typename scalar_t>
void forward_kernel(
    const Tiles &tiles,
    int64_t count,
    int64_t D,
    const scalar_t *means2d,
    const scalar_t *conics,
    const scalar_t *colors,
    const scalar_t *opacities,
    const int32_t *radii,
    const scalar_t *backgrounds,
    scalar_t *out_colors,
    scalar_t *out_alphas,
    int32_t *last_ids
) {
    const auto splats = pack_splats(
        count, means2d, conics, opacities, radii, colors, D
    );
    for_each_tile(tiles, [&](int64_t tile) {
        const TileRect rect(tiles, tile);
        const int64_t w = rect.x1 - rect.x0, h = rect.y1 - rect.y0;
        // Colours are accumulated channel-major ([D, h * w]) so that rows vectorize.
        std::vector<scalar_t> T(w * h, scalar_t(1)), acc(D * w * h, scalar_t(0));
        std::vector<scalar_t> dx(w), vis(w), alpha(w), weight(w);
        std::vector<int32_t> last(w * h, -1), done(w * h, 0);
        int64_t active = w * h;
        const int64_t end = tiles.end(tile);
        for (int64_t k = tiles.begin(tile); k < end && active > 0; ++k) {
            if (k + kPrefetch < end) {
                prefetch(splats, tiles, colors, D, k + kPrefetch);
            }
            const Splat<scalar_t> &splat = splats[tiles.flatten_ids[k]];
            int64_t py0, py1;
            splat.rows(rect.y0, rect.y1, py0, py1);
            for (int64_t py = py0; py < py1; ++py) {
                const scalar_t dy = splat.my - (py + scalar_t(0.5));
                int64_t px0, px1;
                splat.columns(dy, rect.x0, rect.x1, px0, px1);
                const int n = static_cast<int>(px1 - px0);
                splat.evaluate_row(dy, px0, n, dx.data(), vis.data(), alpha.data());
                const int64_t row = (py - rect.y0) * w + (px0 - rect.x0);
                active -= composite_row<scalar_t>(
                    n, static_cast<int32_t>(k), alpha.data(), T.data() + row, done.data() + row,
                    last.data() + row, weight.data()
                );
                for (int64_t d = 0; d < D; ++d) {
                    scalar_t *channel = acc.data() + d * w * h + row;
                    const scalar_t color = splat.color[d];
                    for (int i = 0; i < n; ++i) {
                        channel[i] += weight[i] * color;
                    }
                }
            }
        }
        const scalar_t *background = backgrounds ? backgrounds + rect.image * D : nullptr;
        for (int64_t y = 0; y < h; ++y) {
            for (int64_t x = 0; x < w; ++x) {
                const int64_t p = y * w + x;
                const int64_t pix =
                    (rect.image * tiles.height + rect.y0 + y) * tiles.width + rect.x0 + x;
                out_alphas[pix] = 1 - T[p];
                last_ids[pix] = last[p];
                for (int64_t d = 0; d < D; ++d) {
                    out_colors[pix * D + d] =
                        acc[d * w * h + p] + (background ? T[p] * background[d] : scalar_t(0));
                }
            }
        }
    });
}

// Gradients are written per intersection (row k of `isect_grads`, laid out as
// [means2d (2), conic (3), opacity (1), colour (D), |means2d| (2)]) and summed per
// Gaussian afterwards, so that tiles never write to the same memory.
template <typename scalar_t>
void backward_kernel(
    const Tiles &tiles,
    int64_t count,
    int64_t D,
    const scalar_t *means2d,
    const scalar_t *conics,
    const scalar_t *colors,
    const scalar_t *opacities,
    const int32_t *radii,
    const scalar_t *backgrounds,
    const scalar_t *out_alphas,
    const int32_t *last_ids,
    const scalar_t *v_colors,
    const scalar_t *v_alphas,
    bool absgrad,
    scalar_t *isect_grads
) {
    using R = Rules<scalar_t>;
    const int64_t stride = 8 + D;
    const auto splats = pack_splats(
        count, means2d, conics, opacities, radii, colors, D
    );
    for_each_tile(tiles, [&](int64_t tile) {
        const TileRect rect(tiles, tile);
        const int64_t w = rect.x1 - rect.x0, h = rect.y1 - rect.y0;
        std::vector<scalar_t> T(w * h), T_final(w * h), v_pix(w * h * D), v_alpha_pix(w * h);
        std::vector<scalar_t> v_background(w * h, scalar_t(0)), behind(w * h * D, scalar_t(0));
        std::vector<scalar_t> dx(w), vis(w), alpha(w), v_color(D);
        std::vector<int32_t> last(w * h);
        const scalar_t *background = backgrounds ? backgrounds + rect.image * D : nullptr;
        int64_t last_any = -1;
        for (int64_t y = 0; y < h; ++y) {
            for (int64_t x = 0; x < w; ++x) {
                const int64_t p = y * w + x;
                const int64_t pix =
                    (rect.image * tiles.height + rect.y0 + y) * tiles.width + rect.x0 + x;
                T[p] = T_final[p] = 1 - out_alphas[pix];
                last[p] = last_ids[pix];
                last_any = std::max<int64_t>(last_any, last[p]);
                v_alpha_pix[p] = v_alphas[pix];
                for (int64_t d = 0; d < D; ++d) {
                    v_pix[p * D + d] = v_colors[pix * D + d];
                    if (background) {
                        v_background[p] += background[d] * v_colors[pix * D + d];
                    }
                }
            }
        }
        const int64_t begin = tiles.begin(tile);
        for (int64_t k = last_any; k >= begin; --k) {
            if (k - kPrefetch >= begin) {
                prefetch(splats, tiles, colors, D, k - kPrefetch);
            }
            const Splat<scalar_t> &splat = splats[tiles.flatten_ids[k]];
            const scalar_t a = splat.a, b = splat.b, c = splat.c, opacity = splat.opacity;
            int64_t py0, py1;
            splat.rows(rect.y0, rect.y1, py0, py1);
            std::fill(v_color.begin(), v_color.end(), scalar_t(0));
            scalar_t v_mx = 0, v_my = 0, v_a = 0, v_b = 0, v_c = 0, v_opacity = 0;
            scalar_t abs_mx = 0, abs_my = 0;
            for (int64_t py = py0; py < py1; ++py) {
                const scalar_t dy = splat.my - (py + scalar_t(0.5));
                int64_t px0, px1;
                splat.columns(dy, rect.x0, rect.x1, px0, px1);
                const int n = static_cast<int>(px1 - px0);
                splat.evaluate_row(dy, px0, n, dx.data(), vis.data(), alpha.data());
                const int64_t row = (py - rect.y0) * w + (px0 - rect.x0);
                for (int i = 0; i < n; ++i) {
                    const int64_t p = row + i;
                    if (alpha[i] == 0 || k > last[p]) {
                        continue;
                    }
                    const scalar_t ra = 1 / (1 - alpha[i]);
                    T[p] *= ra;
                    const scalar_t weight = alpha[i] * T[p];
                    scalar_t v_alpha = 0;
                    for (int64_t d = 0; d < D; ++d) {
                        const scalar_t v = v_pix[p * D + d];
                        v_color[d] += weight * v;
                        v_alpha += (splat.color[d] * T[p] - behind[p * D + d] * ra) * v;
                        behind[p * D + d] += splat.color[d] * weight;
                    }
                    v_alpha += T_final[p] * ra * (v_alpha_pix[p] - v_background[p]);
                    if (opacity * vis[i] <= R::alpha_max) {
                        const scalar_t v_sigma = -opacity * vis[i] * v_alpha;
                        const scalar_t x = dx[i];
                        v_a += scalar_t(0.5) * v_sigma * x * x;
                        v_b += v_sigma * x * dy;
                        v_c += scalar_t(0.5) * v_sigma * dy * dy;
                        const scalar_t gx = v_sigma * (a * x + b * dy);
                        const scalar_t gy = v_sigma * (b * x + c * dy);
                        v_mx += gx;
                        v_my += gy;
                        abs_mx += std::abs(gx);
                        abs_my += std::abs(gy);
                        v_opacity += vis[i] * v_alpha;
                    }
                }
            }
            scalar_t *out = isect_grads + k * stride;
            out[0] = v_mx;
            out[1] = v_my;
            out[2] = v_a;
            out[3] = v_b;
            out[4] = v_c;
            out[5] = v_opacity;
            for (int64_t d = 0; d < D; ++d) {
                out[6 + d] = v_color[d];
            }
            out[6 + D] = absgrad ? abs_mx : scalar_t(0);
            out[7 + D] = absgrad ? abs_my : scalar_t(0);
        }
    });
}

Tiles make_tiles(
    const at::Tensor &isect_offsets,
    const at::Tensor &flatten_ids,
    int64_t width,
    int64_t height,
    int64_t tile_size
) {
    TORCH_CHECK(isect_offsets.dim() == 3 && isect_offsets.scalar_type() == at::kInt);
    TORCH_CHECK(flatten_ids.scalar_type() == at::kInt && flatten_ids.is_contiguous());
    TORCH_CHECK(isect_offsets.is_contiguous());
    return Tiles{
        isect_offsets.size(0),
        width,
        height,
        tile_size,
        isect_offsets.size(2),
        isect_offsets.size(1),
        flatten_ids.numel(),
        isect_offsets.data_ptr<int32_t>(),
        flatten_ids.data_ptr<int32_t>(),
    };
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_forward(
    const at::Tensor &means2d,   // [I*N, 2]
    const at::Tensor &conics,    // [I*N, 3]
    const at::Tensor &colors,    // [I*N, D]
    const at::Tensor &opacities, // [I*N]
    const at::Tensor &radii,     // [I*N, 2] int32
    const std::optional<at::Tensor> &backgrounds, // [I, D]
    const at::Tensor &isect_offsets, // [I, tile_height, tile_width] int32
    const at::Tensor &flatten_ids,   // [n_isects] int32
    int64_t width,
    int64_t height,
    int64_t tile_size
) {
    const Tiles tiles = make_tiles(isect_offsets, flatten_ids, width, height, tile_size);
    const int64_t D = colors.size(1);
    auto out_colors = at::empty({tiles.n_images, height, width, D}, colors.options());
    auto out_alphas = at::empty({tiles.n_images, height, width, 1}, colors.options());
    auto last_ids = at::empty({tiles.n_images, height, width}, flatten_ids.options());
    AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "rasterize_forward", [&] {
        forward_kernel<scalar_t>(
            tiles,
            means2d.size(0),
            D,
            means2d.data_ptr<scalar_t>(),
            conics.data_ptr<scalar_t>(),
            colors.data_ptr<scalar_t>(),
            opacities.data_ptr<scalar_t>(),
            radii.data_ptr<int32_t>(),
            backgrounds ? backgrounds->data_ptr<scalar_t>() : nullptr,
            out_colors.data_ptr<scalar_t>(),
            out_alphas.data_ptr<scalar_t>(),
            last_ids.data_ptr<int32_t>()
        );
    });
    return {out_colors, out_alphas, last_ids};
}

// Returns per-Gaussian gradients [I*N, 8 + D] laid out as in backward_kernel.
at::Tensor rasterize_backward(
    const at::Tensor &means2d,
    const at::Tensor &conics,
    const at::Tensor &colors,
    const at::Tensor &opacities,
    const at::Tensor &radii,
    const std::optional<at::Tensor> &backgrounds,
    const at::Tensor &isect_offsets,
    const at::Tensor &flatten_ids,
    const at::Tensor &out_alphas, // [I, H, W, 1]
    const at::Tensor &last_ids,   // [I, H, W] int32
    const at::Tensor &v_colors,   // [I, H, W, D]
    const at::Tensor &v_alphas,   // [I, H, W, 1]
    int64_t width,
    int64_t height,
    int64_t tile_size,
    bool absgrad
) {
    const Tiles tiles = make_tiles(isect_offsets, flatten_ids, width, height, tile_size);
    const int64_t D = colors.size(1);
    auto isect_grads = at::zeros({tiles.n_isects, 8 + D}, colors.options());
    AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "rasterize_backward", [&] {
        backward_kernel<scalar_t>(
            tiles,
            means2d.size(0),
            D,
            means2d.data_ptr<scalar_t>(),
            conics.data_ptr<scalar_t>(),
            colors.data_ptr<scalar_t>(),
            opacities.data_ptr<scalar_t>(),
            radii.data_ptr<int32_t>(),
            backgrounds ? backgrounds->data_ptr<scalar_t>() : nullptr,
            out_alphas.data_ptr<scalar_t>(),
            last_ids.data_ptr<int32_t>(),
            v_colors.data_ptr<scalar_t>(),
            v_alphas.data_ptr<scalar_t>(),
            absgrad,
            isect_grads.data_ptr<scalar_t>()
        );
    });
    auto grads = at::zeros({means2d.size(0), 8 + D}, colors.options());
    grads.index_add_(0, flatten_ids, isect_grads);
    return grads;
}

} // namespace

// Registered as torch.ops.snap3d.*; only the light ATen headers are needed, which keeps
// the first-use compile short.
TORCH_LIBRARY(snap3d, m) {
    m.def("rasterize_forward", &rasterize_forward);
    m.def("rasterize_backward", &rasterize_backward);
}
