// Projection of 3D Gaussians into pinhole cameras and their view-dependent colours, on a CPU, forward and backward.
//
// The same contract and math as patchsplat/render/projection.py (project_gaussians) and render/sh.py
// (spherical_harmonics, + 0.5, clamped at 0), which stay the fallback and the reference; tests/test_render.py holds
// the two to each other in values and gradients. Why C++: in torch each of these is some 150 elementwise operations
// on [C, N] tensors per step, forward and backward, each a pass over memory with autograd's bookkeeping around it,
// all on one core (bench/RESULTS.md, issue 15). Here one pass per Gaussian does all of it, and the Gaussians are
// shared among torch's threads (at::parallel_for). Each Gaussian's gradients are summed over the cameras by the one
// thread that owns the Gaussian: no atomics, and results that do not depend on the thread count.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr double kAlphaThreshold = 1.0 / 255.0;   // projection.ALPHA_THRESHOLD
constexpr double kMaxExtend = 3.33;               // projection.MAX_EXTEND
constexpr double kNormEps = 1e-12;                // torch.nn.functional.normalize's eps
constexpr int64_t kGrain = 256;                   // Gaussians per parallel work item, at the least

template <typename scalar_t>
struct Camera {
    scalar_t r[9], t[3], fx, fy, cx, cy;
    scalar_t lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;

    Camera(const scalar_t* viewmat, const scalar_t* K, int64_t width, int64_t height) {
        for (int i = 0; i < 3; ++i) {
            for (int j = 0; j < 3; ++j) r[i * 3 + j] = viewmat[i * 4 + j];
            t[i] = viewmat[i * 4 + 3];
        }
        fx = K[0], fy = K[4], cx = K[2], cy = K[5];
        const scalar_t w = static_cast<scalar_t>(width), h = static_cast<scalar_t>(height);
        // Jacobian taken at the mean clamped to 1.3x the field of view (gsplat's persp_proj).
        lim_x_pos = (w - cx) / fx + scalar_t(0.3) * (scalar_t(0.5) * w / fx);
        lim_x_neg = cx / fx + scalar_t(0.3) * (scalar_t(0.5) * w / fx);
        lim_y_pos = (h - cy) / fy + scalar_t(0.3) * (scalar_t(0.5) * h / fy);
        lim_y_neg = cy / fy + scalar_t(0.3) * (scalar_t(0.5) * h / fy);
    }
};

// Rotation matrix (row-major) of a quaternion wxyz, normalised as F.normalize does; returns the norm used.
template <typename scalar_t>
scalar_t rotation(const scalar_t* quat, scalar_t* rot, scalar_t* unit) {
    const scalar_t norm = std::max(std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]),
                                   scalar_t(kNormEps));
    for (int i = 0; i < 4; ++i) unit[i] = quat[i] / norm;
    const scalar_t w = unit[0], x = unit[1], y = unit[2], z = unit[3];
    rot[0] = 1 - 2 * (y * y + z * z), rot[1] = 2 * (x * y - w * z), rot[2] = 2 * (x * z + w * y);
    rot[3] = 2 * (x * y + w * z), rot[4] = 1 - 2 * (x * x + z * z), rot[5] = 2 * (y * z - w * x);
    rot[6] = 2 * (x * z - w * y), rot[7] = 2 * (y * z + w * x), rot[8] = 1 - 2 * (x * x + y * y);
    return norm;
}

// One Gaussian's world covariance Sigma = M M^T with M = R(q) diag(s) (row-major 3x3 each).
template <typename scalar_t>
struct WorldShape {
    scalar_t rot[9], unit[4], norm, m[9], sigma[9];

    WorldShape(const scalar_t* quat, const scalar_t* scale) {
        norm = rotation(quat, rot, unit);
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) m[i * 3 + j] = rot[i * 3 + j] * scale[j];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j)
                sigma[i * 3 + j] = m[i * 3] * m[j * 3] + m[i * 3 + 1] * m[j * 3 + 1] + m[i * 3 + 2] * m[j * 3 + 2];
    }
};

// Everything the forward pass computes for one (camera, Gaussian), kept so the backward pass can recompute it.
template <typename scalar_t>
struct Projected {
    bool visible = false;
    scalar_t x, y, z, u, v;             // camera-space mean; u = x / z, v = y / z
    bool u_clamped, v_clamped;
    scalar_t uc, vc;                    // u, v clamped to the field of view
    scalar_t j00, j02, j11, j12;        // the Jacobian [[j00, 0, j02], [0, j11, j12]]
    scalar_t s[9];                      // camera-space covariance W Sigma W^T
    scalar_t cxx, cxy, cyy, det;        // the 2D covariance (+ eps2d)
    scalar_t mean_x, mean_y;
    int32_t radius_x = 0, radius_y = 0;
};

