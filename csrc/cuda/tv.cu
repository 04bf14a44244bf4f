// CUDA driver of the masked TV minimisation: thin extern "C" wrappers over the kernel body in
// obfgrad/tv.h (the CPU driver runs the same functions). obfgrad/ops/tv.py runs the host loop:
//   tv_pack_kernel once; per iteration either two tv_red_black_kernel launches (one per
//   colour) or H + W - 1 tv_raster_diagonal_kernel launches (anti-diagonals reproduce the
//   raster order exactly); then tv_half_row_sums_kernel and tv_stopping_kernel (the per-image
//   stopping rule, same sums in the same order as the CPU); finally tv_unpack_kernel.
// Every kernel gets `total` first and runs one thread per element.
#include "obfgrad/tv.h"

using obfgrad::index_t;

__device__ __forceinline__ index_t thread_index() {
  return (index_t)blockIdx.x * (index_t)blockDim.x + (index_t)threadIdx.x;
}

// One thread per extended cell (n, c, R, C): u (with the ghost ring; `reflect_far` selects
// Athalye et al.'s border) and f in the packed layout; channel 0 also writes the image's
// fidelity weight from the keep mask: the caller's N x H x W `mask` when `has_mask`, else the
// Philox mask of `seed`.
extern "C" __global__ void tv_pack_kernel(long long total, const float* x, float* u, float* f,
                                          float* fidelity, const unsigned char* mask,
                                          long long batch, long long channels, long long height,
                                          long long width, float keep_prob, float weight,
                                          long long seed, int reflect_far, int has_mask) {
  const index_t i = thread_index();
  if (i >= total) return;
  const index_t col = i % (width + 2);
  const index_t row = (i / (width + 2)) % (height + 2);
  const index_t c = (i / ((width + 2) * (height + 2))) % channels;
  const index_t n = i / ((width + 2) * (height + 2) * channels);
  const index_t half = obfgrad::tv_half_width(width), plane = obfgrad::tv_plane_size(height, width);
  const int colour = (int)((row + col) & 1);
  const index_t at = obfgrad::tv_half_row_index(row, colour, half) +
                     (col - obfgrad::tv_colour_offset(row, colour)) / 2;
  index_t y, xx;
  if (!obfgrad::tv_source_pixel(row, col, height, width, reflect_far != 0, &y, &xx)) return;
  const float value = x[((n * channels + c) * height + y) * width + xx];
  const index_t base = (n * channels + c) * plane;
  u[base + at] = value;
  const bool interior = row >= 1 && row <= height && col >= 1 && col <= width;
  if (!interior) return;
  f[base + at] = value;
  if (c == 0) {
    const index_t pixel = (n * height + y) * width + xx;
    const bool keep = has_mask ? mask[pixel] != 0
                               : obfgrad::tv_keep_pixel((unsigned long long)seed, pixel, keep_prob);
    fidelity[n * plane + at] = keep ? weight : 0.0f;
  }
}

// One thread per packed element (n, c, R, j) of one colour: a red or black half sweep.
extern "C" __global__ void tv_red_black_kernel(long long total, float* u, float* dx, float* dy,
                                               float* bx, float* by, const float* f,
                                               const float* fidelity, float* change2,
                                               const int* active, long long batch,
                                               long long channels, long long height,
                                               long long width, long long colour, float weight) {
  const index_t i = thread_index();
  if (i >= total) return;
  const index_t half = obfgrad::tv_half_width(width), plane = obfgrad::tv_plane_size(height, width);
  const index_t j = i % half;
  const index_t row = (i / half) % height + 1;
  const index_t c = (i / (half * height)) % channels;
  const index_t n = i / (half * height * channels);
  if (!active[n]) return;
  const int offset = obfgrad::tv_colour_offset(row, (int)colour);
  if (j < obfgrad::tv_row_begin(offset) || j >= obfgrad::tv_row_end(width, offset)) return;
  const index_t base = (n * channels + c) * plane;
  change2[base + obfgrad::tv_half_row_index(row, (int)colour, half) + j] = obfgrad::tv_step_packed(
      u + base, dx + base, dy + base, bx + base, by + base, f + base, fidelity + n * plane, row,
      (int)colour, j, half, obfgrad::tv_lambda(weight), obfgrad::tv_threshold(weight));
}

