// EWA projection of 3D Gaussians into pinhole cameras on the CPU, forward and backward.
//
// Same arithmetic as snap3d/render/_projection.py (the reference, differentiated by
// autograd): the 2D covariance is (J R M)(J R M)^T + eps2d I with M = rotation * scales and
// J the perspective Jacobian at the centre clamped to 1.3x the field of view.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

namespace {

template <typename T> struct Vec3 {
    T x, y, z;
    T dot(const Vec3 &o) const { return x * o.x + y * o.y + z * o.z; }
    Vec3 operator*(T s) const { return {x * s, y * s, z * s}; }
    Vec3 operator+(const Vec3 &o) const { return {x + o.x, y + o.y, z + o.z}; }
    Vec3 &operator+=(const Vec3 &o) {
        x += o.x;
        y += o.y;
        z += o.z;
        return *this;
    }
};

// Row-major 3x3 matrix.
template <typename T> struct Mat3 {
    T m[3][3];
    Vec3<T> row(int i) const { return {m[i][0], m[i][1], m[i][2]}; }
    // v^T M: combination of the rows.
    Vec3<T> left(const Vec3<T> &v) const { return row(0) * v.x + row(1) * v.y + row(2) * v.z; }
    // M v
    Vec3<T> right(const Vec3<T> &v) const { return {row(0).dot(v), row(1).dot(v), row(2).dot(v)}; }
};

// Rotation from a quaternion (w, x, y, z), normalised here.
template <typename T> Mat3<T> quat_to_rotmat(const T *q, T &norm) {
    norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    const T inv = 1 / std::max(norm, T(1e-12));
    const T w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
    return {{{1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)},
             {2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)},
             {2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)}}};
}

// Gradient of a quaternion from the gradient V of its rotation matrix.
template <typename T> void quat_to_rotmat_vjp(const T *q, T norm, const Mat3<T> &V, T *v_q) {
    const T inv = 1 / std::max(norm, T(1e-12));
    const T w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
    const auto &v = V.m;
    const T g[4] = {
        2 * (-z * v[0][1] + y * v[0][2] + z * v[1][0] - x * v[1][2] - y * v[2][0] + x * v[2][1]),
        2 * (y * v[0][1] + z * v[0][2] + y * v[1][0] - 2 * x * v[1][1] - w * v[1][2] +
             z * v[2][0] + w * v[2][1] - 2 * x * v[2][2]),
        2 * (-2 * y * v[0][0] + x * v[0][1] + w * v[0][2] + x * v[1][0] + z * v[1][2] -
             w * v[2][0] + z * v[2][1] - 2 * y * v[2][2]),
        2 * (-2 * z * v[0][0] - w * v[0][1] + x * v[0][2] + w * v[1][0] - 2 * z * v[1][1] +
             y * v[1][2] + x * v[2][0] + y * v[2][1]),
    };
    // Through the normalisation: (g - q (q . g)) / |q|.
    const T along = w * g[0] + x * g[1] + y * g[2] + z * g[3];
    const T unit[4] = {w, x, y, z};
    for (int i = 0; i < 4; ++i) {
        v_q[i] = (g[i] - unit[i] * along) * inv;
    }
}

struct Options {
    int64_t width, height;
    double eps2d, near_plane, far_plane, radius_clip;
};

