// CUDA driver of the thermometer encoding: one thread per input element, same body as the CPU
// driver (obfgrad/thermometer.h). Integer arguments are 64-bit (obfgrad._native.launch_cuda).
#include "obfgrad/thermometer.h"

using obfgrad::index_t;
namespace th = obfgrad::thermometer;

extern "C" __global__ void thermometer_forward(const float* x, float* out, long long total,
                                               long long plane, long long levels, float scale) {
  index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  index_t p = i / plane, offset = i % plane;
  th::encode_element(x[i], scale, (int)levels, out + p * plane * levels + offset, plane);
}

extern "C" __global__ void thermometer_backward(const float* x, const float* grad_out, float* grad_in,
                                                long long total, long long plane, long long levels,
                                                float slope, long long mode) {
  index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  index_t p = i / plane, offset = i % plane;
  grad_in[i] = th::backward_element(x[i], grad_out + p * plane * levels + offset, plane, (int)levels,
                                    slope, (int)mode);
}
