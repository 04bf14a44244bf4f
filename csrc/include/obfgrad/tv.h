// Masked total-variation minimisation (Guo, Rana, Cisse & van der Maaten, "Countering
// Adversarial Images using Input Transformations", ICLR 2018): keep each pixel with
// probability keep_prob, then reconstruct the image by anisotropic TV-regularised split
// Bregman (Goldstein & Osher, "The Split Bregman Method for L1-Regularized Problems", 2009)
// in which only the kept pixels carry the l2 data term.
//
// The per-pixel update is scikit-image's `_denoise_tv_bregman` (anisotropic branch) with the
// masked variant of Athalye et al.'s `inputtransformations/defense.py:bregman`: a dropped pixel
// uses the weight -> 0 limit of the update. Writing the fidelity weight of a pixel as
// w = mask ? weight : 0 gives one formula for both:
//     u <- (lam * S + w * f) / (w + 4 * lam),   lam = 2 * weight,
// where S gathers the four neighbours and the divergence of (d - b).
//
// Sweep order: red-black Gauss-Seidel. Pixels are coloured by the parity of (row + column);
// a pixel's update reads only its own state and its four neighbours', which have the other
// colour, so all pixels of one colour update in parallel. scikit-image sweeps in raster order;
// the fixed point (u with d = grad u, d = shrink(grad u + b)) does not depend on the order.
//
// Storage ("packed" layout, per image plane): the plane is extended by a ghost ring (extended
// rows R = 0..H+1, columns C = 0..W+1) and each extended row is split by colour
// k = (R + C) & 1 into two contiguous half rows of `half` floats: the pixel (R, C) of colour k
// lives at [(R * 2 + k) * half + j] with C = 2 j + o and o = (R + k) & 1. In this layout a
// pixel's up and down neighbours sit at the same j in the other colour's half rows of R -/+ 1,
// and its left/right neighbours at j + o - 1 / j + o of the other colour's half row of R, so a
// half-row update is a unit-stride loop the compiler vectorises.
//
// Boundary: the ghost ring of u holds fixed values; d and b are zero on the ring. Two rules:
//   * scikit-image 0.26's (checked bit for bit against it in the tests): the top ghost row
//     copies image row 1, the left ghost column image column 1 (reflection), the bottom ghost
//     row image row H-1 and the right ghost column image column W-1 (edge);
//   * `reflect_far` (Athalye et al.'s `inputtransformations/defense.py:bregman`): the same top
//     and left, but the bottom ghost row copies image row H-2 and the right ghost column image
//     column W-2, a reflection on all four sides.
// A reflection that would leave the image (H == 1 or W == 1) falls back to the edge.
#pragma once

#include "obfgrad/common.h"
#include "obfgrad/rng.h"