template <typename scalar_t>
void project_one(const Camera<scalar_t>& cam, const scalar_t* mean, const WorldShape<scalar_t>& shape, scalar_t opacity,
                 int64_t width, int64_t height, scalar_t eps2d, scalar_t near_plane, scalar_t far_plane,
                 Projected<scalar_t>& out) {
    const scalar_t* r = cam.r;
    out.x = r[0] * mean[0] + r[1] * mean[1] + r[2] * mean[2] + cam.t[0];
    out.y = r[3] * mean[0] + r[4] * mean[1] + r[5] * mean[2] + cam.t[1];
    out.z = r[6] * mean[0] + r[7] * mean[1] + r[8] * mean[2] + cam.t[2];
    if (!(out.z >= near_plane && out.z <= far_plane) || opacity < scalar_t(kAlphaThreshold)) return;
    const scalar_t inv_z = scalar_t(1) / out.z;
    out.u = out.x * inv_z, out.v = out.y * inv_z;
    out.mean_x = cam.fx * out.u + cam.cx;
    out.mean_y = cam.fy * out.v + cam.cy;
    out.uc = std::min(std::max(out.u, -cam.lim_x_neg), cam.lim_x_pos);
    out.vc = std::min(std::max(out.v, -cam.lim_y_neg), cam.lim_y_pos);
    out.u_clamped = out.uc != out.u, out.v_clamped = out.vc != out.v;
    out.j00 = cam.fx * inv_z, out.j11 = cam.fy * inv_z;
    out.j02 = -cam.fx * out.uc * inv_z, out.j12 = -cam.fy * out.vc * inv_z;
    // W Sigma W^T
    scalar_t ws[9];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            ws[i * 3 + j] = r[i * 3] * shape.sigma[j] + r[i * 3 + 1] * shape.sigma[3 + j] + r[i * 3 + 2] * shape.sigma[6 + j];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            out.s[i * 3 + j] = ws[i * 3] * r[j * 3] + ws[i * 3 + 1] * r[j * 3 + 1] + ws[i * 3 + 2] * r[j * 3 + 2];
    const scalar_t sxx = out.s[0], sxy = out.s[1], sxz = out.s[2], syy = out.s[4], syz = out.s[5], szz = out.s[8];
    const scalar_t j00 = out.j00, j02 = out.j02, j11 = out.j11, j12 = out.j12;
    out.cxx = j00 * j00 * sxx + 2 * j00 * j02 * sxz + j02 * j02 * szz + eps2d;
    out.cxy = j00 * j11 * sxy + j00 * j12 * sxz + j02 * j11 * syz + j02 * j12 * szz;
    out.cyy = j11 * j11 * syy + 2 * j11 * j12 * syz + j12 * j12 * szz + eps2d;
    out.det = out.cxx * out.cyy - out.cxy * out.cxy;
    if (!(out.det > 0)) return;
    // The box where alpha falls to 1/255 (opacity-aware extent), culled when it misses the image.
    const scalar_t extend = std::min(std::sqrt(scalar_t(2) * std::log(opacity / scalar_t(kAlphaThreshold))),
                                     scalar_t(kMaxExtend));
    const scalar_t radius_x = std::ceil(extend * std::sqrt(std::max(out.cxx, scalar_t(0))));
    const scalar_t radius_y = std::ceil(extend * std::sqrt(std::max(out.cyy, scalar_t(0))));
    if (!(radius_x > 0 || radius_y > 0)) return;
    if (!(out.mean_x + radius_x > 0 && out.mean_x - radius_x < width && out.mean_y + radius_y > 0 &&
          out.mean_y - radius_y < height)) return;
    out.visible = true;
    out.radius_x = static_cast<int32_t>(radius_x), out.radius_y = static_cast<int32_t>(radius_y);
}

void check_projection_inputs(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                             const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks) {
    const auto dtype = means.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "the native projection takes float32 or float64");
    for (const auto* tensor : {&means, &quats, &scales, &opacities, &viewmats, &Ks}) {
        TORCH_CHECK(tensor->device().is_cpu() && tensor->scalar_type() == dtype && tensor->is_contiguous(),
                    "the native projection takes contiguous CPU tensors of one dtype");
    }
    const int64_t n = means.size(0);
    TORCH_CHECK(means.dim() == 2 && means.size(1) == 3 && quats.sizes() == at::IntArrayRef({n, 4}) &&
                    scales.sizes() == at::IntArrayRef({n, 3}) && opacities.sizes() == at::IntArrayRef({n}),
                "means [N, 3], quats [N, 4], scales [N, 3], opacities [N] expected");
    TORCH_CHECK(viewmats.dim() == 3 && viewmats.size(1) == 4 && viewmats.size(2) == 4 && Ks.dim() == 3 &&
                    Ks.size(0) == viewmats.size(0) && Ks.size(1) == 3 && Ks.size(2) == 3,
                "viewmats [C, 4, 4] and Ks [C, 3, 3] expected");
}