// Everything the forward pass computes for one (camera, Gaussian) pair.
template <typename T> struct Projected {
    Mat3<T> R, rotation;
    Vec3<T> mean, p, JR0, JR1, A, B;
    T quat_norm, fx, fy, z, tx, ty, lim_x[2], lim_y[2];
    T cov_xx, cov_xy, cov_yy, det, det_orig, conic[3], compensation;
    bool depth_ok;

    Projected(const T *means, const T *quats, const T *scales, const T *viewmat, const T *K,
              const Options &o) {
        for (int i = 0; i < 3; ++i) {
            for (int j = 0; j < 3; ++j) {
                R.m[i][j] = viewmat[4 * i + j];
            }
        }
        mean = {means[0], means[1], means[2]};
        p = R.right(mean) + Vec3<T>{viewmat[3], viewmat[7], viewmat[11]};
        depth_ok = p.z >= o.near_plane && p.z <= o.far_plane;
        z = depth_ok ? p.z : T(1);
        fx = K[0];
        fy = K[4];
        const T cx = K[2], cy = K[5];
        const T margin_x = T(0.3) * T(0.5) * o.width / fx, margin_y = T(0.3) * T(0.5) * o.height / fy;
        lim_x[0] = -(cx / fx + margin_x);
        lim_x[1] = (o.width - cx) / fx + margin_x;
        lim_y[0] = -(cy / fy + margin_y);
        lim_y[1] = (o.height - cy) / fy + margin_y;
        tx = z * std::min(lim_x[1], std::max(lim_x[0], p.x / z));
        ty = z * std::min(lim_y[1], std::max(lim_y[0], p.y / z));
        const T j00 = fx / z, j02 = -fx * tx / (z * z), j11 = fy / z, j12 = -fy * ty / (z * z);
        JR0 = R.row(0) * j00 + R.row(2) * j02;
        JR1 = R.row(1) * j11 + R.row(2) * j12;
        rotation = quat_to_rotmat(quats, quat_norm);
        Mat3<T> M;
        for (int i = 0; i < 3; ++i) {
            for (int j = 0; j < 3; ++j) {
                M.m[i][j] = rotation.m[i][j] * scales[j];
            }
        }
        A = M.left(JR0);
        B = M.left(JR1);
        cov_xx = A.dot(A);
        cov_xy = A.dot(B);
        cov_yy = B.dot(B);
        det_orig = cov_xx * cov_yy - cov_xy * cov_xy;
        cov_xx += o.eps2d;
        cov_yy += o.eps2d;
        det = cov_xx * cov_yy - cov_xy * cov_xy;
        const T d = det > 0 ? det : T(1);
        conic[0] = cov_yy / d;
        conic[1] = -cov_xy / d;
        conic[2] = cov_xx / d;
        compensation = std::sqrt(std::max(det_orig / d, std::numeric_limits<T>::min()));
    }
};

template <typename T>
void forward_kernel(
    int64_t C, int64_t N, const T *means, const T *quats, const T *scales, const T *opacities,
    const T *viewmats, const T *Ks, const Options &o, int32_t *radii, T *means2d, T *depths,
    T *conics, T *compensations
) {
    const T alpha_min = T(1) / T(255);
    at::parallel_for(0, C * N, 256, [&](int64_t first, int64_t last) {
        for (int64_t i = first; i < last; ++i) {
            const int64_t c = i / N, n = i % N;
            const Projected<T> pr(
                means + 3 * n, quats + 4 * n, scales + 3 * n, viewmats + 16 * c, Ks + 9 * c, o
            );
            depths[i] = pr.p.z;
            means2d[2 * i] = pr.fx * pr.p.x / pr.z + Ks[9 * c + 2];
            means2d[2 * i + 1] = pr.fy * pr.p.y / pr.z + Ks[9 * c + 5];
            for (int j = 0; j < 3; ++j) {
                conics[3 * i + j] = pr.conic[j];
            }
            if (compensations) {
                compensations[i] = pr.compensation;
            }
            bool valid = pr.depth_ok && pr.det > 0;
            T extent = T(3.33);
            if (opacities) {
                const T opacity = opacities[n] * (compensations ? pr.compensation : T(1));
                valid = valid && opacity >= alpha_min;
                extent = std::min(extent, std::sqrt(2 * std::log(std::max(opacity, alpha_min) * 255)));
            }
            const T rx = std::ceil(extent * std::sqrt(pr.cov_xx));
            const T ry = std::ceil(extent * std::sqrt(pr.cov_yy));
            valid = valid && (rx > o.radius_clip || ry > o.radius_clip);
            const T mx = means2d[2 * i], my = means2d[2 * i + 1];
            valid = valid && mx + rx > 0 && mx - rx < o.width && my + ry > 0 && my - ry < o.height;
            radii[2 * i] = valid ? static_cast<int32_t>(rx) : 0;
            radii[2 * i + 1] = valid ? static_cast<int32_t>(ry) : 0;
        }
    });
}

