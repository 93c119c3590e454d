// Front-to-back alpha compositing of depth-sorted tile lists on a CPU: patchsplat's native compositor.
//
// The same contract and semantics as patchsplat/render/composite.py (the pure-torch compositor, which stays the
// fallback and the reference): per overlap (tile, Gaussian) six coefficients with
//     log(alpha) = coef . (u^2, v^2, uv, u, v, 1)        (u, v) = pixel centre - tile centre
// then, per pixel, gsplat's kernel (csrc/RasterizeToPixels3DGSFwd.cu / Bwd.cu):
//     alpha = min(0.999, exp(max(log alpha, -30)));  skipped when alpha < 1/255
//     stop (excluding g) once T * (1 - alpha) <= 1e-4;  else colour += alpha T c;  T *= 1 - alpha
//
// Why C++: in torch the per-tile loop over a list is cut into chunks of whole tensors, and most of a step's
// time went to the chunks' bookkeeping and to passes over memory (bench/RESULTS.md, issue 15). Here each tile is
// one loop in cache, and tiles are shared among torch's threads (at::parallel_for, so torch.set_num_threads
// governs it and no second OpenMP runtime is linked). Every overlap belongs to exactly one tile, so the backward
// pass writes each overlap's gradients from one thread: no atomics, and results do not depend on the thread count.
//
// The forward pass keeps each pixel's final transmittance and last contributor; the backward pass walks the list
// back to front from there, recovering each transmittance by division as gsplat's kernel does:
//     dL/dw_k = c_k . dL/dcolour - dL/dT_final               (T_final = 1 - sum_k w_k, w_k = alpha_k T_k)
//     dL/dlog(alpha_k) = w_k dL/dw_k - alpha_k / (1 - alpha_k) * sum_{j > k} w_j dL/dw_j   (0 where clamped)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// The torch compositor's constants, compared in the tensors' own precision as there.
constexpr double kMaxAlpha = 0.999;
constexpr double kMinAlpha = 1.0 / 255.0;
constexpr double kTransmittanceStop = 1e-4;
constexpr double kExpFloor = -30.0;
// Below this log(alpha) the alpha is certainly under 1/255 (ln(1/255) = -5.541): skip the exp.
constexpr double kSkipBelow = -5.6;

template <typename scalar_t>
struct Pixels {
    std::vector<scalar_t> u, v, uu, vv, uv;
    explicit Pixels(int64_t tile_size) {
        for (int64_t row = 0; row < tile_size; ++row) {
            for (int64_t col = 0; col < tile_size; ++col) {
                const scalar_t pu = static_cast<scalar_t>(col) + scalar_t(0.5) - scalar_t(0.5) * static_cast<scalar_t>(tile_size);
                const scalar_t pv = static_cast<scalar_t>(row) + scalar_t(0.5) - scalar_t(0.5) * static_cast<scalar_t>(tile_size);
                u.push_back(pu);
                v.push_back(pv);
                uu.push_back(pu * pu);
                vv.push_back(pv * pv);
                uv.push_back(pu * pv);
            }
        }
    }
    int64_t size() const { return static_cast<int64_t>(u.size()); }
};

// log(alpha) of one overlap at every pixel of its tile; whether any pixel may reach alpha >= 1/255.
// A branch-free loop the compiler vectorises: most overlaps touch only part of their tile, and this lets the
// per-pixel work below skip them whole.
template <typename scalar_t>
inline bool log_alphas(const scalar_t* c, const Pixels<scalar_t>& px, scalar_t* x) {
    const int64_t n_pixels = px.size();
    scalar_t largest = scalar_t(kSkipBelow) - scalar_t(1);
    for (int64_t p = 0; p < n_pixels; ++p) {
        x[p] = c[0] * px.uu[p] + c[1] * px.vv[p] + c[2] * px.uv[p] + c[3] * px.u[p] + c[4] * px.v[p] + c[5];
        largest = std::max(largest, x[p]);
    }
    return largest >= scalar_t(kSkipBelow);
}

// alpha from log(alpha), 0 when skipped (the torch compositor's clamp, exp, min and threshold).
template <typename scalar_t>
inline scalar_t alpha_of(scalar_t x) {
    if (x < scalar_t(kSkipBelow)) return scalar_t(0);
    const scalar_t alpha = std::min(std::exp(std::max(x, scalar_t(kExpFloor))), scalar_t(kMaxAlpha));
    return alpha < scalar_t(kMinAlpha) ? scalar_t(0) : alpha;
}