template <typename scalar_t>
std::vector<Camera<scalar_t>> cameras_of(const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width,
                                         int64_t height) {
    std::vector<Camera<scalar_t>> cameras;
    for (int64_t c = 0; c < viewmats.size(0); ++c) {
        cameras.emplace_back(viewmats.data_ptr<scalar_t>() + c * 16, Ks.data_ptr<scalar_t>() + c * 9, width, height);
    }
    return cameras;
}

// ---------------------------------------------------------------------------------------------- SH basis

// A value and its partial derivatives along x, y, z: the SH basis is a polynomial, so one templated evaluation
// gives both the values (forward) and their gradient (backward), and the two cannot disagree.
template <typename scalar_t>
struct Dual {
    scalar_t v, d[3];
    Dual(scalar_t value = 0) : v(value), d{0, 0, 0} {}
    Dual(scalar_t value, int axis) : v(value), d{0, 0, 0} { d[axis] = 1; }
    friend Dual operator+(Dual a, const Dual& b) { a.v += b.v; for (int i = 0; i < 3; ++i) a.d[i] += b.d[i]; return a; }
    friend Dual operator-(Dual a, const Dual& b) { a.v -= b.v; for (int i = 0; i < 3; ++i) a.d[i] -= b.d[i]; return a; }
    friend Dual operator*(const Dual& a, const Dual& b) {
        Dual out(a.v * b.v);
        for (int i = 0; i < 3; ++i) out.d[i] = a.d[i] * b.v + a.v * b.d[i];
        return out;
    }
    friend Dual operator*(scalar_t k, Dual a) { a.v *= k; for (int i = 0; i < 3; ++i) a.d[i] *= k; return a; }
    friend Dual operator+(Dual a, scalar_t k) { a.v += k; return a; }
    friend Dual operator-(Dual a, scalar_t k) { a.v -= k; return a; }
};

// The real SH basis functions 0 .. (degree + 1)^2 - 1 at unit direction (x, y, z), with gsplat's constants and
// its order (render/sh.py's sh_basis, bands 0-4).
template <typename T, typename scalar_t>
void sh_basis(int degree, const T& x, const T& y, const T& z, T* out) {
    out[0] = T(scalar_t(0.2820947917738781));
    if (degree < 1) return;
    out[1] = scalar_t(-0.48860251190292) * y;
    out[2] = scalar_t(0.48860251190292) * z;
    out[3] = scalar_t(-0.48860251190292) * x;
    if (degree < 2) return;
    const T z2 = z * z;
    const T tmp_b2 = scalar_t(-1.092548430592079) * z;
    const T c1 = x * x - y * y, s1 = scalar_t(2) * (x * y);
    out[4] = scalar_t(0.5462742152960395) * s1;
    out[5] = tmp_b2 * y;
    out[6] = scalar_t(0.9461746957575601) * z2 - scalar_t(0.3153915652525201);
    out[7] = tmp_b2 * x;
    out[8] = scalar_t(0.5462742152960395) * c1;
    if (degree < 3) return;
    const T tmp_c3 = scalar_t(-2.285228997322329) * z2 + scalar_t(0.4570457994644658);
    const T tmp_b3 = scalar_t(1.445305721320277) * z;
    const T c2 = x * c1 - y * s1, s2 = x * s1 + y * c1;
    out[9] = scalar_t(-0.5900435899266435) * s2;
    out[10] = tmp_b3 * s1;
    out[11] = tmp_c3 * y;
    out[12] = z * (scalar_t(1.865881662950577) * z2 - scalar_t(1.119528997770346));
    out[13] = tmp_c3 * x;
    out[14] = tmp_b3 * c1;
    out[15] = scalar_t(-0.5900435899266435) * c2;
    if (degree < 4) return;
    const T tmp_d4 = z * (scalar_t(-4.683325804901025) * z2 + scalar_t(2.007139630671868));
    const T tmp_c4 = scalar_t(3.31161143515146) * z2 - scalar_t(0.47308734787878);
    const T tmp_b4 = scalar_t(-1.770130769779931) * z;
    const T c3 = x * c2 - y * s2, s3 = x * s2 + y * c2;
    out[16] = scalar_t(0.6258357354491763) * s3;
    out[17] = tmp_b4 * s2;
    out[18] = tmp_c4 * s1;
    out[19] = tmp_d4 * y;
    out[20] = scalar_t(1.984313483298443) * (z2 * (scalar_t(1.865881662950577) * z2 - scalar_t(1.119528997770346))) -
              scalar_t(1.006230589874905) * (scalar_t(0.9461746957575601) * z2 - scalar_t(0.3153915652525201));
    out[21] = tmp_d4 * x;
    out[22] = tmp_c4 * c1;
    out[23] = tmp_b4 * c2;
    out[24] = scalar_t(0.6258357354491763) * c3;
}


}  // namespace

