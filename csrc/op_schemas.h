// Every op schema of the extension, in one place: defined for the dabdetr library by bindings.cpp
// and for the CUDA emulator's dabdetr_emulated library (csrc/cuda_emulator/register.cpp), whose
// ops are the same with the emulated CUDA kernels behind them.
#pragma once

#include <torch/library.h>

namespace dabdetr {

inline void define_ops(torch::Library& m) {
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
  // Multi-scale deformable attention: value [B, S, H, D], spatial_shapes [L, 2] (H_l, W_l) and
  // level_start_index [L] (None: computed), integers on the CPU or value's device,
  // sampling_locations [B, Nq, H, L, P, 2], attention_weights [B, Nq, H, L, P]. Returns [B, Nq, H * D].
  m.def(
      "multi_scale_deformable_attention(Tensor value, Tensor spatial_shapes, Tensor? level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  // Returns the gradients of (value, sampling_locations, attention_weights).
  m.def(
      "multi_scale_deformable_attention_backward(Tensor grad_out, Tensor value, Tensor spatial_shapes, "
      "Tensor? level_start_index, Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
}

}  // namespace dabdetr