// Tiles in an order that gives each of `buckets` interleaved slices about the same work (longest lists first).
std::vector<int64_t> tiles_by_length(const int64_t* counts, int64_t n_tiles) {
    std::vector<int64_t> order(n_tiles);
    for (int64_t t = 0; t < n_tiles; ++t) order[t] = t;
    std::stable_sort(order.begin(), order.end(), [counts](int64_t a, int64_t b) { return counts[a] > counts[b]; });
    return order;
}

template <typename Body>
void for_each_tile(const int64_t* counts, int64_t n_tiles, Body body) {
    const std::vector<int64_t> order = tiles_by_length(counts, n_tiles);
    const int64_t buckets = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tiles));
    at::parallel_for(0, buckets, 1, [&](int64_t first, int64_t last) {
        for (int64_t bucket = first; bucket < last; ++bucket) {
            for (int64_t rank = bucket; rank < n_tiles; rank += buckets) body(order[rank]);
        }
    });
}

void check_inputs(const at::Tensor& coefs, const at::Tensor& colors, const at::Tensor& offsets,
                  const at::Tensor& counts) {
    TORCH_CHECK(coefs.device().is_cpu() && colors.device().is_cpu(), "the native compositor runs on the CPU");
    TORCH_CHECK((coefs.scalar_type() == at::kFloat || coefs.scalar_type() == at::kDouble) &&
                    colors.scalar_type() == coefs.scalar_type(), "the native compositor takes float32 or float64");
    TORCH_CHECK(coefs.dim() == 2 && coefs.size(1) == 6 && coefs.is_contiguous(), "coefs must be contiguous [M, 6]");
    TORCH_CHECK(colors.dim() == 2 && colors.size(0) == coefs.size(0) && colors.is_contiguous(),
                "colors must be contiguous [M, D]");
    TORCH_CHECK(offsets.scalar_type() == at::kLong && counts.scalar_type() == at::kLong &&
                    offsets.is_contiguous() && counts.is_contiguous() && offsets.numel() == counts.numel(),
                "offsets and counts must be contiguous int64 [T]");
    // Every overlap lies in exactly one tile's range [offset, offset + count): the kernels write each row once.
    TORCH_CHECK(counts.sum().item<int64_t>() == coefs.size(0) &&
                    (counts.numel() == 0 || (offsets.data_ptr<int64_t>()[0] == 0 &&
                                             at::equal(offsets.narrow(0, 1, counts.numel() - 1),
                                                       counts.cumsum(0).narrow(0, 0, counts.numel() - 1)))),
                "the tile ranges must cover the overlaps in order");
}

template <typename scalar_t>
void forward_tiles(const scalar_t* coef, const scalar_t* color, const int64_t* offset, const int64_t* count,
                   int64_t n_tiles, int64_t channels, const Pixels<scalar_t>& px, scalar_t* color_out, scalar_t* t_out,
                   int32_t* last_out) {
    const int64_t n_pixels = px.size();
    for_each_tile(count, n_tiles, [&](int64_t tile) {
        scalar_t* t_pix = t_out + tile * n_pixels;
        scalar_t* c_pix = color_out + tile * n_pixels * channels;
        int32_t* last = last_out + tile * n_pixels;
        // The outputs start empty: each tile's thread initialises its own (a zero-filled allocation would be
        // one more pass over memory, on one core).
        std::fill(t_pix, t_pix + n_pixels, scalar_t(1));
        std::fill(c_pix, c_pix + n_pixels * channels, scalar_t(0));
        std::fill(last, last + n_pixels, 0);
        std::vector<char> done(n_pixels, 0);
        std::vector<scalar_t> x(n_pixels);
        int64_t open = n_pixels;
        for (int64_t k = 0; k < count[tile] && open > 0; ++k) {
            const int64_t isect = offset[tile] + k;
            if (!log_alphas(coef + isect * 6, px, x.data())) continue;
            const scalar_t* rgb = color + isect * channels;
            for (int64_t p = 0; p < n_pixels; ++p) {
                if (done[p]) continue;
                const scalar_t alpha = alpha_of(x[p]);
                if (alpha == scalar_t(0)) continue;
                const scalar_t next_t = t_pix[p] * (scalar_t(1) - alpha);
                if (next_t <= scalar_t(kTransmittanceStop)) {
                    done[p] = 1;
                    --open;
                    continue;
                }
                const scalar_t weight = alpha * t_pix[p];
                for (int64_t d = 0; d < channels; ++d) c_pix[p * channels + d] += weight * rgb[d];
                t_pix[p] = next_t;
                last[p] = static_cast<int32_t>(k + 1);
            }
        }
    });
}

