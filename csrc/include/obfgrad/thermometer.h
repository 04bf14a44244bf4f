// Thermometer encoding (Buckman, Roy, Raffel & Goodfellow, "Thermometer Encoding: One Hot Way
// To Resist Adversarial Examples", ICLR 2018) and its BPDA backward (Athalye, Carlini & Wagner,
// "Obfuscated Gradients Give a False Sense of Security", ICML 2018, Section 5.1).
//
// Layout: input (N, C, H, W) -> output (N, C*L, H, W); output channel c*L + k is bit k of input
// channel c, so the L bits of one input channel are contiguous (as in the paper's repository,
// which stores [B, H, W, 3*16] with each channel's 16 bits together). One "plane" is H*W floats.
#pragma once

#include "obfgrad/common.h"

namespace obfgrad {
namespace thermometer {

// Bucket of x: floor(0.99999 * L * x), in 0..L-1 (the repository's discretize_uniform).
// `scale` is the float32 product 0.99999f * L, computed once by the caller so the CPU, the GPU
// and the torch reference all round the same single product. x is clamped to [0, 1] (the
// Python layer rejects anything else); x * scale >= 0, so truncation equals floor.
OBF_HD int bucket(float x, float scale) { return (int)(clampf(x, 0.0f, 1.0f) * scale); }

// Bit k of the encoding: 1 iff bucket >= k, so bit 0 is always 1.
OBF_HD float bit(int bucket_index, int k) { return bucket_index >= k ? 1.0f : 0.0f; }

// Soft thermometer (the paper's BPDA approximation): component k = clip(slope*x - k + 1, 0, 1)
// with slope = L * 255/256. For L = 16 this is the repository's clip((x255 - 16(k-1)) / 16, 0, 1)
// on the 0-255 scale. Its derivative is `slope` where the clip is inactive; the interval is
// closed, as in torch.clamp's backward, so the kernel equals autograd through the reference.
OBF_HD float soft_slope(int levels) { return (float)levels * (255.0f / 256.0f); }

OBF_HD float soft_derivative(float x, int k, float slope) {
  float t = slope * x - (float)k + 1.0f;
  return (t >= 0.0f && t <= 1.0f) ? slope : 0.0f;
}

// Forward for one input element: writes its L bits, `plane` floats apart.
OBF_HD void encode_element(float x, float scale, int levels, float* out, index_t plane) {
  int b = bucket(x, scale);
  for (int k = 0; k < levels; ++k) out[(index_t)k * plane] = bit(b, k);
}

// The same soft thermometer as Athalye et al.'s attack graph evaluates it
// (thermometer/robustml_attack.py), on the 0-255 scale: component k = clip((x255 - c_k) / w, 0, 1)
// with x255 = 255 x, w = 256 / L and c_k = w (k - 1), each step rounded to float32. In exact
// arithmetic this is the soft thermometer above; the rounding differs where a ramp starts or
// ends (x255 = 16 m for L = 16), and there it decides whether a component counts: on the
// 0-255 grid both ramps meeting at 16 m do (clip passes the gradient on ties).
OBF_HD float soft_255_ratio(float x255, int k, int levels) {
  const float width = (float)(256.0 / levels);
  const float start = (float)((256.0 / levels) * (k - 1));
  return (x255 - start) / width;
}

enum BackwardMode { SOFT = 0, STRAIGHT_THROUGH = 1, SOFT_255 = 2 };

// SOFT_255 backward for one element: d/dx of sum_k grad_k * component_k, i.e. 255 times the sum
// of grad_k / w over the components on their ramp (the chain rule in autograd's order: divide,
// sum over k, then scale by 255). Only k within one of floor(x255 / w) can be on a ramp.
OBF_HD float backward_element_255(float x, const float* grad_out, index_t plane, int levels) {
  const float x255 = clampf(x, 0.0f, 1.0f) * 255.0f;
  const float width = (float)(256.0 / levels);
  const int centre = (int)(x255 / width);
  const int first = centre > 0 ? centre - 1 : 0;
  const int last = centre + 2 < levels - 1 ? centre + 2 : levels - 1;
  float acc = 0.0f;
  for (int k = first; k <= last; ++k) {
    const float t = soft_255_ratio(x255, k, levels);
    if (t >= 0.0f && t <= 1.0f) acc += grad_out[(index_t)k * plane] / width;
  }
  return acc * 255.0f;
}

// BPDA backward for one input element: sum over its L bits of grad_out[k] * d(bit_k)/dx.
// SOFT: only k in {f, f+1, f+2} with f = floor(slope*x) can have slope*x - k + 1 in [0, 1]
// (every other k is at least 1 away), so only those planes are read; they are summed in
// ascending k, as the full sum would, then scaled once by the slope. STRAIGHT_THROUGH: d(bit_k)/dx = 1 for every k.
// SOFT_255: backward_element_255.
OBF_HD float backward_element(float x, const float* grad_out, index_t plane, int levels,
                              float slope, int mode) {
  if (mode == SOFT_255) return backward_element_255(x, grad_out, plane, levels);
  float acc = 0.0f;
  if (mode == STRAIGHT_THROUGH) {
    for (int k = 0; k < levels; ++k) acc += grad_out[(index_t)k * plane];
    return acc;
  }
  x = clampf(x, 0.0f, 1.0f);
  int first = (int)(slope * x);  // slope*x >= 0: truncation is floor
  int last = first + 2 < levels - 1 ? first + 2 : levels - 1;
  for (int k = first; k <= last; ++k) {
    if (soft_derivative(x, k, slope) != 0.0f) acc += grad_out[(index_t)k * plane];
  }
  // slope * (sum of the active planes' gradients): the order autograd uses, so the results
  // agree to the last bit.
  return acc * slope;
}

}  // namespace thermometer
}  // namespace obfgrad
