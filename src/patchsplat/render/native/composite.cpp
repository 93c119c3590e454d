// Front-to-back alpha compositing of depth-sorted tile lists on a CPU: patchsplat's native compositor.
//
// The same contract and semantics as patchsplat/render/composite.py (the pure-torch compositor, which stays the
// fallback and the reference), except that it takes the (camera, Gaussian) rows themselves and computes each
// overlap's six coefficients in the loop, from its row and its tile's centre:
//     log(alpha) = coef . (u^2, v^2, uv, u, v, 1)        (u, v) = pixel centre - tile centre
// then, per pixel, gsplat's kernel (csrc/RasterizeToPixels3DGSFwd.cu / Bwd.cu):
//     alpha = min(0.999, exp(max(log alpha, -30)));  skipped when alpha < 1/255
//     stop (excluding g) once T * (1 - alpha) <= 1e-4;  else colour += alpha T c;  T *= 1 - alpha
//
// Why C++: in torch the per-tile loop over a list is cut into chunks of whole tensors, and most of a step's
// time went to the chunks' bookkeeping and to passes over memory (bench/RESULTS.md, issue 15). Here each tile is
// one loop in cache, and tiles are shared among torch's threads (at::parallel_for, so torch.set_num_threads
// governs it and no second OpenMP runtime is linked). Every overlap belongs to exactly one tile, so the backward
// pass writes each overlap's gradients from one thread; each row's gradients are then the sum of its overlaps',
// added in the tile lists' row-grouped order by the thread that owns the row. No atomics, no scatter-add, and
// results that do not depend on the thread count.
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

// The rows' tensors and the tile lists, checked so the loops below may read and write without bounds checks.
struct Rows {
    at::Tensor means2d, conics, opacities, colors, ids, offsets, counts;
    int64_t n_rows, n_isects, n_tiles, channels, tile_size, tile_width, tiles_per_camera;
};

void check_range(const at::Tensor& index, int64_t size, const char* what) {
    if (index.numel() == 0) return;
    auto [low, high] = at::aminmax(index);
    TORCH_CHECK(low.item<int64_t>() >= 0 && high.item<int64_t>() < size, what, " out of range");
}

Rows check_rows(at::Tensor means2d, at::Tensor conics, at::Tensor opacities, at::Tensor colors, at::Tensor ids,
                at::Tensor offsets, at::Tensor counts, int64_t tile_size, int64_t tile_width, int64_t tile_height) {
    const auto dtype = means2d.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "the native compositor takes float32 or float64");
    for (const at::Tensor* tensor : {&means2d, &conics, &opacities, &colors}) {
        TORCH_CHECK(tensor->device().is_cpu() && tensor->scalar_type() == dtype && tensor->is_contiguous(),
                    "the rows must be contiguous CPU tensors of one floating type");
    }
    const int64_t n_rows = means2d.size(0);
    TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2 && conics.sizes() == at::IntArrayRef({n_rows, 3}) &&
                    opacities.sizes() == at::IntArrayRef({n_rows}) && colors.dim() == 2 && colors.size(0) == n_rows,
                "rows must be means2d [R, 2], conics [R, 3], opacities [R], colors [R, D]");
    for (const at::Tensor* tensor : {&ids, &offsets, &counts}) {
        TORCH_CHECK(tensor->device().is_cpu() && tensor->scalar_type() == at::kLong && tensor->is_contiguous() &&
                        tensor->dim() == 1, "flatten_ids, offsets and counts must be contiguous int64 vectors");
    }
    const int64_t n_tiles = counts.numel();
    TORCH_CHECK(tile_size > 0 && tile_width > 0 && tile_height > 0 && offsets.numel() == n_tiles &&
                    n_tiles % (tile_width * tile_height) == 0, "the tile grid does not match the tile lists");
    // Every overlap lies in exactly one tile's range [offset, offset + count): the kernels write each overlap once.
    TORCH_CHECK(counts.sum().item<int64_t>() == ids.numel() &&
                    (n_tiles == 0 || (offsets.data_ptr<int64_t>()[0] == 0 &&
                                      at::equal(offsets.narrow(0, 1, n_tiles - 1), counts.cumsum(0).narrow(0, 0, n_tiles - 1)))),
                "the tile ranges must cover the overlaps in order");
    check_range(ids, n_rows, "flatten_ids");
    return {means2d, conics, opacities, colors, ids, offsets, counts, n_rows, ids.numel(), n_tiles, colors.size(1),
            tile_size, tile_width, tile_width * tile_height};
}