// Back to front from each pixel's last contributor, the transmittance before each overlap recovered as
// T_k = T_(k+1) / (1 - alpha_k) from the final one, as gsplat's backward kernel does (no second forward pass).
template <typename scalar_t>
void backward_tiles(const scalar_t* coef, const scalar_t* color, const int64_t* offset, const int64_t* count,
                    int64_t n_tiles, int64_t channels, const Pixels<scalar_t>& px, const scalar_t* t_final,
                    const int32_t* last_in, const scalar_t* g_color, const scalar_t* g_t, scalar_t* g_coef,
                    scalar_t* g_rgb, scalar_t* g_abs) {
    const int64_t n_pixels = px.size();
    for_each_tile(count, n_tiles, [&](int64_t tile) {
        const int32_t* last = last_in + tile * n_pixels;
        const scalar_t* gc_tile = g_color + tile * n_pixels * channels;
        const scalar_t* gt_tile = g_t + tile * n_pixels;
        // This tile's overlaps' gradient rows start empty (see forward_tiles); those it skips stay 0.
        std::fill(g_coef + offset[tile] * 6, g_coef + (offset[tile] + count[tile]) * 6, scalar_t(0));
        std::fill(g_rgb + offset[tile] * channels, g_rgb + (offset[tile] + count[tile]) * channels, scalar_t(0));
        if (g_abs != nullptr) std::fill(g_abs + offset[tile] * 2, g_abs + (offset[tile] + count[tile]) * 2, scalar_t(0));
        std::vector<scalar_t> t_pix(t_final + tile * n_pixels, t_final + (tile + 1) * n_pixels);
        std::vector<scalar_t> later(n_pixels, scalar_t(0));   // sum over later overlaps of w_j dL/dw_j
        std::vector<scalar_t> x(n_pixels);
        const int64_t used = *std::max_element(last, last + n_pixels);
        for (int64_t k = used - 1; k >= 0; --k) {
            const int64_t isect = offset[tile] + k;
            const scalar_t* c = coef + isect * 6;
            if (!log_alphas(c, px, x.data())) continue;
            const scalar_t* rgb = color + isect * channels;
            double g[6] = {0, 0, 0, 0, 0, 0}, abs_x = 0, abs_y = 0;
            scalar_t* g_rgb_row = g_rgb + isect * channels;
            for (int64_t p = 0; p < n_pixels; ++p) {
                if (k >= last[p]) continue;
                const scalar_t alpha = alpha_of(x[p]);
                if (alpha == scalar_t(0)) continue;
                const scalar_t before = t_pix[p] / (scalar_t(1) - alpha);
                t_pix[p] = before;
                const scalar_t weight = alpha * before;
                scalar_t dot = -gt_tile[p];
                for (int64_t d = 0; d < channels; ++d) {
                    dot += rgb[d] * gc_tile[p * channels + d];
                    g_rgb_row[d] += weight * gc_tile[p * channels + d];
                }
                const scalar_t contrib = weight * dot;
                scalar_t g_log_alpha = contrib - alpha / (scalar_t(1) - alpha) * later[p];
                later[p] += contrib;
                // The clamp: there alpha does not move with the coefficients.
                if (alpha >= scalar_t(kMaxAlpha) || g_log_alpha == scalar_t(0)) continue;
                g[0] += g_log_alpha * px.uu[p];
                g[1] += g_log_alpha * px.vv[p];
                g[2] += g_log_alpha * px.uv[p];
                g[3] += g_log_alpha * px.u[p];
                g[4] += g_log_alpha * px.v[p];
                g[5] += g_log_alpha;
                if (g_abs != nullptr) {
                    // d log(alpha) / d mean = (coef_u + 2 coef_uu u + coef_uv v, coef_v + 2 coef_vv v + coef_uv u)
                    abs_x += std::fabs(g_log_alpha * (c[3] + scalar_t(2) * c[0] * px.u[p] + c[2] * px.v[p]));
                    abs_y += std::fabs(g_log_alpha * (c[4] + scalar_t(2) * c[1] * px.v[p] + c[2] * px.u[p]));
                }
            }
            for (int i = 0; i < 6; ++i) g_coef[isect * 6 + i] = static_cast<scalar_t>(g[i]);
            if (g_abs != nullptr) {
                g_abs[isect * 2] = static_cast<scalar_t>(abs_x);
                g_abs[isect * 2 + 1] = static_cast<scalar_t>(abs_y);
            }
        }
    });
}

}  // namespace