namespace obfgrad {

// Philox stream reserved for the TV pixel mask (other ops use other streams).
#define OBF_TV_MASK_STREAM 0x7476ull /* "tv" */

// ------------------------------------------------------------------ packed layout geometry

// Floats per half row: covers extended columns 0..W+1 of either colour.
OBF_HD index_t tv_half_width(index_t width) { return (width + 3) / 2; }

// Floats per packed plane: H + 2 extended rows, two half rows each.
OBF_HD index_t tv_plane_size(index_t height, index_t width) {
  return (height + 2) * 2 * tv_half_width(width);
}

// Column offset o of colour k in extended row R: the half row holds columns C = 2 j + o.
OBF_HD int tv_colour_offset(index_t row, int colour) { return (int)((row + colour) & 1); }

// Interior columns 1..W of a half row: j in [tv_row_begin, tv_row_end).
OBF_HD index_t tv_row_begin(int offset) { return 1 - offset; }
OBF_HD index_t tv_row_end(index_t width, int offset) { return (width - offset) / 2 + 1; }

OBF_HD index_t tv_half_row_index(index_t row, int colour, index_t half) {
  return (row * 2 + colour) * half;
}

// ------------------------------------------------------------------------ mask and ghosts

// Guo et al.'s pixel dropout: pixel `pixel_index` (= (n * H + y) * W + x, shared by the
// channels) is kept with probability keep_prob. keep_prob = 1 keeps every pixel (u < 1).
OBF_HD bool tv_keep_pixel(unsigned long long seed, index_t pixel_index, float keep_prob) {
  return philox_uniform(seed, OBF_TV_MASK_STREAM, (unsigned long long)pixel_index) < keep_prob;
}

// The image pixel (y, x) whose value initialises extended cell (R, C) of u, following the
// boundary rule above (`reflect_far`: Athalye et al.'s); returns false for the four corners,
// which are never read (zero).
OBF_HD bool tv_source_pixel(index_t row, index_t col, index_t height, index_t width,
                            bool reflect_far, index_t* y, index_t* x) {
  bool top = row == 0, bottom = row == height + 1, left = col == 0, right = col == width + 1;
  if ((top || bottom) && (left || right)) return false;
  const index_t far_row = (reflect_far && height > 1) ? height - 2 : height - 1;
  const index_t far_col = (reflect_far && width > 1) ? width - 2 : width - 1;
  *y = top ? (height > 1 ? 1 : 0) : (bottom ? far_row : row - 1);
  *x = left ? (width > 1 ? 1 : 0) : (right ? far_col : col - 1);
  return true;
}

// --------------------------------------------------------------------- split Bregman step

// The split-Bregman penalty lam = 2 * weight (scikit-image's convention) and the shrink
// threshold 1/lam, both in float32 so every driver derives them identically from `weight`.
OBF_HD float tv_lambda(float weight) { return 2.0f * weight; }
OBF_HD float tv_threshold(float weight) { return 1.0f / tv_lambda(weight); }

// Soft threshold: the d-subproblem of anisotropic split Bregman, shrink(s, 1/lam). Written as
// max(s - t, 0) + min(s + t, 0) (exactly equal for t > 0) so the loop has no branches and
// vectorises.
OBF_HD float tv_shrink(float s, float threshold) {
  float above = s - threshold, below = s + threshold;
  above = above > 0.0f ? above : 0.0f;
  below = below < 0.0f ? below : 0.0f;
  return above + below;
}

struct TvPixel {
  float u, dx, dy, bx, by;
};

// One fused Gauss-Seidel step at one pixel: the u update, then the d and b updates from the
// forward differences of the *previous* u at this pixel (scikit-image's order of operations).
//   here:   this pixel's u, dx, dy, bx, by (before the step)
//   left:   u, dx, bx of the left neighbour;  up: u, dy, by of the upper neighbour
//   right, down: u of the right and lower neighbours
//   f, fidelity: the input value and this pixel's weight (weight if kept, 0 if dropped)
OBF_HD TvPixel tv_pixel_step(TvPixel here, float u_left, float dx_left, float bx_left,
                             float u_up, float dy_up, float by_up, float u_right, float u_down,
                             float f, float fidelity, float lam, float inv_lam) {
  float ux = u_right - here.u;
  float uy = u_down - here.u;
  // Neighbours plus the divergence of (d - b), in scikit-image's order except that u_left
  // comes last: in the raster sweep it is the value just computed, so this keeps the serial
  // dependency from one pixel to the next down to one addition (rounding differs ~1e-7).
  float s = u_down + u_up + u_right + dx_left - here.dx + dy_up - here.dy - bx_left + here.bx -
            by_up + here.by + u_left;
  TvPixel next;
  next.u = (lam * s + fidelity * f) / (fidelity + 4.0f * lam);
  next.dx = tv_shrink(ux + here.bx, inv_lam);
  next.dy = tv_shrink(uy + here.by, inv_lam);
  next.bx = here.bx + (ux - next.dx);
  next.by = here.by + (uy - next.dy);
  return next;
}

// Updates the interior of one half row (colour k of extended row R) in place and writes each
// pixel's squared change of u to change2[j - begin]. Pointers point at the start of the half
// rows: `*_here` of colour k in row R, `*_side` of the other colour in row R, `*_up`/`u_down`
// of the other colour in rows R -/+ 1, `f`/`fidelity` of colour k in row R.
OBF_HD void tv_update_half_row(float* __restrict__ u_here, float* __restrict__ dx_here,
                               float* __restrict__ dy_here, float* __restrict__ bx_here,
                               float* __restrict__ by_here, const float* __restrict__ u_side,
                               const float* __restrict__ dx_side, const float* __restrict__ bx_side,
                               const float* __restrict__ u_up, const float* __restrict__ dy_up,
                               const float* __restrict__ by_up, const float* __restrict__ u_down,
                               const float* __restrict__ f, const float* __restrict__ fidelity,
                               float* __restrict__ change2, index_t begin, index_t end, int offset,
                               float lam, float inv_lam) {
  // Left neighbour of j is j + offset - 1 in the other colour, the right one j + offset.
  const index_t shift = offset - 1;
  for (index_t j = begin; j < end; ++j) {
    TvPixel here = {u_here[j], dx_here[j], dy_here[j], bx_here[j], by_here[j]};
    TvPixel next = tv_pixel_step(here, u_side[j + shift], dx_side[j + shift], bx_side[j + shift],
                                 u_up[j], dy_up[j], by_up[j], u_side[j + shift + 1], u_down[j],
                                 f[j], fidelity[j], lam, inv_lam);
    u_here[j] = next.u;
    dx_here[j] = next.dx;
    dy_here[j] = next.dy;
    bx_here[j] = next.bx;
    by_here[j] = next.by;
    float change = next.u - here.u;
    change2[j - begin] = change * change;
  }
}

// The same step addressed by (extended row, colour, j) inside one packed plane: what the GPU
// threads and the CPU's raster sweep call. `fidelity` is the image's (channel-shared) plane.
// Returns the squared change of u.
OBF_HD float tv_step_packed(float* u, float* dx, float* dy, float* bx, float* by, const float* f,
                            const float* fidelity, index_t row, int colour, index_t j,
                            index_t half, float lam, float inv_lam) {
  const int offset = tv_colour_offset(row, colour);
  const index_t here = tv_half_row_index(row, colour, half) + j;
  const index_t left = tv_half_row_index(row, 1 - colour, half) + j + offset - 1;
  const index_t up = tv_half_row_index(row - 1, 1 - colour, half) + j;
  const index_t down = tv_half_row_index(row + 1, 1 - colour, half) + j;
  TvPixel state = {u[here], dx[here], dy[here], bx[here], by[here]};
  TvPixel next = tv_pixel_step(state, u[left], dx[left], bx[left], u[up], dy[up], by[up],
                               u[left + 1], u[down], f[here], fidelity[here], lam, inv_lam);
  u[here] = next.u;
  dx[here] = next.dx;
  dy[here] = next.dy;
  bx[here] = next.bx;
  by[here] = next.by;
  const float change = next.u - state.u;
  return change * change;
}

// ------------------------------------------------------------------------- stopping rule

// Sum of `count` floats in 8 interleaved lanes combined pairwise: a fixed order (the CPU
// vectorises it without reassociation; the GPU reduction kernel repeats it exactly).
OBF_HD float tv_lane_sum(const float* values, index_t count) {
  float lane[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  index_t i = 0;
  for (; i + 8 <= count; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] += values[i + l];
  for (int l = 0; i + l < count; ++l) lane[l] += values[i + l];
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// The paper's stopping rule for one image: continue while rmse > tol, where rmse is the root
// mean square change of u over the image's H*W*C values in the last iteration. half_row_sums
// holds the squared-change sums of the image's half rows, [(c * (H + 2) + R) * 2 + k].
OBF_HD bool tv_should_continue(const float* half_row_sums, index_t channels, index_t height,
                               index_t width, float tol) {
  double total = 0.0;
  for (index_t c = 0; c < channels; ++c)
    for (index_t row = 1; row <= height; ++row)
      for (int k = 0; k < 2; ++k) total += (double)half_row_sums[(c * (height + 2) + row) * 2 + k];
  double rmse = sqrt(total / (double)(channels * height * width));
  return rmse > (double)tol;
}

}  // namespace obfgrad