// -> (radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3]), culled rows all 0.
std::vector<at::Tensor> project_forward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                           at::Tensor opacities, at::Tensor viewmats, at::Tensor Ks,
                                           int64_t width, int64_t height, double eps2d, double near_plane,
                                           double far_plane) {
    check_projection_inputs(means, quats, scales, opacities, viewmats, Ks);
    const int64_t n = means.size(0), n_cameras = viewmats.size(0);
    // Allocated empty: every row is written below by the thread owning its Gaussian, culled ones with 0.
    auto radii = at::empty({n_cameras, n, 2}, means.options().dtype(at::kInt));
    auto means2d = at::empty({n_cameras, n, 2}, means.options());
    auto depths = at::empty({n_cameras, n}, means.options());
    auto conics = at::empty({n_cameras, n, 3}, means.options());
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
        const auto cameras = cameras_of<scalar_t>(viewmats, Ks, width, height);
        const scalar_t* mean = means.data_ptr<scalar_t>();
        const scalar_t* quat = quats.data_ptr<scalar_t>();
        const scalar_t* scale = scales.data_ptr<scalar_t>();
        const scalar_t* opacity = opacities.data_ptr<scalar_t>();
        int32_t* radii_out = radii.data_ptr<int32_t>();
        scalar_t* means2d_out = means2d.data_ptr<scalar_t>();
        scalar_t* depths_out = depths.data_ptr<scalar_t>();
        scalar_t* conics_out = conics.data_ptr<scalar_t>();
        at::parallel_for(0, n, kGrain, [&](int64_t first, int64_t last) {
            for (int64_t g = first; g < last; ++g) {
                const WorldShape<scalar_t> shape(quat + g * 4, scale + g * 3);
                for (int64_t c = 0; c < n_cameras; ++c) {
                    Projected<scalar_t> p;
                    project_one(cameras[c], mean + g * 3, shape, opacity[g], width, height, scalar_t(eps2d),
                                scalar_t(near_plane), scalar_t(far_plane), p);
                    const int64_t row = c * n + g;
                    if (!p.visible) {
                        radii_out[row * 2] = radii_out[row * 2 + 1] = 0;
                        means2d_out[row * 2] = means2d_out[row * 2 + 1] = depths_out[row] = scalar_t(0);
                        conics_out[row * 3] = conics_out[row * 3 + 1] = conics_out[row * 3 + 2] = scalar_t(0);
                        continue;
                    }
                    radii_out[row * 2] = p.radius_x, radii_out[row * 2 + 1] = p.radius_y;
                    means2d_out[row * 2] = p.mean_x, means2d_out[row * 2 + 1] = p.mean_y;
                    depths_out[row] = p.z;
                    const scalar_t inv_det = scalar_t(1) / p.det;
                    conics_out[row * 3] = p.cyy * inv_det;
                    conics_out[row * 3 + 1] = -p.cxy * inv_det;
                    conics_out[row * 3 + 2] = p.cxx * inv_det;
                }
            }
        });
    });
    return {radii, means2d, depths, conics};
}