// -> (colors [T, P, D], transmittance [T, P], each pixel's last contributing slot + 1 [T, P] int32) for every
// tile's P = tile_size^2 pixels, no background.
std::vector<at::Tensor> composite_forward(at::Tensor coefs, at::Tensor colors, at::Tensor offsets,
                                             at::Tensor counts, int64_t tile_size) {
    check_inputs(coefs, colors, offsets, counts);
    const int64_t n_tiles = counts.numel(), n_pixels = tile_size * tile_size, channels = colors.size(1);
    auto out_color = at::empty({n_tiles, n_pixels, channels}, coefs.options());
    auto out_t = at::empty({n_tiles, n_pixels}, coefs.options());
    auto out_last = at::empty({n_tiles, n_pixels}, coefs.options().dtype(at::kInt));
    AT_DISPATCH_FLOATING_TYPES(coefs.scalar_type(), "composite_forward", [&] {
        forward_tiles<scalar_t>(coefs.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(), offsets.data_ptr<int64_t>(),
                                counts.data_ptr<int64_t>(), n_tiles, channels, Pixels<scalar_t>(tile_size),
                                out_color.data_ptr<scalar_t>(), out_t.data_ptr<scalar_t>(), out_last.data_ptr<int32_t>());
    });
    return {out_color, out_t, out_last};
}

// -> (dL/dcoefs [M, 6], dL/dcolors [M, D], sum over pixels of |dL/dmean2d| [M, 2] or an empty tensor), given the
// forward pass's transmittance and last contributors.
std::vector<at::Tensor> composite_backward(at::Tensor coefs, at::Tensor colors, at::Tensor offsets,
                                              at::Tensor counts, int64_t tile_size, at::Tensor t_final,
                                              at::Tensor last, at::Tensor grad_color, at::Tensor grad_t,
                                              bool absgrad) {
    check_inputs(coefs, colors, offsets, counts);
    const int64_t n_tiles = counts.numel(), n_pixels = tile_size * tile_size, channels = colors.size(1);
    grad_color = grad_color.contiguous().to(coefs.scalar_type());
    grad_t = grad_t.contiguous().to(coefs.scalar_type());
    TORCH_CHECK(grad_color.numel() == n_tiles * n_pixels * channels && grad_t.numel() == n_tiles * n_pixels,
                "gradient shapes do not match the tiles");
    TORCH_CHECK(t_final.is_contiguous() && t_final.scalar_type() == coefs.scalar_type() && t_final.numel() == n_tiles * n_pixels &&
                    last.is_contiguous() && last.scalar_type() == at::kInt && last.numel() == n_tiles * n_pixels,
                "t_final and last must be the forward pass's")
    auto grad_coefs = at::empty_like(coefs);
    auto grad_colors = at::empty_like(colors);
    auto abs_grads = at::empty({absgrad ? coefs.size(0) : 0, 2}, coefs.options());
    AT_DISPATCH_FLOATING_TYPES(coefs.scalar_type(), "composite_backward", [&] {
        backward_tiles<scalar_t>(coefs.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(), offsets.data_ptr<int64_t>(),
                                 counts.data_ptr<int64_t>(), n_tiles, channels, Pixels<scalar_t>(tile_size),
                                 t_final.data_ptr<scalar_t>(), last.data_ptr<int32_t>(),
                                 grad_color.data_ptr<scalar_t>(), grad_t.data_ptr<scalar_t>(),
                                 grad_coefs.data_ptr<scalar_t>(), grad_colors.data_ptr<scalar_t>(),
                                 absgrad ? abs_grads.data_ptr<scalar_t>() : nullptr);
    });
    return {grad_coefs, grad_colors, abs_grads};
}
