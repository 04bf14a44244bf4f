// CUDA driver of the JPEG round trip: the same body as the CPU driver (obfgrad/jpeg.h), one
// thread per sample, block or pixel. Integer arguments are 64-bit, tensors are device pointers
// (obfgrad._native.launch_cuda). Planes are uint8, padded to whole 8x8 blocks:
//   luma   (N, luma_h, luma_w);   chroma (N, 2, chroma_h, chroma_w) (absent for grayscale).
#include "obfgrad/jpeg.h"

using obfgrad::index_t;
namespace jp = obfgrad::jpeg;

// Pass 1a: luma samples (the gray value for C = 1) of the padded plane.
extern "C" __global__ void jpeg_encode_luma(const float* x, unsigned char* luma, long long n,
                                            long long channels, long long h, long long w,
                                            long long luma_h, long long luma_w) {
  const index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * luma_h * luma_w) return;
  const index_t image = i / (luma_h * luma_w), at = i % (luma_h * luma_w);
  const float* img = x + image * channels * h * w;
  luma[i] = (unsigned char)jp::component_at(img, channels, h, w, at / luma_w, at % luma_w, 0);
}

// Pass 1b: Cb and Cr samples of the padded planes (downsampled for 4:2:0).
extern "C" __global__ void jpeg_encode_chroma(const float* x, unsigned char* chroma, long long n,
                                              long long h, long long w, long long chroma_h,
                                              long long chroma_w, long long small_h, long long subsample) {
  const index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
  const index_t plane = chroma_h * chroma_w;
  if (i >= n * 2 * plane) return;
  const index_t image = i / (2 * plane), component = (i / plane) % 2 + 1, at = i % plane;
  const index_t row = at / chroma_w, col = at % chroma_w;
  const float* img = x + image * 3 * h * w;
  chroma[i] = (unsigned char)(subsample
                                  ? jp::subsampled_chroma_at(img, h, w, small_h, row, col, (int)component)
                                  : jp::component_at(img, 3, h, w, row, col, (int)component));
}

// Pass 2: one 8x8 block per thread, in place, over `planes` planes of rows x cols samples.
extern "C" __global__ void jpeg_roundtrip_blocks(unsigned char* planes_data, long long planes,
                                                 long long rows, long long cols, const int* table) {
  const index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
  const index_t blocks_per_row = cols / 8, blocks_per_plane = (rows / 8) * blocks_per_row;
  if (i >= planes * blocks_per_plane) return;
  const index_t plane = i / blocks_per_plane, block = i % blocks_per_plane;
  const index_t by = block / blocks_per_row, bx = block % blocks_per_row;
  jp::roundtrip_block(planes_data + plane * rows * cols + by * 8 * cols + bx * 8, cols, table);
}

// Pass 3: one output pixel per thread, all its channels.
extern "C" __global__ void jpeg_decode(const unsigned char* luma, const unsigned char* chroma, float* out,
                                       long long n, long long channels, long long h, long long w,
                                       long long luma_w, long long chroma_h, long long chroma_w,
                                       long long subsample) {
  const index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * h * w) return;
  const index_t image = i / (h * w), at = i % (h * w), y = at / w, x = at % w;
  const index_t luma_h = jp::round_up(h, 8);
  const int lum = luma[image * luma_h * luma_w + y * luma_w + x];
  float* dst = out + image * channels * h * w + at;
  if (channels == 1) {
    dst[0] = jp::from_sample(lum);
    return;
  }
  const unsigned char* cb_plane = chroma + image * 2 * chroma_h * chroma_w;
  const unsigned char* cr_plane = cb_plane + chroma_h * chroma_w;
  int cb, cr;
  if (subsample) {
    const index_t small_h = jp::ceil_div(h, 2), small_w = jp::ceil_div(w, 2);
    cb = jp::upsampled_chroma_at(cb_plane, chroma_w, small_h, small_w, y, x);
    cr = jp::upsampled_chroma_at(cr_plane, chroma_w, small_h, small_w, y, x);
  } else {
    cb = cb_plane[y * chroma_w + x];
    cr = cr_plane[y * chroma_w + x];
  }
  dst[0] = jp::from_sample(jp::ycc_to_r(lum, cr));
  dst[h * w] = jp::from_sample(jp::ycc_to_g(lum, cb, cr));
  dst[2 * h * w] = jp::from_sample(jp::ycc_to_b(lum, cb));
}

// Linear backward, step 1 (4:2:0 only): small (N, 2, small_h, small_w) chroma gradients.
extern "C" __global__ void jpeg_linear_upsample_transpose(const float* grad, float* small, long long n,
                                                          long long h, long long w, long long small_h,
                                                          long long small_w) {
  const index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
  const index_t plane = small_h * small_w;
  if (i >= n * 2 * plane) return;
  const index_t image = i / (2 * plane), component = (i / plane) % 2 + 1, at = i % plane;
  const jp::ChromaGradFromRGB fetch{grad + image * 3 * h * w, h, w, (int)component};
  small[i] = jp::upsample_transpose_at(fetch, small_h, small_w, at / small_w, at % small_w);
}

// Linear backward, step 2 (colour): one pixel per thread.
extern "C" __global__ void jpeg_linear_backward(const float* grad, const float* small, float* grad_in,
                                                long long n, long long h, long long w, long long small_h,
                                                long long small_w, long long subsample) {
  const index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * h * w) return;
  const index_t image = i / (h * w), at = i % (h * w);
  const float* cb = subsample ? small + image * 2 * small_h * small_w : nullptr;
  const float* cr = subsample ? cb + small_h * small_w : nullptr;
  jp::linear_backward_pixel(grad + image * 3 * h * w, cb, cr, small_w, h, w, at / w, at % w,
                            grad_in + image * 3 * h * w);
}
