// Every op schema of the extension, and the build information exposed to Python.
// Backends register their kernels in cpu/ops_cpu.cpp and cuda/ops_cuda.cpp.
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>
#include <torch/version.h>

#include "cpu/kernels.h"

TORCH_LIBRARY(dabdetr, m) {
  // Returns (out [B, H, Nq, Dv], lse [B, H, Nq]); lse is -inf for a query whose keys are all
  // padded. The scale is explicit here; the Python wrapper supplies the default.
  m.def(
      "modulated_attention(Tensor q_content, Tensor? q_pos, Tensor k_content, Tensor? k_pos, "
      "Tensor value, Tensor? key_padding_mask, float scale) -> (Tensor, Tensor)");
  // Returns the gradients of (q_content, q_pos, k_content, k_pos, value); the two positional
  // gradients are empty tensors when q_pos/k_pos are None.
  m.def(
      "modulated_attention_backward(Tensor grad_out, Tensor q_content, Tensor? q_pos, "
      "Tensor k_content, Tensor? k_pos, Tensor value, Tensor? key_padding_mask, Tensor out, "
      "Tensor lse, float scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("anchor_sine_embed(Tensor boxes, int num_feats, float temperature) -> Tensor");
  m.def(
      "modulated_anchor_sine_embed(Tensor boxes, Tensor? xy_scale, Tensor? ref_wh, int num_feats, "
      "float temperature) -> (Tensor, Tensor)");
  // Serves both embeddings: grad_modulated_xy is None for anchor_sine_embed. Returns the
  // gradients of (boxes, xy_scale, ref_wh), the last two empty when those inputs are None.
  m.def(
      "anchor_sine_embed_backward(Tensor? grad_embed, Tensor? grad_modulated_xy, Tensor embed, "
      "Tensor boxes, Tensor? xy_scale, Tensor? ref_wh, int num_feats, float temperature) "
      "-> (Tensor, Tensor, Tensor)");
}

namespace dabdetr::cpu {
std::vector<std::string> kernel_dtypes();  // cpu/ops_cpu.cpp, beside the check it lists
}

#ifdef DABDETR_WITH_CUDA
namespace dabdetr::cuda {
pybind11::dict cuda_build_info();  // cuda/ops_cuda.cpp
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", [] {
    pybind11::dict info;
    info["cpu"] = true;
    info["cpu_isa"] = dabdetr::cpu::isa_name(dabdetr::cpu::selected_isa());
    info["cpu_dtypes"] = dabdetr::cpu::kernel_dtypes();
    info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                            std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
#ifdef DABDETR_WITH_CUDA
    info["cuda"] = true;
    for (auto item : dabdetr::cuda::cuda_build_info()) info[item.first] = item.second;
#else
    info["cuda"] = false;
    info["cuda_archs"] = pybind11::list();
    info["cuda_version"] = pybind11::none();
    info["cuda_dtypes"] = pybind11::list();
#endif
    return info;
  });
}
