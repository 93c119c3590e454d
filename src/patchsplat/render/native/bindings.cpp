// The Python module of patchsplat's native CPU kernels: compositing (composite.cpp), projection and SH colours
// (project.cpp), the training loss's L1 and SSIM (image_loss.cpp), each a forward and backward pair behind one
// torch.autograd.Function on the Python side; and, with no gradient, the tile lists (tiles.cpp) and MCMC's noise on
// the positions (project.cpp).

#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> composite_forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                             torch::Tensor colors, torch::Tensor flatten_ids, torch::Tensor offsets,
                                             torch::Tensor counts, int64_t tile_size, int64_t tile_width,
                                             int64_t tile_height);
std::vector<torch::Tensor> composite_backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opacities,
                                              torch::Tensor colors, torch::Tensor flatten_ids, torch::Tensor offsets,
                                              torch::Tensor counts, int64_t tile_size, int64_t tile_width,
                                              int64_t tile_height, torch::Tensor t_final, torch::Tensor last,
                                              torch::Tensor grad_color, torch::Tensor grad_t, bool absgrad,
                                              torch::Tensor grouped_position, torch::Tensor group_rows,
                                              torch::Tensor group_starts);
std::vector<torch::Tensor> project_forward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                           torch::Tensor opacities, torch::Tensor viewmats, torch::Tensor Ks,
                                           int64_t width, int64_t height, double eps2d, double near_plane,
                                           double far_plane);
std::vector<torch::Tensor> project_backward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                            torch::Tensor opacities, torch::Tensor viewmats, torch::Tensor Ks,
                                            int64_t width, int64_t height, double eps2d, double near_plane,
                                            double far_plane, torch::Tensor radii, torch::Tensor v_means2d,
                                            torch::Tensor v_depths, torch::Tensor v_conics);
torch::Tensor sh_forward(int64_t degree, torch::Tensor means, torch::Tensor sh0, torch::Tensor rest,
                         torch::Tensor centres);
std::vector<torch::Tensor> sh_backward(int64_t degree, torch::Tensor means, torch::Tensor sh0, torch::Tensor rest,
                                       torch::Tensor centres, torch::Tensor v_colours);
void inject_position_noise(torch::Tensor means, torch::Tensor quats, torch::Tensor log_scales,
                           torch::Tensor opacity_logits, torch::Tensor normal, double scaler);
std::vector<torch::Tensor> image_loss_forward(torch::Tensor x, torch::Tensor y, torch::Tensor window, double c1,
                                              double c2);
torch::Tensor image_loss_backward(torch::Tensor x, torch::Tensor y, torch::Tensor window, double c1, double c2,
                                  torch::Tensor maps, torch::Tensor grad_l1, torch::Tensor grad_ssim);
std::vector<torch::Tensor> intersect_tiles(torch::Tensor means2d, torch::Tensor radii, torch::Tensor depths,
                                           int64_t width, int64_t height, int64_t tile_size);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    // The kernels touch no Python object: they let go of the GIL while they run, so that another Python thread
    // (the training loop's checkpoint writer) is not held up for the length of a compositing pass.
    const auto without_gil = py::call_guard<py::gil_scoped_release>();
    m.def("composite_forward", &composite_forward, "composite depth-sorted tile lists (forward)", without_gil);
    m.def("composite_backward", &composite_backward, "composite depth-sorted tile lists (backward)", without_gil);
    m.def("project_forward", &project_forward, "project, cull and bound Gaussians (forward)", without_gil);
    m.def("project_backward", &project_backward, "project, cull and bound Gaussians (backward)", without_gil);
    m.def("sh_forward", &sh_forward, "view-dependent colours from SH coefficients (forward)", without_gil);
    m.def("sh_backward", &sh_backward, "view-dependent colours from SH coefficients (backward)", without_gil);
    m.def("image_loss_forward", &image_loss_forward, "L1 and SSIM per image (forward)", without_gil);
    m.def("image_loss_backward", &image_loss_backward, "L1 and SSIM per image (backward, w.r.t. the prediction)", without_gil);
    m.def("intersect_tiles", &intersect_tiles, "depth-sorted tile lists of projected Gaussians (no gradient)", without_gil);
    m.def("inject_position_noise", &inject_position_noise, "MCMC's noise on the positions, in place, no gradient", without_gil);
}