// -> (dL/dmeans [N, 3], dL/dquats [N, 4], dL/dscales [N, 3]) from the gradients of means2d, depths and conics
// (culled rows, radii 0, take none, as the torch projection's masking gives).
std::vector<at::Tensor> project_backward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                            at::Tensor opacities, at::Tensor viewmats, at::Tensor Ks,
                                            int64_t width, int64_t height, double eps2d, double near_plane,
                                            double far_plane, at::Tensor radii, at::Tensor v_means2d,
                                            at::Tensor v_depths, at::Tensor v_conics) {
    check_projection_inputs(means, quats, scales, opacities, viewmats, Ks);
    const int64_t n = means.size(0), n_cameras = viewmats.size(0);
    v_means2d = v_means2d.to(means.scalar_type()).contiguous();
    v_depths = v_depths.to(means.scalar_type()).contiguous();
    v_conics = v_conics.to(means.scalar_type()).contiguous();
    TORCH_CHECK(radii.is_contiguous() && radii.scalar_type() == at::kInt && radii.numel() == n_cameras * n * 2 &&
                    v_means2d.numel() == n_cameras * n * 2 && v_depths.numel() == n_cameras * n &&
                    v_conics.numel() == n_cameras * n * 3, "gradient shapes do not match the projection");
    // Allocated empty: each Gaussian's rows are written by the thread that owns it.
    auto v_means = at::empty_like(means);
    auto v_quats = at::empty_like(quats);
    auto v_scales = at::empty_like(scales);
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
        const auto cameras = cameras_of<scalar_t>(viewmats, Ks, width, height);
        const scalar_t* mean = means.data_ptr<scalar_t>();
        const scalar_t* quat = quats.data_ptr<scalar_t>();
        const scalar_t* scale = scales.data_ptr<scalar_t>();
        const scalar_t* opacity = opacities.data_ptr<scalar_t>();
        const int32_t* radii_in = radii.data_ptr<int32_t>();
        const scalar_t* g_mean2d = v_means2d.data_ptr<scalar_t>();
        const scalar_t* g_depth = v_depths.data_ptr<scalar_t>();
        const scalar_t* g_conic = v_conics.data_ptr<scalar_t>();
        scalar_t* out_mean = v_means.data_ptr<scalar_t>();
        scalar_t* out_quat = v_quats.data_ptr<scalar_t>();
        scalar_t* out_scale = v_scales.data_ptr<scalar_t>();
        at::parallel_for(0, n, kGrain, [&](int64_t first, int64_t last) {
            for (int64_t g = first; g < last; ++g) {
                const WorldShape<scalar_t> shape(quat + g * 4, scale + g * 3);
                scalar_t v_sigma[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};   // dL/dSigma (world), summed over cameras
                scalar_t* v_mean = out_mean + g * 3;
                v_mean[0] = v_mean[1] = v_mean[2] = scalar_t(0);
                for (int64_t c = 0; c < n_cameras; ++c) {
                    const int64_t row = c * n + g;
                    if (radii_in[row * 2] == 0 && radii_in[row * 2 + 1] == 0) continue;
                    const Camera<scalar_t>& cam = cameras[c];
                    Projected<scalar_t> p;
                    project_one(cam, mean + g * 3, shape, opacity[g], width, height, scalar_t(eps2d),
                                scalar_t(near_plane), scalar_t(far_plane), p);
                    // conic = (cyy, -cxy, cxx) / det
                    const scalar_t va = g_conic[row * 3], vb = g_conic[row * 3 + 1], vc = g_conic[row * 3 + 2];
                    const scalar_t inv_det = scalar_t(1) / p.det;
                    const scalar_t v_det = -(va * p.cyy - vb * p.cxy + vc * p.cxx) * inv_det * inv_det;
                    const scalar_t v_cxx = vc * inv_det + v_det * p.cyy;
                    const scalar_t v_cyy = va * inv_det + v_det * p.cxx;
                    const scalar_t v_cxy = -vb * inv_det - scalar_t(2) * v_det * p.cxy;
                    // 2D covariance J S J^T -> camera covariance S and the Jacobian's entries
                    const scalar_t j00 = p.j00, j02 = p.j02, j11 = p.j11, j12 = p.j12;
                    const scalar_t sxx = p.s[0], sxy = p.s[1], sxz = p.s[2], syy = p.s[4], syz = p.s[5], szz = p.s[8];
                    scalar_t v_s[9];
                    v_s[0] = v_cxx * j00 * j00;
                    v_s[4] = v_cyy * j11 * j11;
                    v_s[8] = v_cxx * j02 * j02 + v_cxy * j02 * j12 + v_cyy * j12 * j12;
                    // Off-diagonal entries appear once in the formulas: half their gradient on each side.
                    v_s[1] = v_s[3] = scalar_t(0.5) * v_cxy * j00 * j11;
                    v_s[2] = v_s[6] = scalar_t(0.5) * (scalar_t(2) * v_cxx * j00 * j02 + v_cxy * j00 * j12);
                    v_s[5] = v_s[7] = scalar_t(0.5) * (v_cxy * j02 * j11 + scalar_t(2) * v_cyy * j11 * j12);
                    const scalar_t v_j00 = v_cxx * (2 * j00 * sxx + 2 * j02 * sxz) + v_cxy * (j11 * sxy + j12 * sxz);
                    const scalar_t v_j02 = v_cxx * (2 * j00 * sxz + 2 * j02 * szz) + v_cxy * (j11 * syz + j12 * szz);
                    const scalar_t v_j11 = v_cyy * (2 * j11 * syy + 2 * j12 * syz) + v_cxy * (j00 * sxy + j02 * syz);
                    const scalar_t v_j12 = v_cyy * (2 * j11 * syz + 2 * j12 * szz) + v_cxy * (j00 * sxz + j02 * szz);
                    // S = W Sigma W^T: dL/dSigma = W^T dL/dS W
                    const scalar_t* r = cam.r;
                    scalar_t tmp[9];
                    for (int i = 0; i < 3; ++i)
                        for (int j = 0; j < 3; ++j)
                            tmp[i * 3 + j] = v_s[i * 3] * r[j] + v_s[i * 3 + 1] * r[3 + j] + v_s[i * 3 + 2] * r[6 + j];
                    for (int i = 0; i < 3; ++i)
                        for (int j = 0; j < 3; ++j)
                            v_sigma[i * 3 + j] += r[i] * tmp[j] + r[3 + i] * tmp[3 + j] + r[6 + i] * tmp[6 + j];
                    // mean2d = (fx u + cx, fy v + cy); j00 = fx / z, j11 = fy / z; j02 = -fx uc / z, j12 = -fy vc / z
                    const scalar_t inv_z = scalar_t(1) / p.z;
                    const scalar_t v_mx = g_mean2d[row * 2], v_my = g_mean2d[row * 2 + 1];
                    scalar_t v_u = cam.fx * v_mx, v_v = cam.fy * v_my;
                    scalar_t v_z = g_depth[row] - (v_j00 * cam.fx + v_j11 * cam.fy) * inv_z * inv_z
                                   + (v_j02 * cam.fx * p.uc + v_j12 * cam.fy * p.vc) * inv_z * inv_z;
                    if (!p.u_clamped) v_u -= v_j02 * cam.fx * inv_z;
                    if (!p.v_clamped) v_v -= v_j12 * cam.fy * inv_z;
                    // u = x / z, v = y / z
                    const scalar_t v_x = v_u * inv_z, v_y = v_v * inv_z;
                    v_z -= (v_u * p.u + v_v * p.v) * inv_z;
                    // camera-space mean = W mean + t
                    for (int i = 0; i < 3; ++i) v_mean[i] += r[i] * v_x + r[3 + i] * v_y + r[6 + i] * v_z;
                }
                // Sigma = M M^T (dL/dSigma symmetric): dL/dM = 2 dL/dSigma M; M = R(q) diag(s)
                scalar_t v_rot[9];
                scalar_t* v_scale = out_scale + g * 3;
                v_scale[0] = v_scale[1] = v_scale[2] = scalar_t(0);
                for (int i = 0; i < 3; ++i) {
                    for (int j = 0; j < 3; ++j) {
                        const scalar_t v_m = scalar_t(2) * (v_sigma[i * 3] * shape.m[j] + v_sigma[i * 3 + 1] * shape.m[3 + j] +
                                                            v_sigma[i * 3 + 2] * shape.m[6 + j]);
                        v_rot[i * 3 + j] = v_m * scale[g * 3 + j];
                        v_scale[j] += v_m * shape.rot[i * 3 + j];
                    }
                }
                // R(q) of the unit quaternion, then the normalisation
                const scalar_t w = shape.unit[0], x = shape.unit[1], y = shape.unit[2], z = shape.unit[3];
                const scalar_t* vr = v_rot;
                scalar_t v_unit[4];
                v_unit[0] = 2 * (-z * vr[1] + y * vr[2] + z * vr[3] - x * vr[5] - y * vr[6] + x * vr[7]);
                v_unit[1] = 2 * (y * vr[1] + z * vr[2] + y * vr[3] - 2 * x * vr[4] - w * vr[5] + z * vr[6] + w * vr[7] - 2 * x * vr[8]);
                v_unit[2] = 2 * (-2 * y * vr[0] + x * vr[1] + w * vr[2] + x * vr[3] + z * vr[5] - w * vr[6] + z * vr[7] - 2 * y * vr[8]);
                v_unit[3] = 2 * (-2 * z * vr[0] - w * vr[1] + x * vr[2] + w * vr[3] - 2 * z * vr[4] + y * vr[5] + x * vr[6] + y * vr[7]);
                const scalar_t along = v_unit[0] * w + v_unit[1] * x + v_unit[2] * y + v_unit[3] * z;
                // F.normalize clamps the norm at eps; below it the unit vector is q / eps, linear in q.
                const bool clamped_norm = shape.norm <= scalar_t(kNormEps);
                for (int i = 0; i < 4; ++i) {
                    out_quat[g * 4 + i] = clamped_norm ? v_unit[i] / shape.norm
                                                       : (v_unit[i] - shape.unit[i] * along) / shape.norm;
                }
            }
        });
    });
    return {v_means, v_quats, v_scales};
}

