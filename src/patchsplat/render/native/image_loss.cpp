// The training loss's two image terms on a CPU, forward and backward: mean absolute error and SSIM per image.
//
// The same definitions as patchsplat/metrics.py (l1 and ssim: Wang et al.'s SSIM with a separable Gaussian window,
// population statistics, averaged over the valid region), which stay the reference: tests/test_metrics.py holds the
// two to each other in values and gradients. Why C++: in torch the SSIM is a grouped convolution and some forty
// elementwise operations on maps of one image, forward and backward, each a pass over memory too small to be shared
// among threads (bench/RESULTS.md, issue 15). Here the filter passes and the per-pixel algebra run row by row over
// torch's threads, and each row's sums are added in row order afterwards, so results do not depend on the thread
// count.
//
// With the five filtered maps mu_x, mu_y, s_xx, s_yy, s_xy (valid region) and per output pixel
//     A = 2 mu_x mu_y + c1, B = 2 (s_xy - mu_x mu_y) + c2, C = mu_x^2 + mu_y^2 + c1, D = s_xx - mu_x^2 + s_yy - mu_y^2 + c2,
//     SSIM = A B / (C D)
// the backward pass needs dSSIM/d(mu_x, s_xx, s_xy) (the target takes no gradient), filters those back with the
// transposed window and forms dL/dx = G^T g_mu + 2 x G^T g_xx + y G^T g_xy.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

struct Shape {
    int64_t batch, channels, height, width, out_height, out_width, taps;
    int64_t planes() const { return batch * channels; }
};

Shape check_images(const at::Tensor& x, const at::Tensor& y, const at::Tensor& window) {
    TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && y.is_contiguous() && window.is_contiguous() &&
                    x.scalar_type() == y.scalar_type() && window.scalar_type() == x.scalar_type() &&
                    (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
                "prediction, target and window must be contiguous CPU tensors of one floating type");
    TORCH_CHECK(x.dim() == 4 && x.sizes() == y.sizes() && window.dim() == 1 && window.size(0) % 2 == 1,
                "prediction and target must be [B, C, H, W] of one shape, the window odd-sized");
    const int64_t taps = window.size(0);
    TORCH_CHECK(x.size(2) >= taps && x.size(3) >= taps, "images must be at least as large as the window");
    return {x.size(0), x.size(1), x.size(2), x.size(3), x.size(2) - taps + 1, x.size(3) - taps + 1, taps};
}

// The four factors of SSIM = A B / (C D) at one output pixel `at` of the five filtered maps (mu_x, mu_y, s_xx, s_yy,
// s_xy, each `stride` apart).
template <typename scalar_t>
struct SsimTerms {
    scalar_t mx, my, a, b, c, d;
    SsimTerms(const scalar_t* maps, int64_t stride, int64_t at, scalar_t k1, scalar_t k2)
        : mx(maps[at]), my(maps[stride + at]) {
        const scalar_t sxx = maps[2 * stride + at], syy = maps[3 * stride + at], sxy = maps[4 * stride + at];
        a = scalar_t(2) * mx * my + k1;
        b = scalar_t(2) * (sxy - mx * my) + k2;
        c = mx * mx + my * my + k1;
        d = (sxx - mx * mx) + (syy - my * my) + k2;
    }
};

// Sums of per-row partial sums, in row order, per image: [planes * rows] -> [batch].
at::Tensor per_image(const std::vector<double>& row_sums, const Shape& shape, int64_t rows, double scale,
                     const at::TensorOptions& options) {
    auto out = at::empty({shape.batch}, options.dtype(at::kDouble));
    double* value = out.data_ptr<double>();
    const int64_t per_batch = shape.channels * rows;
    for (int64_t b = 0; b < shape.batch; ++b) {
        double sum = 0;
        for (int64_t i = 0; i < per_batch; ++i) sum += row_sums[b * per_batch + i];
        value[b] = sum * scale;
    }
    return out.to(options.dtype());
}

}  // namespace