// Per-row inputs of the coefficients, read by every overlap of the row.
template <typename scalar_t>
struct RowData {
    const scalar_t *mean, *conic, *opacity, *rgb;
    const int64_t *ids, *offset, *count;
    std::vector<scalar_t> log_opacity;   // once per row rather than once per overlap

    explicit RowData(const Rows& rows)
        : mean(rows.means2d.data_ptr<scalar_t>()), conic(rows.conics.data_ptr<scalar_t>()),
          opacity(rows.opacities.data_ptr<scalar_t>()), rgb(rows.colors.data_ptr<scalar_t>()),
          ids(rows.ids.data_ptr<int64_t>()), offset(rows.offsets.data_ptr<int64_t>()),
          count(rows.counts.data_ptr<int64_t>()), log_opacity(rows.n_rows) {
        at::parallel_for(0, rows.n_rows, 4096, [&](int64_t first, int64_t last) {
            for (int64_t row = first; row < last; ++row) log_opacity[row] = std::log(opacity[row]);
        });
    }

    // The six coefficients of log(alpha) over (u^2, v^2, uv, u, v, 1) for one row in a tile centred at (cx, cy):
    // -0.5 a (u - mu)^2 - b (u - mu)(v - mv) - 0.5 c (v - mv)^2 + log(opacity), (mu, mv) = mean - centre,
    // written as composite.exponent_coefficients writes them.
    void coefficients(int64_t row, scalar_t cx, scalar_t cy, scalar_t* c) const {
        const scalar_t mu = mean[row * 2] - cx, mv = mean[row * 2 + 1] - cy;
        const scalar_t a = conic[row * 3], b = conic[row * 3 + 1], cc = conic[row * 3 + 2];
        c[0] = scalar_t(-0.5) * a;
        c[1] = scalar_t(-0.5) * cc;
        c[2] = -b;
        c[3] = a * mu + b * mv;
        c[4] = cc * mv + b * mu;
        c[5] = log_opacity[row] - scalar_t(0.5) * (a * mu * mu + cc * mv * mv) - b * mu * mv;
    }

    // dL/d(mean x, mean y, a, b, c, opacity) of one row from dL/dcoefficients g (the chain rule of coefficients()).
    void row_gradients(int64_t row, scalar_t cx, scalar_t cy, const double* g, double* out) const {
        const double mu = mean[row * 2] - cx, mv = mean[row * 2 + 1] - cy;
        const double a = conic[row * 3], b = conic[row * 3 + 1], cc = conic[row * 3 + 2];
        out[0] = g[3] * a + g[4] * b - g[5] * (a * mu + b * mv);
        out[1] = g[3] * b + g[4] * cc - g[5] * (cc * mv + b * mu);
        out[2] = -0.5 * g[0] + g[3] * mu - 0.5 * g[5] * mu * mu;
        out[3] = -g[2] + g[3] * mv + g[4] * mu - g[5] * mu * mv;
        out[4] = -0.5 * g[1] + g[4] * mv - 0.5 * g[5] * mv * mv;
        out[5] = opacity[row] > 0 ? g[5] / opacity[row] : 0.0;
    }
};

// The pixel centre of a tile's centre, in pixels.
template <typename scalar_t>
inline void tile_centre(const Rows& rows, int64_t tile, scalar_t* cx, scalar_t* cy) {
    const int64_t in_camera = tile % rows.tiles_per_camera;
    const scalar_t half = scalar_t(0.5) * static_cast<scalar_t>(rows.tile_size);
    *cx = static_cast<scalar_t>(in_camera % rows.tile_width) * static_cast<scalar_t>(rows.tile_size) + half;
    *cy = static_cast<scalar_t>(in_camera / rows.tile_width) * static_cast<scalar_t>(rows.tile_size) + half;
}