// One thread per (n, c, R): the pixel of row R on anti-diagonal R + C = `diagonal`. Launching
// the diagonals in increasing order is exactly the raster Gauss-Seidel sweep.
extern "C" __global__ void tv_raster_diagonal_kernel(long long total, float* u, float* dx, float* dy,
                                                     float* bx, float* by, const float* f,
                                                     const float* fidelity, float* change2,
                                                     const int* active, long long batch,
                                                     long long channels, long long height,
                                                     long long width, long long diagonal,
                                                     float weight) {
  const index_t i = thread_index();
  if (i >= total) return;
  const index_t row = i % height + 1;
  const index_t c = (i / height) % channels;
  const index_t n = i / (height * channels);
  const index_t col = diagonal - row;
  if (!active[n] || col < 1 || col > width) return;
  const index_t half = obfgrad::tv_half_width(width), plane = obfgrad::tv_plane_size(height, width);
  const int colour = (int)((row + col) & 1);
  const index_t j = (col - obfgrad::tv_colour_offset(row, colour)) / 2;
  const index_t base = (n * channels + c) * plane;
  change2[base + obfgrad::tv_half_row_index(row, colour, half) + j] = obfgrad::tv_step_packed(
      u + base, dx + base, dy + base, bx + base, by + base, f + base, fidelity + n * plane, row,
      colour, j, half, obfgrad::tv_lambda(weight), obfgrad::tv_threshold(weight));
}

// One thread per half row (n, c, R, k): the squared-change sum, in the CPU's lane order.
extern "C" __global__ void tv_half_row_sums_kernel(long long total, const float* change2,
                                                   float* half_row_sums, const int* active,
                                                   long long batch, long long channels,
                                                   long long height, long long width) {
  const index_t i = thread_index();
  if (i >= total) return;
  const int colour = (int)(i % 2);
  const index_t row = (i / 2) % height + 1;
  const index_t c = (i / (2 * height)) % channels;
  const index_t n = i / (2 * height * channels);
  if (!active[n]) return;
  const index_t half = obfgrad::tv_half_width(width), plane = obfgrad::tv_plane_size(height, width);
  const int offset = obfgrad::tv_colour_offset(row, colour);
  const index_t begin = obfgrad::tv_row_begin(offset), end = obfgrad::tv_row_end(width, offset);
  const index_t start = (n * channels + c) * plane + obfgrad::tv_half_row_index(row, colour, half) + begin;
  half_row_sums[((n * channels + c) * (height + 2) + row) * 2 + colour] =
      obfgrad::tv_lane_sum(change2 + start, end - begin);
}

// One thread per image: record the iteration and apply the stopping rule.
extern "C" __global__ void tv_stopping_kernel(long long total, const float* half_row_sums, int* active,
                                              int* iterations, long long batch, long long channels,
                                              long long height, long long width, float tol,
                                              long long iteration, long long max_iter) {
  const index_t n = thread_index();
  if (n >= total || !active[n]) return;
  iterations[n] = (int)iteration;
  const float* sums = half_row_sums + n * channels * (height + 2) * 2;
  active[n] = (iteration < max_iter &&
               obfgrad::tv_should_continue(sums, channels, height, width, tol)) ? 1 : 0;
}

// One thread per output value: u's interior back to NCHW.
extern "C" __global__ void tv_unpack_kernel(long long total, const float* u, float* out, long long batch,
                                            long long channels, long long height, long long width) {
  const index_t i = thread_index();
  if (i >= total) return;
  const index_t col = i % width + 1;
  const index_t row = (i / width) % height + 1;
  const index_t plane_index = i / (width * height);  // n * channels + c
  const index_t half = obfgrad::tv_half_width(width), plane = obfgrad::tv_plane_size(height, width);
  const int colour = (int)((row + col) & 1);
  const index_t at = obfgrad::tv_half_row_index(row, colour, half) +
                     (col - obfgrad::tv_colour_offset(row, colour)) / 2;
  out[i] = u[plane_index * plane + at];
}

// One thread per pixel: the keep mask (1 = kept) of tv_mask().
extern "C" __global__ void tv_mask_kernel(long long total, unsigned char* mask, float keep_prob,
                                          long long seed) {
  const index_t i = thread_index();
  if (i >= total) return;
  mask[i] = obfgrad::tv_keep_pixel((unsigned long long)seed, i, keep_prob) ? 1 : 0;
}