// MCMC's noise on the positions, in place and without gradient, as gsplat 1.5.3's
// strategy.ops.inject_noise_to_position computes it from the same standard normal draws `normal` [N, 3]:
//     means += Sigma (normal * w * scaler),  w = 1 / (1 + exp(-100 (1 - sigmoid(opacity_logit) - 0.995)))
// with Sigma = R S S^T R^T of quats [N, 4] and exp(log_scales) [N, 3]. One pass per Gaussian, where upstream's
// dozen [N, 3, 3] torch ops and an einsum ran on one core every step.
void inject_position_noise(at::Tensor means, at::Tensor quats, at::Tensor log_scales, at::Tensor opacity_logits,
                           at::Tensor normal, double scaler) {
    const int64_t n = means.size(0);
    for (const at::Tensor* tensor : {&means, &quats, &log_scales, &opacity_logits, &normal}) {
        TORCH_CHECK(tensor->device().is_cpu() && tensor->is_contiguous() && tensor->scalar_type() == means.scalar_type(),
                    "the noise's tensors must be contiguous CPU tensors of one floating type");
    }
    TORCH_CHECK(means.dim() == 2 && means.size(1) == 3 && quats.sizes() == at::IntArrayRef({n, 4}) &&
                    log_scales.sizes() == at::IntArrayRef({n, 3}) && opacity_logits.numel() == n &&
                    normal.sizes() == means.sizes(), "means [N, 3], quats [N, 4], log_scales [N, 3], opacities [N], normal [N, 3]");
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "inject_position_noise", [&] {
        scalar_t* mean = means.data_ptr<scalar_t>();
        const scalar_t* quat = quats.data_ptr<scalar_t>();
        const scalar_t* log_scale = log_scales.data_ptr<scalar_t>();
        const scalar_t* logit = opacity_logits.data_ptr<scalar_t>();
        const scalar_t* draw = normal.data_ptr<scalar_t>();
        const scalar_t scale_by = static_cast<scalar_t>(scaler);
        at::parallel_for(0, n, kGrain, [&](int64_t first, int64_t last) {
            for (int64_t g = first; g < last; ++g) {
                const scalar_t s[3] = {std::exp(log_scale[g * 3]), std::exp(log_scale[g * 3 + 1]), std::exp(log_scale[g * 3 + 2])};
                const WorldShape<scalar_t> shape(quat + g * 4, s);
                const scalar_t opacity = scalar_t(1) / (scalar_t(1) + std::exp(-logit[g]));
                const scalar_t weight = scalar_t(1) / (scalar_t(1) + std::exp(scalar_t(-100) * (scalar_t(1) - opacity - scalar_t(0.995))));
                scalar_t step[3];
                for (int i = 0; i < 3; ++i) step[i] = draw[g * 3 + i] * weight * scale_by;
                for (int i = 0; i < 3; ++i)
                    mean[g * 3 + i] += shape.sigma[i * 3] * step[0] + shape.sigma[i * 3 + 1] * step[1] + shape.sigma[i * 3 + 2] * step[2];
            }
        });
    });
}