// -> (l1 [B], ssim [B], maps [5, B*C, H', W']: mu_x, mu_y, s_xx, s_yy, s_xy for the backward pass).
std::vector<at::Tensor> image_loss_forward(at::Tensor x, at::Tensor y, at::Tensor window, double c1, double c2) {
    const Shape shape = check_images(x, y, window);
    const int64_t planes = shape.planes(), H = shape.height, W = shape.width, Ho = shape.out_height, Wo = shape.out_width;
    auto rows_filtered = at::empty({5, planes, H, Wo}, x.options());
    auto maps = at::empty({5, planes, Ho, Wo}, x.options());
    std::vector<double> l1_rows(planes * H), ssim_rows(planes * Ho);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "image_loss_forward", [&] {
        const scalar_t* xs = x.data_ptr<scalar_t>();
        const scalar_t* ys = y.data_ptr<scalar_t>();
        const scalar_t* w = window.data_ptr<scalar_t>();
        scalar_t* horizontal = rows_filtered.data_ptr<scalar_t>();
        scalar_t* filtered = maps.data_ptr<scalar_t>();
        const int64_t map_stride_h = planes * H * Wo, map_stride = planes * Ho * Wo;
        // Horizontal pass of x, y, x^2, y^2, xy, and each row's |x - y|.
        at::parallel_for(0, planes * H, 16, [&](int64_t first, int64_t last) {
            std::vector<scalar_t> products(5 * W);
            for (int64_t row = first; row < last; ++row) {
                const scalar_t* xr = xs + row * W;
                const scalar_t* yr = ys + row * W;
                double l1 = 0;
                for (int64_t j = 0; j < W; ++j) {
                    products[j] = xr[j];
                    products[W + j] = yr[j];
                    products[2 * W + j] = xr[j] * xr[j];
                    products[3 * W + j] = yr[j] * yr[j];
                    products[4 * W + j] = xr[j] * yr[j];
                    l1 += std::fabs(static_cast<double>(xr[j]) - static_cast<double>(yr[j]));
                }
                l1_rows[row] = l1;
                for (int m = 0; m < 5; ++m) {
                    const scalar_t* __restrict__ in = products.data() + m * W;
                    scalar_t* __restrict__ out = horizontal + m * map_stride_h + row * Wo;
                    // Tap by tap over the whole row: inner loops the compiler vectorises.
                    for (int64_t j = 0; j < Wo; ++j) out[j] = w[0] * in[j];
                    for (int64_t k = 1; k < shape.taps; ++k) {
                        const scalar_t weight = w[k];
                        for (int64_t j = 0; j < Wo; ++j) out[j] += weight * in[j + k];
                    }
                }
            }
        });
        // Vertical pass, then SSIM per pixel and each output row's sum.
        const scalar_t k1 = static_cast<scalar_t>(c1), k2 = static_cast<scalar_t>(c2);
        at::parallel_for(0, planes * Ho, 16, [&](int64_t first, int64_t last) {
            for (int64_t out_row = first; out_row < last; ++out_row) {
                const int64_t plane = out_row / Ho, i = out_row % Ho;
                for (int m = 0; m < 5; ++m) {
                    scalar_t* __restrict__ out = filtered + m * map_stride + out_row * Wo;
                    const scalar_t* __restrict__ in = horizontal + m * map_stride_h + (plane * H + i) * Wo;
                    for (int64_t j = 0; j < Wo; ++j) out[j] = w[0] * in[j];
                    for (int64_t k = 1; k < shape.taps; ++k) {
                        const scalar_t weight = w[k];
                        for (int64_t j = 0; j < Wo; ++j) out[j] += weight * in[k * Wo + j];
                    }
                }
                double sum = 0;
                for (int64_t j = 0; j < Wo; ++j) {
                    const SsimTerms<scalar_t> t(filtered, map_stride, out_row * Wo + j, k1, k2);
                    sum += static_cast<double>((t.a * t.b) / (t.c * t.d));
                }
                ssim_rows[out_row] = sum;
            }
        });
    });
    auto l1 = per_image(l1_rows, shape, H, 1.0 / static_cast<double>(shape.channels * H * W), x.options());
    auto ssim = per_image(ssim_rows, shape, Ho, 1.0 / static_cast<double>(shape.channels * Ho * Wo), x.options());
    return {l1, ssim, maps};
}