// Gradients of culled pairs are zero, as they are not rendered. Gaussians are split
// between threads (cameras loop inside), so per-Gaussian sums never race; per-pair
// viewmat gradients go to a [C, N, 12] buffer summed afterwards.
template <typename T>
void backward_kernel(
    int64_t C, int64_t N, const T *means, const T *quats, const T *scales, const T *viewmats,
    const T *Ks, const Options &o, const int32_t *radii, const T *v_means2d, const T *v_depths,
    const T *v_conics, const T *v_compensations, T *v_means, T *v_quats, T *v_scales,
    T *v_viewmat_pairs
) {
    at::parallel_for(0, N, 256, [&](int64_t first, int64_t last) {
        for (int64_t n = first; n < last; ++n) {
            Vec3<T> v_mean{0, 0, 0};
            Mat3<T> v_M{};
            T quat_norm = 1;
            Mat3<T> rotation{};
            for (int64_t c = 0; c < C; ++c) {
                const int64_t i = c * N + n;
                if (radii[2 * i] == 0 && radii[2 * i + 1] == 0) {
                    continue;
                }
                const Projected<T> pr(
                    means + 3 * n, quats + 4 * n, scales + 3 * n, viewmats + 16 * c, Ks + 9 * c, o
                );
                quat_norm = pr.quat_norm;
                rotation = pr.rotation;
                // conic = inverse(cov): v_cov = -conic V conic, V the symmetric gradient.
                const T ca = pr.conic[0], cb = pr.conic[1], cc = pr.conic[2];
                const T va = v_conics[3 * i], vb = T(0.5) * v_conics[3 * i + 1], vc = v_conics[3 * i + 2];
                // (conic V) then (conic V conic); symmetric 2x2 products written out.
                const T cv00 = ca * va + cb * vb, cv01 = ca * vb + cb * vc;
                const T cv10 = cb * va + cc * vb, cv11 = cb * vb + cc * vc;
                T v_xx = -(cv00 * ca + cv01 * cb);
                T v_xy = -(cv00 * cb + cv01 * cc) - (cv10 * ca + cv11 * cb);
                T v_yy = -(cv10 * cb + cv11 * cc);
                if (v_compensations && pr.det_orig / pr.det > std::numeric_limits<T>::min()) {
                    // comp = sqrt(det_orig / det), det_orig from the unblurred diagonal.
                    const T g = v_compensations[i] * T(0.5) / pr.compensation / pr.det;
                    const T ratio = pr.det_orig / pr.det;
                    v_xx += g * ((pr.cov_yy - o.eps2d) - ratio * pr.cov_yy);
                    v_yy += g * ((pr.cov_xx - o.eps2d) - ratio * pr.cov_xx);
                    v_xy += g * (-2 * pr.cov_xy + ratio * 2 * pr.cov_xy);
                }
                // cov_xx = A.A, cov_xy = A.B, cov_yy = B.B
                const Vec3<T> v_A = pr.A * (2 * v_xx) + pr.B * v_xy;
                const Vec3<T> v_B = pr.B * (2 * v_yy) + pr.A * v_xy;
                // A = JR0^T M, B = JR1^T M
                Mat3<T> M;
                for (int r = 0; r < 3; ++r) {
                    for (int k = 0; k < 3; ++k) {
                        M.m[r][k] = pr.rotation.m[r][k] * scales[3 * n + k];
                    }
                }
                const Vec3<T> v_JR0 = M.right(v_A), v_JR1 = M.right(v_B);
                const T jr0[3] = {pr.JR0.x, pr.JR0.y, pr.JR0.z}, jr1[3] = {pr.JR1.x, pr.JR1.y, pr.JR1.z};
                const T va_[3] = {v_A.x, v_A.y, v_A.z}, vb_[3] = {v_B.x, v_B.y, v_B.z};
                for (int r = 0; r < 3; ++r) {
                    for (int k = 0; k < 3; ++k) {
                        v_M.m[r][k] += jr0[r] * va_[k] + jr1[r] * vb_[k];
                    }
                }
                // JR0 = j00 R0 + j02 R2, JR1 = j11 R1 + j12 R2
                const T z = pr.z, fx = pr.fx, fy = pr.fy;
                const T j00 = fx / z, j02 = -fx * pr.tx / (z * z);
                const T j11 = fy / z, j12 = -fy * pr.ty / (z * z);
                const T v_j00 = v_JR0.dot(pr.R.row(0)), v_j02 = v_JR0.dot(pr.R.row(2));
                const T v_j11 = v_JR1.dot(pr.R.row(1)), v_j12 = v_JR1.dot(pr.R.row(2));
                Vec3<T> v_p{0, 0, 0};
                v_p.z += -fx / (z * z) * v_j00 - fy / (z * z) * v_j11;
                // j02 = -fx tx / z^2 with tx = x, or tx = z * limit when clamped.
                const T u = pr.p.x / z, v = pr.p.y / z;
                if (u >= pr.lim_x[0] && u <= pr.lim_x[1]) {
                    v_p.x += -fx / (z * z) * v_j02;
                    v_p.z += 2 * fx * pr.tx / (z * z * z) * v_j02;
                } else {
                    v_p.z += fx * pr.tx / (z * z * z) * v_j02;
                }
                if (v >= pr.lim_y[0] && v <= pr.lim_y[1]) {
                    v_p.y += -fy / (z * z) * v_j12;
                    v_p.z += 2 * fy * pr.ty / (z * z * z) * v_j12;
                } else {
                    v_p.z += fy * pr.ty / (z * z * z) * v_j12;
                }
                // means2d = (fx x / z + cx, fy y / z + cy), depth = z
                const T vm0 = v_means2d[2 * i], vm1 = v_means2d[2 * i + 1];
                v_p.x += fx / z * vm0;
                v_p.y += fy / z * vm1;
                v_p.z += -(fx * pr.p.x * vm0 + fy * pr.p.y * vm1) / (z * z) + v_depths[i];
                // p = R mean + t
                v_mean += pr.R.left(v_p);
                if (v_viewmat_pairs) {
                    // R enters through p and through JR0 / JR1.
                    T *out = v_viewmat_pairs + 12 * i;
                    const Vec3<T> v_rows[3] = {
                        pr.mean * v_p.x + v_JR0 * j00,
                        pr.mean * v_p.y + v_JR1 * j11,
                        pr.mean * v_p.z + v_JR0 * j02 + v_JR1 * j12,
                    };
                    for (int r = 0; r < 3; ++r) {
                        out[4 * r] = v_rows[r].x;
                        out[4 * r + 1] = v_rows[r].y;
                        out[4 * r + 2] = v_rows[r].z;
                    }
                    out[3] = v_p.x;
                    out[7] = v_p.y;
                    out[11] = v_p.z;
                }
            }
            v_means[3 * n] = v_mean.x;
            v_means[3 * n + 1] = v_mean.y;
            v_means[3 * n + 2] = v_mean.z;
            // M = rotation * diag(scales)
            Mat3<T> v_rotation;
            for (int k = 0; k < 3; ++k) {
                T v_scale = 0;
                for (int r = 0; r < 3; ++r) {
                    v_scale += v_M.m[r][k] * rotation.m[r][k];
                    v_rotation.m[r][k] = v_M.m[r][k] * scales[3 * n + k];
                }
                v_scales[3 * n + k] = v_scale;
            }
            quat_to_rotmat_vjp(quats + 4 * n, quat_norm, v_rotation, v_quats + 4 * n);
        }
    });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_forward(
    const at::Tensor &means,    // [N, 3]
    const at::Tensor &quats,    // [N, 4]
    const at::Tensor &scales,   // [N, 3]
    const std::optional<at::Tensor> &opacities, // [N]
    const at::Tensor &viewmats, // [C, 4, 4]
    const at::Tensor &Ks,       // [C, 3, 3]
    int64_t width,
    int64_t height,
    double eps2d,
    double near_plane,
    double far_plane,
    double radius_clip,
    bool antialiased
) {
    const int64_t C = viewmats.size(0), N = means.size(0);
    const Options o{width, height, eps2d, near_plane, far_plane, radius_clip};
    auto radii = at::empty({C, N, 2}, means.options().dtype(at::kInt));
    auto means2d = at::empty({C, N, 2}, means.options());
    auto depths = at::empty({C, N}, means.options());
    auto conics = at::empty({C, N, 3}, means.options());
    auto compensations = at::empty({antialiased ? C : 0, N}, means.options());
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
        forward_kernel<scalar_t>(
            C, N, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(),
            scales.data_ptr<scalar_t>(), opacities ? opacities->data_ptr<scalar_t>() : nullptr,
            viewmats.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(), o, radii.data_ptr<int32_t>(),
            means2d.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
            antialiased ? compensations.data_ptr<scalar_t>() : nullptr
        );
    });
    return {radii, means2d, depths, conics, compensations};
}