namespace {

// The SH coefficients of one Gaussian as the model keeps them: band 0 [N, 1, 3] apart from the rest [N, K - 1, 3]
// (two parameters with their own learning rates), read in place rather than concatenated.
template <typename scalar_t>
struct Coefficients {
    const scalar_t* sh0;
    const scalar_t* rest;
    int64_t rest_per_gaussian;     // (K - 1) * 3
    const scalar_t* of(int64_t g, int k) const { return k == 0 ? sh0 + g * 3 : rest + g * rest_per_gaussian + (k - 1) * 3; }
};

void check_sh_inputs(int64_t degree, const at::Tensor& means, const at::Tensor& sh0, const at::Tensor& rest,
                     const at::Tensor& centres) {
    TORCH_CHECK(degree >= 0 && degree <= 4, "SH degree must be in 0..4");
    const int64_t n = means.size(0);
    for (const auto* tensor : {&means, &sh0, &rest, &centres}) {
        TORCH_CHECK(tensor->device().is_cpu() && tensor->scalar_type() == means.scalar_type() && tensor->is_contiguous(),
                    "the native SH colours take contiguous CPU tensors of one dtype");
    }
    TORCH_CHECK(means.dim() == 2 && means.size(1) == 3 && sh0.dim() == 3 && sh0.size(0) == n && sh0.size(1) == 1 &&
                    sh0.size(2) == 3 && rest.dim() == 3 && rest.size(0) == n && rest.size(2) == 3 &&
                    rest.size(1) + 1 >= (degree + 1) * (degree + 1) && centres.dim() == 2 && centres.size(1) == 3,
                "means [N, 3], sh0 [N, 1, 3], shN [N, K - 1, 3] with K >= (degree + 1)^2 and centres [C, 3] expected");
}

}  // namespace

// -> colours [C, N, 3]: SH bands 0..degree of (sh0 [N, 1, 3], shN [N, K - 1, 3]) towards each camera centre [C, 3],
// + 0.5, clamped at 0.
at::Tensor sh_forward(int64_t degree, at::Tensor means, at::Tensor sh0, at::Tensor rest, at::Tensor centres) {
    check_sh_inputs(degree, means, sh0, rest, centres);
    const int64_t n = means.size(0), n_cameras = centres.size(0);
    const int used = static_cast<int>((degree + 1) * (degree + 1));
    auto colours = at::empty({n_cameras, n, 3}, means.options());
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "sh_forward", [&] {
        const scalar_t* mean = means.data_ptr<scalar_t>();
        const Coefficients<scalar_t> coeff{sh0.data_ptr<scalar_t>(), rest.data_ptr<scalar_t>(), rest.size(1) * 3};
        const scalar_t* centre = centres.data_ptr<scalar_t>();
        scalar_t* out = colours.data_ptr<scalar_t>();
        at::parallel_for(0, n, kGrain, [&](int64_t first, int64_t last) {
            scalar_t basis[25];
            for (int64_t g = first; g < last; ++g) {
                for (int64_t c = 0; c < n_cameras; ++c) {
                    scalar_t d[3];
                    for (int i = 0; i < 3; ++i) d[i] = mean[g * 3 + i] - centre[c * 3 + i];
                    const scalar_t norm = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), scalar_t(kNormEps));
                    sh_basis<scalar_t, scalar_t>(static_cast<int>(degree), d[0] / norm, d[1] / norm, d[2] / norm, basis);
                    scalar_t sum[3] = {0, 0, 0};
                    for (int k = 0; k < used; ++k) {
                        const scalar_t* rgb = coeff.of(g, k);
                        for (int ch = 0; ch < 3; ++ch) sum[ch] += basis[k] * rgb[ch];
                    }
                    for (int ch = 0; ch < 3; ++ch) out[(c * n + g) * 3 + ch] = std::max(sum[ch] + scalar_t(0.5), scalar_t(0));
                }
            }
        });
    });
    return colours;
}

