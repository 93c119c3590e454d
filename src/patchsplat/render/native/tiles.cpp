// Tile intersection on a CPU: which (camera, Gaussian) rows touch which tiles, front to back, as tile lists.
//
// The same contract and result as patchsplat/render/tiles.py (intersect_tiles, which stays the fallback and the
// reference; tests/test_render.py holds the two equal, element for element): each visible row covers the tiles
// [floor((x - rx) / s), ceil((x + rx) / s)) x (same in y), clipped to the grid; the overlaps are ordered by camera,
// tile (row-major), then depth, ties by row index; and the row-grouped order the native compositor's backward pass
// sums each row's gradients in.
//
// Why C++: in torch this is a depth sort, a stable sort of every overlap by tile key and a dozen gathers and
// expansions, all on one core, about a twentieth of a training step (bench/RESULTS.md, issue 15). Here the rows
// are radix-sorted by depth, and the overlaps placed by a counting sort over the tiles, the rows
// shared among torch's threads: each part counts its overlaps per tile, a prefix sum over (tile, part) gives every
// part its slots, and each part writes its own. The order is fully determined by the keys, so the result does not
// depend on the number of threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Sorts like the float it encodes (negative values first; -0 just before +0, never both visible here: depths are
// beyond the near plane), so integer comparisons order depths.
inline uint32_t depth_key(float depth) {
    uint32_t bits;
    std::memcpy(&bits, &depth, sizeof bits);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

inline uint64_t depth_key(double depth) {
    uint64_t bits;
    std::memcpy(&bits, &depth, sizeof bits);
    return (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
}

// Rows (given in increasing row order) sorted by key, ties in the given order: a least-significant-digit radix sort,
// one byte a pass, which is stable. Why not std::sort: the comparison sort of ~20k rows took milliseconds, most of
// the intersection's time; these passes take a tenth of that.
template <typename key_t>
void radix_sort_rows(std::vector<key_t>& keys, std::vector<int64_t>& rows) {
    const size_t n = keys.size();
    std::vector<key_t> keys_out(n);
    std::vector<int64_t> rows_out(n);
    for (size_t shift = 0; shift < 8 * sizeof(key_t); shift += 8) {
        size_t bucket_start[257] = {0};
        for (size_t i = 0; i < n; ++i) ++bucket_start[((keys[i] >> shift) & 0xFF) + 1];
        if (bucket_start[((keys[0] >> shift) & 0xFF) + 1] == n) continue;   // one digit value: order unchanged
        for (int digit = 0; digit < 256; ++digit) bucket_start[digit + 1] += bucket_start[digit];
        for (size_t i = 0; i < n; ++i) {
            const size_t slot = bucket_start[(keys[i] >> shift) & 0xFF]++;
            keys_out[slot] = keys[i];
            rows_out[slot] = rows[i];
        }
        keys.swap(keys_out);
        rows.swap(rows_out);
    }
}

// One row's tile rectangle [x0, x1) x [y0, y1) on its camera's grid (empty when culled).
struct Rect {
    int32_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
    int64_t count() const { return static_cast<int64_t>(x1 - x0) * (y1 - y0); }
};

// floor and ceil of value clipped to [0, limit] (= clipping floor(value) or ceil(value), limit being whole): on that
// range a truncation is the floor, and it avoids the library calls std::floor and std::ceil are without SSE4.1.
template <typename scalar_t>
inline int32_t clipped_floor(scalar_t value, int64_t limit) {
    const scalar_t clipped = std::min(std::max(value, scalar_t(0)), static_cast<scalar_t>(limit));
    return static_cast<int32_t>(clipped);
}

template <typename scalar_t>
inline int32_t clipped_ceil(scalar_t value, int64_t limit) {
    const scalar_t clipped = std::min(std::max(value, scalar_t(0)), static_cast<scalar_t>(limit));
    const int32_t truncated = static_cast<int32_t>(clipped);
    return truncated + (static_cast<scalar_t>(truncated) < clipped ? 1 : 0);
}

template <typename scalar_t>
Rect rect_of(const scalar_t* mean, const int32_t* radius, int64_t tile_size, int64_t tile_width, int64_t tile_height) {
    Rect rect;
    // A non-finite mean covers nothing (the torch version's integer conversion of NaN is undefined).
    if (radius[0] <= 0 || radius[1] <= 0 || !std::isfinite(mean[0]) || !std::isfinite(mean[1])) return rect;
    const scalar_t size = static_cast<scalar_t>(tile_size);
    const scalar_t rx = static_cast<scalar_t>(radius[0]), ry = static_cast<scalar_t>(radius[1]);
    rect.x0 = clipped_floor((mean[0] - rx) / size, tile_width);
    rect.x1 = clipped_ceil((mean[0] + rx) / size, tile_width);
    rect.y0 = clipped_floor((mean[1] - ry) / size, tile_height);
    rect.y1 = clipped_ceil((mean[1] + ry) / size, tile_height);
    return rect;
}

}  // namespace

// -> (tiles_per_gauss [C, N] int32, flatten_ids [M], tile_keys [M], tile_counts [T], isect_offsets [T],
//     grouped_position [M], group_rows [G], group_starts [G]), the fields of tiles.TileLists.
std::vector<at::Tensor> intersect_tiles(at::Tensor means2d, at::Tensor radii, at::Tensor depths, int64_t width,
                                        int64_t height, int64_t tile_size) {
    TORCH_CHECK(means2d.device().is_cpu() && (means2d.scalar_type() == at::kFloat || means2d.scalar_type() == at::kDouble),
                "the native tile intersection takes float32 or float64 CPU tensors");
    TORCH_CHECK(depths.dim() == 2 && means2d.dim() == 3 && means2d.size(0) == depths.size(0) &&
                    means2d.size(1) == depths.size(1) && means2d.size(2) == 2 && radii.sizes() == means2d.sizes() &&
                    radii.scalar_type() == at::kInt && depths.scalar_type() == means2d.scalar_type(),
                "means2d [C, N, 2], radii [C, N, 2] int32 and depths [C, N] must agree");
    TORCH_CHECK(tile_size > 0 && width > 0 && height > 0, "the image and its tiles must have a size");
    means2d = means2d.contiguous(), radii = radii.contiguous(), depths = depths.contiguous();
    const int64_t n_cameras = depths.size(0), n_gaussians = depths.size(1), n_rows = n_cameras * n_gaussians;
    const int64_t tile_width = (width + tile_size - 1) / tile_size, tile_height = (height + tile_size - 1) / tile_size;
    const int64_t tiles_per_camera = tile_width * tile_height, n_tiles = n_cameras * tiles_per_camera;
    auto long_options = means2d.options().dtype(at::kLong);
    auto tiles_per_gauss = at::empty({n_cameras, n_gaussians}, means2d.options().dtype(at::kInt));
    std::vector<at::Tensor> out;
    AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "intersect_tiles", [&] {
        const scalar_t* mean = means2d.data_ptr<scalar_t>();
        const scalar_t* depth = depths.data_ptr<scalar_t>();
        const int32_t* radius = radii.data_ptr<int32_t>();
        int32_t* per_row = tiles_per_gauss.data_ptr<int32_t>();
        std::vector<Rect> rects(n_rows);
        at::parallel_for(0, n_rows, 4096, [&](int64_t first, int64_t last) {
            for (int64_t row = first; row < last; ++row) {
                rects[row] = rect_of(mean + row * 2, radius + row * 2, tile_size, tile_width, tile_height);
                per_row[row] = static_cast<int32_t>(rects[row].count());
            }
        });
        // The rows with overlaps in (camera, depth, row) order: each camera's rows (contiguous, in row order)
        // sorted by depth, the cameras in parallel.
        auto group_rows = at::empty({n_rows}, long_options);
        int64_t* rows = group_rows.data_ptr<int64_t>();
        std::vector<int64_t> camera_groups(n_cameras + 1, 0);
        at::parallel_for(0, n_cameras, 1, [&](int64_t first, int64_t last) {
            for (int64_t camera = first; camera < last; ++camera) {
                std::vector<decltype(depth_key(scalar_t(0)))> keys;
                std::vector<int64_t> sorted;
                for (int64_t row = camera * n_gaussians; row < (camera + 1) * n_gaussians; ++row) {
                    if (per_row[row] == 0) continue;
                    keys.push_back(depth_key(depth[row]));
                    sorted.push_back(row);
                }
                if (!sorted.empty()) radix_sort_rows(keys, sorted);
                std::copy(sorted.begin(), sorted.end(), rows + camera * n_gaussians);
                camera_groups[camera + 1] = static_cast<int64_t>(sorted.size());
            }
        });
        int64_t n_groups = 0;
        for (int64_t camera = 0; camera < n_cameras; ++camera) {
            // Each camera's rows were written at its own block; move them together (memmove: blocks only shift left).
            std::memmove(rows + n_groups, rows + camera * n_gaussians, camera_groups[camera + 1] * sizeof(int64_t));
            n_groups += camera_groups[camera + 1];
        }
        group_rows = group_rows.narrow(0, 0, n_groups).clone();
        rows = group_rows.data_ptr<int64_t>();
        auto group_starts = at::empty({n_groups}, long_options);
        int64_t* starts = group_starts.data_ptr<int64_t>();
        int64_t n_isects = 0;
        for (int64_t group = 0; group < n_groups; ++group) {
            starts[group] = n_isects;
            n_isects += per_row[rows[group]];
        }
        // Parts of about equal overlap counts; each counts its overlaps per tile, then writes them.
        const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_isects / 8192));
        std::vector<int64_t> part_start(parts + 1, n_groups);
        for (int64_t part = 0; part < parts; ++part)
            part_start[part] = std::lower_bound(starts, starts + n_groups, n_isects * part / parts) - starts;
        std::vector<int64_t> slots(parts * n_tiles, 0);
        const auto for_each_overlap = [&](int64_t part, auto body) {
            for (int64_t group = part_start[part]; group < part_start[part + 1]; ++group) {
                const int64_t row = rows[group], camera_first = (row / n_gaussians) * tiles_per_camera;
                const Rect& rect = rects[row];
                int64_t local = 0;
                for (int64_t y = rect.y0; y < rect.y1; ++y)
                    for (int64_t x = rect.x0; x < rect.x1; ++x) body(group, row, camera_first + y * tile_width + x, local++);
            }
        };
        at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
            for (int64_t part = first; part < last; ++part)
                for_each_overlap(part, [&](int64_t, int64_t, int64_t key, int64_t) { ++slots[part * n_tiles + key]; });
        });
        auto tile_counts = at::empty({n_tiles}, long_options), offsets = at::empty({n_tiles}, long_options);
        int64_t* count = tile_counts.data_ptr<int64_t>();
        int64_t* offset = offsets.data_ptr<int64_t>();
        int64_t next = 0;
        for (int64_t tile = 0; tile < n_tiles; ++tile) {
            offset[tile] = next;
            for (int64_t part = 0; part < parts; ++part) {
                const int64_t here = slots[part * n_tiles + tile];
                slots[part * n_tiles + tile] = next;
                next += here;
            }
            count[tile] = next - offset[tile];
        }
        auto flatten_ids = at::empty({n_isects}, long_options), tile_keys = at::empty({n_isects}, long_options);
        auto grouped_position = at::empty({n_isects}, long_options);
        int64_t* ids = flatten_ids.data_ptr<int64_t>();
        int64_t* keys = tile_keys.data_ptr<int64_t>();
        int64_t* grouped = grouped_position.data_ptr<int64_t>();
        at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
            for (int64_t part = first; part < last; ++part)
                for_each_overlap(part, [&](int64_t group, int64_t row, int64_t key, int64_t local) {
                    const int64_t slot = slots[part * n_tiles + key]++;
                    ids[slot] = row;
                    keys[slot] = key;
                    grouped[slot] = starts[group] + local;
                });
        });
        out = {tiles_per_gauss, flatten_ids, tile_keys, tile_counts, offsets, grouped_position, group_rows, group_starts};
    });
    return out;
}