template <typename scalar_t>
void forward_tiles(const Rows& rows, const Pixels<scalar_t>& px, scalar_t* color_out, scalar_t* t_out, int32_t* last_out) {
    const RowData<scalar_t> data(rows);
    const int64_t n_pixels = px.size(), channels = rows.channels;
    for_each_tile(data.count, rows.n_tiles, [&](int64_t tile) {
        scalar_t* t_pix = t_out + tile * n_pixels;
        scalar_t* c_pix = color_out + tile * n_pixels * channels;
        int32_t* last = last_out + tile * n_pixels;
        // The outputs start empty: each tile's thread initialises its own (a zero-filled allocation would be
        // one more pass over memory, on one core).
        std::fill(t_pix, t_pix + n_pixels, scalar_t(1));
        std::fill(c_pix, c_pix + n_pixels * channels, scalar_t(0));
        std::fill(last, last + n_pixels, 0);
        scalar_t cx, cy, c[6];
        tile_centre(rows, tile, &cx, &cy);
        std::vector<char> done(n_pixels, 0);
        std::vector<scalar_t> x(n_pixels);
        int64_t open = n_pixels;
        for (int64_t k = 0; k < data.count[tile] && open > 0; ++k) {
            const int64_t row = data.ids[data.offset[tile] + k];
            data.coefficients(row, cx, cy, c);
            if (!log_alphas(c, px, x.data())) continue;
            const scalar_t* rgb = data.rgb + row * channels;
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
// Each overlap's gradients w.r.t. its row's inputs go to its slot of `per_isect` [M, width] in the row-grouped
// order (`grouped`), where reduce_rows sums them.
template <typename scalar_t>
void backward_tiles(const Rows& rows, const RowData<scalar_t>& data, const Pixels<scalar_t>& px, const scalar_t* t_final,
                    const int32_t* last_in, const scalar_t* g_color, const scalar_t* g_t, const int64_t* grouped,
                    int64_t width, bool absgrad, scalar_t* per_isect) {
    const int64_t n_pixels = px.size(), channels = rows.channels;
    for_each_tile(data.count, rows.n_tiles, [&](int64_t tile) {
        const int32_t* last = last_in + tile * n_pixels;
        const scalar_t* gc_tile = g_color + tile * n_pixels * channels;
        const scalar_t* gt_tile = g_t + tile * n_pixels;
        const int64_t first_isect = data.offset[tile], n_isects = data.count[tile];
        // This tile's overlaps' slots start empty (see forward_tiles); those it skips stay 0.
        for (int64_t k = 0; k < n_isects; ++k) {
            scalar_t* slot = per_isect + grouped[first_isect + k] * width;
            std::fill(slot, slot + width, scalar_t(0));
        }
        scalar_t cx, cy, c[6];
        tile_centre(rows, tile, &cx, &cy);
        std::vector<scalar_t> t_pix(t_final + tile * n_pixels, t_final + (tile + 1) * n_pixels);
        std::vector<scalar_t> later(n_pixels, scalar_t(0));   // sum over later overlaps of w_j dL/dw_j
        std::vector<scalar_t> x(n_pixels);
        const int64_t used = *std::max_element(last, last + n_pixels);
        for (int64_t k = used - 1; k >= 0; --k) {
            const int64_t isect = first_isect + k, row = data.ids[isect];
            data.coefficients(row, cx, cy, c);
            if (!log_alphas(c, px, x.data())) continue;
            const scalar_t* rgb = data.rgb + row * channels;
            double g[6] = {0, 0, 0, 0, 0, 0}, abs_x = 0, abs_y = 0;
            scalar_t* slot = per_isect + grouped[isect] * width;
            scalar_t* g_rgb = slot + 6;
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
                    g_rgb[d] += weight * gc_tile[p * channels + d];
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
                if (absgrad) {
                    // d log(alpha) / d mean = (coef_u + 2 coef_uu u + coef_uv v, coef_v + 2 coef_vv v + coef_uv u)
                    abs_x += std::fabs(g_log_alpha * (c[3] + scalar_t(2) * c[0] * px.u[p] + c[2] * px.v[p]));
                    abs_y += std::fabs(g_log_alpha * (c[4] + scalar_t(2) * c[1] * px.v[p] + c[2] * px.u[p]));
                }
            }
            double row_grads[6];
            data.row_gradients(row, cx, cy, g, row_grads);
            for (int i = 0; i < 6; ++i) slot[i] = static_cast<scalar_t>(row_grads[i]);
            if (absgrad) {
                slot[6 + channels] = static_cast<scalar_t>(abs_x);
                slot[7 + channels] = static_cast<scalar_t>(abs_y);
            }
        }
    });
}

// Each row's gradients: the sum of its overlaps' slots, which are contiguous in the row-grouped order, added in that
// order by the one thread that owns the row (deterministic at any thread count, unlike a scatter-add).
template <typename scalar_t>
void reduce_rows(const scalar_t* per_isect, int64_t width, int64_t n_isects, const int64_t* group_rows,
                 const int64_t* group_starts, int64_t n_groups, int64_t channels, bool absgrad, scalar_t* g_means2d,
                 scalar_t* g_conics, scalar_t* g_opacities, scalar_t* g_colors, scalar_t* g_abs) {
    at::parallel_for(0, n_groups, 1024, [&](int64_t first, int64_t last) {
        std::vector<double> sum(width);
        for (int64_t group = first; group < last; ++group) {
            std::fill(sum.begin(), sum.end(), 0.0);
            const int64_t end = group + 1 < n_groups ? group_starts[group + 1] : n_isects;
            for (int64_t j = group_starts[group]; j < end; ++j) {
                for (int64_t i = 0; i < width; ++i) sum[i] += per_isect[j * width + i];
            }
            const int64_t row = group_rows[group];
            g_means2d[row * 2] = static_cast<scalar_t>(sum[0]);
            g_means2d[row * 2 + 1] = static_cast<scalar_t>(sum[1]);
            for (int i = 0; i < 3; ++i) g_conics[row * 3 + i] = static_cast<scalar_t>(sum[2 + i]);
            g_opacities[row] = static_cast<scalar_t>(sum[5]);
            for (int64_t d = 0; d < channels; ++d) g_colors[row * channels + d] = static_cast<scalar_t>(sum[6 + d]);
            if (absgrad) {
                g_abs[row * 2] = static_cast<scalar_t>(sum[6 + channels]);
                g_abs[row * 2 + 1] = static_cast<scalar_t>(sum[7 + channels]);
            }
        }
    });
}

}  // namespace

// -> (colors [T, P, D], transmittance [T, P], each pixel's last contributing slot + 1 [T, P] int32) for every
// tile's P = tile_size^2 pixels, no background. Rows: means2d [R, 2], conics [R, 3], opacities [R], colors [R, D];
// flatten_ids [M] the row of each overlap, tile by tile (offsets, counts [T]) on tile_height x tile_width grids.
std::vector<at::Tensor> composite_forward(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                             at::Tensor colors, at::Tensor flatten_ids, at::Tensor offsets,
                                             at::Tensor counts, int64_t tile_size, int64_t tile_width,
                                             int64_t tile_height) {
    const Rows rows = check_rows(means2d, conics, opacities, colors, flatten_ids, offsets, counts, tile_size,
                                 tile_width, tile_height);
    const int64_t n_pixels = tile_size * tile_size;
    auto out_color = at::empty({rows.n_tiles, n_pixels, rows.channels}, means2d.options());
    auto out_t = at::empty({rows.n_tiles, n_pixels}, means2d.options());
    auto out_last = at::empty({rows.n_tiles, n_pixels}, means2d.options().dtype(at::kInt));
    AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "composite_forward", [&] {
        forward_tiles<scalar_t>(rows, Pixels<scalar_t>(tile_size), out_color.data_ptr<scalar_t>(),
                                out_t.data_ptr<scalar_t>(), out_last.data_ptr<int32_t>());
    });
    return {out_color, out_t, out_last};
}

// -> dL/d(means2d [R, 2], conics [R, 3], opacities [R], colors [R, D]) and the sum over pixels of |dL/dmean2d|
// [R, 2] (or an empty tensor), given the forward pass's transmittance and last contributors and the tile lists'
// row grouping: grouped_position [M] (each overlap's place when the overlaps are ordered row by row),
// group_rows [G] (the rows with overlaps, in that order) and group_starts [G] (where each row's run begins).
std::vector<at::Tensor> composite_backward(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                              at::Tensor colors, at::Tensor flatten_ids, at::Tensor offsets,
                                              at::Tensor counts, int64_t tile_size, int64_t tile_width,
                                              int64_t tile_height, at::Tensor t_final, at::Tensor last,
                                              at::Tensor grad_color, at::Tensor grad_t, bool absgrad,
                                              at::Tensor grouped_position, at::Tensor group_rows,
                                              at::Tensor group_starts) {
    const Rows rows = check_rows(means2d, conics, opacities, colors, flatten_ids, offsets, counts, tile_size,
                                 tile_width, tile_height);
    const int64_t n_pixels = tile_size * tile_size, channels = rows.channels, n_tiles = rows.n_tiles;
    grad_color = grad_color.contiguous().to(means2d.scalar_type());
    grad_t = grad_t.contiguous().to(means2d.scalar_type());
    TORCH_CHECK(grad_color.numel() == n_tiles * n_pixels * channels && grad_t.numel() == n_tiles * n_pixels,
                "gradient shapes do not match the tiles");
    TORCH_CHECK(t_final.is_contiguous() && t_final.scalar_type() == means2d.scalar_type() &&
                    t_final.numel() == n_tiles * n_pixels && last.is_contiguous() && last.scalar_type() == at::kInt &&
                    last.numel() == n_tiles * n_pixels, "t_final and last must be the forward pass's");
    for (const at::Tensor* tensor : {&grouped_position, &group_rows, &group_starts}) {
        TORCH_CHECK(tensor->scalar_type() == at::kLong && tensor->is_contiguous() && tensor->dim() == 1,
                    "the row grouping must be contiguous int64 vectors");
    }
    TORCH_CHECK(grouped_position.numel() == rows.n_isects && group_starts.numel() == group_rows.numel(),
                "the row grouping does not match the overlaps");
    check_range(grouped_position, rows.n_isects, "grouped_position");
    check_range(group_rows, rows.n_rows, "group_rows");
    check_range(group_starts, rows.n_isects + 1, "group_starts");
    TORCH_CHECK(group_starts.numel() < 2 || (group_starts.diff() >= 0).all().item<bool>(),
                "group_starts must not decrease");
    const int64_t width = 6 + channels + (absgrad ? 2 : 0);
    auto per_isect = at::empty({rows.n_isects, width}, means2d.options());
    auto g_means2d = at::zeros_like(means2d), g_conics = at::zeros_like(conics);
    auto g_opacities = at::zeros_like(opacities), g_colors = at::zeros_like(colors);
    auto g_abs = at::zeros({absgrad ? rows.n_rows : 0, 2}, means2d.options());
    AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "composite_backward", [&] {
        const RowData<scalar_t> data(rows);
        backward_tiles<scalar_t>(rows, data, Pixels<scalar_t>(tile_size), t_final.data_ptr<scalar_t>(),
                                 last.data_ptr<int32_t>(), grad_color.data_ptr<scalar_t>(), grad_t.data_ptr<scalar_t>(),
                                 grouped_position.data_ptr<int64_t>(), width, absgrad, per_isect.data_ptr<scalar_t>());
        reduce_rows<scalar_t>(per_isect.data_ptr<scalar_t>(), width, rows.n_isects, group_rows.data_ptr<int64_t>(),
                              group_starts.data_ptr<int64_t>(), group_rows.numel(), channels, absgrad,
                              g_means2d.data_ptr<scalar_t>(), g_conics.data_ptr<scalar_t>(),
                              g_opacities.data_ptr<scalar_t>(), g_colors.data_ptr<scalar_t>(),
                              absgrad ? g_abs.data_ptr<scalar_t>() : nullptr);
    });
    return {g_means2d, g_conics, g_opacities, g_colors, g_abs};
}
