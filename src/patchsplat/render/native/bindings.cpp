// The Python module of patchsplat's native CPU kernels: compositing (composite.cpp), projection and SH colours
// (project.cpp), each a forward and backward pair behind one torch.autograd.Function on the Python side, and the
// covariances MCMC's noise injection reads (project.cpp, no gradient).

#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> composite_forward(torch::Tensor coefs, torch::Tensor colors, torch::Tensor offsets,
                                             torch::Tensor counts, int64_t tile_size);
std::vector<torch::Tensor> composite_backward(torch::Tensor coefs, torch::Tensor colors, torch::Tensor offsets,
                                              torch::Tensor counts, int64_t tile_size, torch::Tensor t_final,
                                              torch::Tensor last, torch::Tensor grad_color, torch::Tensor grad_t,
                                              bool absgrad);
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
torch::Tensor covariances(torch::Tensor quats, torch::Tensor scales, bool inverse);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("composite_forward", &composite_forward, "composite depth-sorted tile lists (forward)");
    m.def("composite_backward", &composite_backward, "composite depth-sorted tile lists (backward)");
    m.def("project_forward", &project_forward, "project, cull and bound Gaussians (forward)");
    m.def("project_backward", &project_backward, "project, cull and bound Gaussians (backward)");
    m.def("sh_forward", &sh_forward, "view-dependent colours from SH coefficients (forward)");
    m.def("sh_backward", &sh_backward, "view-dependent colours from SH coefficients (backward)");
    m.def("covariances", &covariances, "covariance (or precision) matrices of quaternions and scales, no gradient");
}