// -> (dL/dmeans [N, 3], dL/dsh0 [N, 1, 3], dL/dshN [N, K - 1, 3]) from dL/dcolours [C, N, 3].
std::vector<at::Tensor> sh_backward(int64_t degree, at::Tensor means, at::Tensor sh0, at::Tensor rest,
                                    at::Tensor centres, at::Tensor v_colours) {
    check_sh_inputs(degree, means, sh0, rest, centres);
    const int64_t n = means.size(0), n_cameras = centres.size(0);
    v_colours = v_colours.to(means.scalar_type()).contiguous();
    TORCH_CHECK(v_colours.numel() == n_cameras * n * 3, "dL/dcolours must be [C, N, 3]");
    const int used = static_cast<int>((degree + 1) * (degree + 1));
    // Allocated empty: each Gaussian's rows are written by the thread that owns it.
    auto v_means = at::empty_like(means);
    auto v_sh0 = at::empty_like(sh0);
    auto v_rest = at::empty_like(rest);
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "sh_backward", [&] {
        using D = Dual<scalar_t>;
        const scalar_t* mean = means.data_ptr<scalar_t>();
        const int64_t rest_per_gaussian = rest.size(1) * 3;
        const Coefficients<scalar_t> coeff{sh0.data_ptr<scalar_t>(), rest.data_ptr<scalar_t>(), rest_per_gaussian};
        const scalar_t* centre = centres.data_ptr<scalar_t>();
        const scalar_t* g_colour = v_colours.data_ptr<scalar_t>();
        scalar_t* out_mean = v_means.data_ptr<scalar_t>();
        scalar_t* out_sh0 = v_sh0.data_ptr<scalar_t>();
        scalar_t* out_rest = v_rest.data_ptr<scalar_t>();
        at::parallel_for(0, n, kGrain, [&](int64_t first, int64_t last) {
            D basis[25];
            for (int64_t g = first; g < last; ++g) {
                scalar_t* v_mean = out_mean + g * 3;
                std::fill(v_mean, v_mean + 3, scalar_t(0));
                std::fill(out_sh0 + g * 3, out_sh0 + g * 3 + 3, scalar_t(0));
                std::fill(out_rest + g * rest_per_gaussian, out_rest + (g + 1) * rest_per_gaussian, scalar_t(0));
                for (int64_t c = 0; c < n_cameras; ++c) {
                    scalar_t d[3];
                    for (int i = 0; i < 3; ++i) d[i] = mean[g * 3 + i] - centre[c * 3 + i];
                    const scalar_t norm = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), scalar_t(kNormEps));
                    const scalar_t unit[3] = {d[0] / norm, d[1] / norm, d[2] / norm};
                    sh_basis<D, scalar_t>(static_cast<int>(degree), D(unit[0], 0), D(unit[1], 1), D(unit[2], 2), basis);
                    // The clamp at 0 passes the gradient where the colour is not below it (torch's clamp_min).
                    scalar_t sum[3] = {0, 0, 0};
                    for (int k = 0; k < used; ++k) {
                        const scalar_t* rgb = coeff.of(g, k);
                        for (int ch = 0; ch < 3; ++ch) sum[ch] += basis[k].v * rgb[ch];
                    }
                    scalar_t v_col[3];
                    bool any = false;
                    for (int ch = 0; ch < 3; ++ch) {
                        v_col[ch] = sum[ch] + scalar_t(0.5) >= scalar_t(0) ? g_colour[(c * n + g) * 3 + ch] : scalar_t(0);
                        any = any || v_col[ch] != scalar_t(0);
                    }
                    if (!any) continue;
                    scalar_t v_unit[3] = {0, 0, 0};
                    for (int k = 0; k < used; ++k) {
                        const scalar_t* rgb = coeff.of(g, k);
                        scalar_t* v_rgb = k == 0 ? out_sh0 + g * 3 : out_rest + g * rest_per_gaussian + (k - 1) * 3;
                        scalar_t along = 0;
                        for (int ch = 0; ch < 3; ++ch) {
                            v_rgb[ch] += basis[k].v * v_col[ch];
                            along += rgb[ch] * v_col[ch];
                        }
                        for (int i = 0; i < 3; ++i) v_unit[i] += along * basis[k].d[i];
                    }
                    if (degree == 0) continue;
                    // unit = d / max(|d|, eps)
                    if (norm <= scalar_t(kNormEps)) {
                        for (int i = 0; i < 3; ++i) v_mean[i] += v_unit[i] / norm;
                    } else {
                        const scalar_t radial = v_unit[0] * unit[0] + v_unit[1] * unit[1] + v_unit[2] * unit[2];
                        for (int i = 0; i < 3; ++i) v_mean[i] += (v_unit[i] - unit[i] * radial) / norm;
                    }
                }
            }
        });
    });
    return {v_means, v_sh0, v_rest};
}