// Returns v_means [N, 3], v_quats [N, 4], v_scales [N, 3] and, when asked for, v_viewmats
// [C, 4, 4] (else an empty tensor).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_backward(
    const at::Tensor &means,
    const at::Tensor &quats,
    const at::Tensor &scales,
    const at::Tensor &viewmats,
    const at::Tensor &Ks,
    int64_t width,
    int64_t height,
    double eps2d,
    double near_plane,
    double far_plane,
    const at::Tensor &radii,
    const at::Tensor &v_means2d,
    const at::Tensor &v_depths,
    const at::Tensor &v_conics,
    const std::optional<at::Tensor> &v_compensations,
    bool viewmats_grad
) {
    const int64_t C = viewmats.size(0), N = means.size(0);
    const Options o{width, height, eps2d, near_plane, far_plane, 0.0};
    auto v_means = at::empty({N, 3}, means.options());
    auto v_quats = at::empty({N, 4}, means.options());
    auto v_scales = at::empty({N, 3}, means.options());
    auto v_viewmat_pairs = at::zeros({viewmats_grad ? C : 0, N, 12}, means.options());
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
        backward_kernel<scalar_t>(
            C, N, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(),
            scales.data_ptr<scalar_t>(), viewmats.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(), o,
            radii.data_ptr<int32_t>(), v_means2d.data_ptr<scalar_t>(),
            v_depths.data_ptr<scalar_t>(), v_conics.data_ptr<scalar_t>(),
            v_compensations ? v_compensations->data_ptr<scalar_t>() : nullptr,
            v_means.data_ptr<scalar_t>(), v_quats.data_ptr<scalar_t>(),
            v_scales.data_ptr<scalar_t>(),
            viewmats_grad ? v_viewmat_pairs.data_ptr<scalar_t>() : nullptr
        );
    });
    at::Tensor v_viewmats = at::zeros({viewmats_grad ? C : 0, 4, 4}, means.options());
    if (viewmats_grad) {
        v_viewmats.narrow(1, 0, 3).copy_(v_viewmat_pairs.sum(1).view({C, 3, 4}));
    }
    return {v_means, v_quats, v_scales, v_viewmats};
}

} // namespace

TORCH_LIBRARY_FRAGMENT(snap3d, m) {
    m.def("project_forward", &project_forward);
    m.def("project_backward", &project_backward);
}
