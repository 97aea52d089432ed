#pragma once

#include <cmath>
#include <vector>

#include <ATen/ATen.h>

namespace dabdetr {

// f_j = 2*pi / temperature^(2j / num_feats) for j < num_feats / 2 (docs/ops.md, op 2:
// feature k uses temperature^(2 floor(k/2) / n), so features 2j and 2j+1 share f_j). Computed in
// double and rounded once to the tensor dtype.
inline at::Tensor sine_frequencies(int64_t num_feats, double temperature, const at::TensorOptions& options) {
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "temperature must be positive, got ",
              temperature);
  std::vector<double> freq(num_feats / 2);
  for (int64_t j = 0; j < num_feats / 2; ++j)
    freq[j] = 2.0 * M_PI / std::pow(temperature, 2.0 * static_cast<double>(j) / static_cast<double>(num_feats));
  return at::tensor(freq, at::kDouble).to(options);
}

}  // namespace dabdetr