// -> dL/dprediction [B, C, H, W] given dL/dl1 [B] and dL/dssim [B] and the forward pass's maps.
at::Tensor image_loss_backward(at::Tensor x, at::Tensor y, at::Tensor window, double c1, double c2, at::Tensor maps,
                               at::Tensor grad_l1, at::Tensor grad_ssim) {
    const Shape shape = check_images(x, y, window);
    const int64_t planes = shape.planes(), H = shape.height, W = shape.width, Ho = shape.out_height, Wo = shape.out_width;
    TORCH_CHECK(maps.is_contiguous() && maps.scalar_type() == x.scalar_type() && maps.numel() == 5 * planes * Ho * Wo,
                "maps must be the forward pass's");
    grad_l1 = grad_l1.to(at::kDouble).contiguous();
    grad_ssim = grad_ssim.to(at::kDouble).contiguous();
    TORCH_CHECK(grad_l1.numel() == shape.batch && grad_ssim.numel() == shape.batch, "one gradient per image expected");
    auto per_pixel = at::empty({3, planes, Ho, Wo}, x.options());
    auto grad = at::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "image_loss_backward", [&] {
        const scalar_t* xs = x.data_ptr<scalar_t>();
        const scalar_t* ys = y.data_ptr<scalar_t>();
        const scalar_t* w = window.data_ptr<scalar_t>();
        const scalar_t* filtered = maps.data_ptr<scalar_t>();
        scalar_t* g_maps = per_pixel.data_ptr<scalar_t>();
        scalar_t* g_x = grad.data_ptr<scalar_t>();
        const double* g_l1 = grad_l1.data_ptr<double>();
        const double* g_ssim = grad_ssim.data_ptr<double>();
        const int64_t map_stride = planes * Ho * Wo;
        const scalar_t k1 = static_cast<scalar_t>(c1), k2 = static_cast<scalar_t>(c2);
        // dL/d(mu_x, s_xx, s_xy) at every output pixel.
        at::parallel_for(0, planes * Ho, 16, [&](int64_t first, int64_t last) {
            for (int64_t out_row = first; out_row < last; ++out_row) {
                const int64_t image = out_row / Ho / shape.channels;
                const scalar_t g = static_cast<scalar_t>(g_ssim[image] / static_cast<double>(shape.channels * Ho * Wo));
                for (int64_t j = 0; j < Wo; ++j) {
                    const int64_t at = out_row * Wo + j;
                    const SsimTerms<scalar_t> t(filtered, map_stride, at, k1, k2);
                    const scalar_t cd = t.c * t.d, s = (t.a * t.b) / cd, two = scalar_t(2);
                    // dS/dmu_x = (2 my B - 2 my A) / (C D) - S (2 mx / C - 2 mx / D); dS/ds_xx = -S / D; dS/ds_xy = 2 A / (C D)
                    g_maps[at] = g * ((two * t.my * t.b - two * t.my * t.a) / cd - s * (two * t.mx / t.c - two * t.mx / t.d));
                    g_maps[map_stride + at] = g * (-s / t.d);
                    g_maps[2 * map_stride + at] = g * (two * t.a / cd);
                }
            }
        });
        // The transposed filter (vertical, then horizontal) row by row, and dL/dx.
        at::parallel_for(0, planes * H, 16, [&](int64_t first, int64_t last) {
            std::vector<scalar_t> column_pass(3 * Wo), back(3 * W);
            for (int64_t row = first; row < last; ++row) {
                const int64_t plane = row / H, i = row % H, image = plane / shape.channels;
                std::fill(column_pass.begin(), column_pass.end(), scalar_t(0));
                // Output rows i - k (k = 0 .. taps - 1) read input row i through tap k.
                for (int64_t k = 0; k < shape.taps; ++k) {
                    const int64_t out_i = i - k;
                    if (out_i < 0 || out_i >= Ho) continue;
                    const scalar_t weight = w[k];
                    for (int m = 0; m < 3; ++m) {
                        const scalar_t* __restrict__ in = g_maps + m * map_stride + (plane * Ho + out_i) * Wo;
                        scalar_t* __restrict__ acc = column_pass.data() + m * Wo;
                        for (int64_t j = 0; j < Wo; ++j) acc[j] += weight * in[j];
                    }
                }
                std::fill(back.begin(), back.end(), scalar_t(0));
                for (int m = 0; m < 3; ++m) {
                    const scalar_t* __restrict__ in = column_pass.data() + m * Wo;
                    scalar_t* __restrict__ out = back.data() + m * W;
                    for (int64_t k = 0; k < shape.taps; ++k) {
                        const scalar_t weight = w[k];
                        for (int64_t j = 0; j < Wo; ++j) out[j + k] += weight * in[j];
                    }
                }
                const scalar_t l1_scale = static_cast<scalar_t>(g_l1[image] / static_cast<double>(shape.channels * H * W));
                const scalar_t* xr = xs + row * W;
                const scalar_t* yr = ys + row * W;
                scalar_t* out = g_x + row * W;
                for (int64_t j = 0; j < W; ++j) {
                    const scalar_t difference = xr[j] - yr[j];
                    const scalar_t sign = difference > 0 ? scalar_t(1) : (difference < 0 ? scalar_t(-1) : scalar_t(0));
                    out[j] = back[j] + scalar_t(2) * xr[j] * back[W + j] + yr[j] * back[2 * W + j] + l1_scale * sign;
                }
            }
        });
    });
    return grad;
}
