// Shared by every kernel body: compiled by the host C++ compiler for the CPU drivers
// and by NVRTC/nvcc for the CUDA drivers. Keep it free of the standard library under
// NVRTC (no system headers there).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define OBF_HD __host__ __device__ __forceinline__
#define OBF_ON_DEVICE 1
#else
#define OBF_HD inline
#define OBF_ON_DEVICE 0
#include <cmath>
#endif

namespace obfgrad {

// Index type for element offsets: 64-bit so batches larger than 2^31 elements stay in bounds.
typedef long long index_t;

// NaN maps to `lo`, so a stray NaN can never become an out-of-range index after a cast.
OBF_HD float clampf(float v, float lo, float hi) { return !(v >= lo) ? lo : (v > hi ? hi : v); }

OBF_HD float floorf_(float v) {
#if OBF_ON_DEVICE
  return floorf(v);
#else
  return std::floor(v);
#endif
}

}  // namespace obfgrad
