// Image quilting (Guo, Rana, Cisse & van der Maaten, "Countering Adversarial Images using
// Input Transformations", ICLR 2018; Efros & Freeman, "Image Quilting for Texture Synthesis
// and Transfer", SIGGRAPH 2001): every 5x5 patch of the image (stride 3, overlap 2) is
// replaced by one of its K nearest neighbours in a database of natural-image patches, and
// neighbouring patches are stitched along minimum-error boundary cuts.
//
// This header holds the per-element bodies shared by the CPU driver (csrc/cpu/quilt.cpp)
// and the CUDA driver (csrc/cuda/quilt.cu):
//   * quilt_distance      the canonical squared l2 distance (fixed summation order, so the
//                         CPU and the GPU rank neighbours identically);
//   * quilt_topk_insert   a running top-K ordered by (distance, index): ties go to the
//                         smaller database index;
//   * quilt_pick          the uniform pick among the K neighbours (Philox, keyed by seed);
//   * quilt_min_cut       Efros & Freeman's minimum-error boundary cut (dynamic programming);
//   * quilt_place_patch_authors  Athalye et al.'s stitch (the paper profile's variant);
//   * quilt_assemble_image  raster-order stitching of one image.
#pragma once

#include "obfgrad/common.h"
#include "obfgrad/rng.h"

namespace obfgrad {

// Patch sizes the stitching supports: its scratch arrays live on the stack (GPU: registers
// or local memory), so they have a compile-time bound.
#define OBF_QUILT_MAX_PATCH 16

// ---------------------------------------------------------------------------- k-NN pieces

// One term of the canonical distance: lane += (a - b)^2, the square rounded before the sum
// (no fused multiply-add on either side).
OBF_HD void quilt_lane_add(float& lane, float a, float b) {
  float diff = a - b;
  lane += diff * diff;
}

// The fixed pairwise tree that combines the eight lanes of the canonical distance.
OBF_HD float quilt_lane_total(const float* lane) {
  return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
}

// Canonical squared distance between two vectors of length `dim`. Eight interleaved partial
// sums (element j goes to lane j mod 8), each accumulated in order, then a fixed pairwise
// tree: the order is part of the definition, so the host compiler may vectorise it and the
// GPU computes the same float bits (both built without fused multiply-add). The GPU's tiled
// search (csrc/cuda/quilt.cu) scores several rows at once with the same two helpers.
OBF_HD float quilt_distance(const float* a, const float* b, int dim) {
  float lane[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int j = 0;
  for (; j + 8 <= dim; j += 8) {
    for (int l = 0; l < 8; ++l) quilt_lane_add(lane[l], a[j + l], b[j + l]);
  }
  for (int l = 0; j + l < dim; ++l) quilt_lane_add(lane[l], a[j + l], b[j + l]);
  return quilt_lane_total(lane);
}

// (d1, i1) strictly before (d2, i2): smaller distance first, then smaller index.
OBF_HD bool quilt_before(float d1, long long i1, float d2, long long i2) {
  return d1 < d2 || (d1 == d2 && i1 < i2);
}

OBF_HD float quilt_infinity() {
#if defined(__CUDA_ARCH__)  // device code (NVRTC, or nvcc's device pass)
  return __int_as_float(0x7f800000);
#else
  return __builtin_huge_valf();
#endif
}

// Empty top-K list: +inf distances and an index no database entry has.
OBF_HD void quilt_topk_reset(float* top_dist, long long* top_index, int k) {
  for (int i = 0; i < k; ++i) {
    top_dist[i] = quilt_infinity();
    top_index[i] = 0x7fffffffffffffffLL;
  }
}

// Insert (dist, index) into the ascending list top[0..k); returns whether it entered.
OBF_HD bool quilt_topk_insert(float dist, long long index, float* top_dist, long long* top_index, int k) {
  if (!quilt_before(dist, index, top_dist[k - 1], top_index[k - 1])) return false;
  int pos = k - 1;
  while (pos > 0 && quilt_before(dist, index, top_dist[pos - 1], top_index[pos - 1])) {
    top_dist[pos] = top_dist[pos - 1];
    top_index[pos] = top_index[pos - 1];
    --pos;
  }
  top_dist[pos] = dist;
  top_index[pos] = index;
  return true;
}

// Which of the K neighbours patch `patch` of image `image` uses: uniform on {0..k-1}, a pure
// function of (seed, image, patch) -- stream = image, counter = patch.
OBF_HD int quilt_pick(unsigned long long seed, long long image, long long patch, int k) {
  float u = philox_uniform(seed, (unsigned long long)image, (unsigned long long)patch);
  int choice = (int)(u * (float)k);
  return choice < k - 1 ? choice : k - 1;
}

// ------------------------------------------------------------------------ boundary cuts

// Minimum-error boundary cut through an error strip err[length][width] (row-major): a path
// with one position per row, moving at most one column between consecutive rows, whose
// summed error is minimal (Efros & Freeman 2001, section 2.1). Dynamic programming from row 0
// downwards (cum[l][w] = err[l][w] + min of cum[l-1][w-1..w+1]), then a backtrace from the
// cheapest end. Ties go to the smaller column, so the cut is deterministic.
// `cum` is scratch of length*width floats; cut[l] receives the column of row l.
OBF_HD void quilt_min_cut(const float* err, int length, int width, float* cum, int* cut) {
  for (int w = 0; w < width; ++w) cum[w] = err[w];
  for (int l = 1; l < length; ++l) {
    for (int w = 0; w < width; ++w) {
      float best = cum[(l - 1) * width + w];
      if (w > 0 && cum[(l - 1) * width + w - 1] < best) best = cum[(l - 1) * width + w - 1];
      if (w + 1 < width && cum[(l - 1) * width + w + 1] < best) best = cum[(l - 1) * width + w + 1];
      cum[l * width + w] = err[l * width + w] + best;
    }
  }
  int pos = 0;
  for (int w = 1; w < width; ++w) {
    if (cum[(length - 1) * width + w] < cum[(length - 1) * width + pos]) pos = w;
  }
  cut[length - 1] = pos;
  for (int l = length - 2; l >= 0; --l) {
    int next = cut[l + 1];
    int best = next > 0 ? next - 1 : next;
    int last = next + 1 < width ? next + 1 : next;
    for (int w = best + 1; w <= last; ++w) {
      if (cum[l * width + w] < cum[l * width + best]) best = w;
    }
    cut[l] = best;
  }
}

// Squared colour difference between the patch and the image under it at patch pixel (y, x):
// the overlap error of the boundary cut, summed over channels in order.
OBF_HD float quilt_pixel_error(const float* image, int channels, int height, int width,
                               const float* patch, int size, int top, int left, int y, int x) {
  float sum = 0.f;
  for (int c = 0; c < channels; ++c) {
    float diff = patch[(c * size + y) * size + x] -
                 image[((index_t)c * height + top + y) * width + left + x];
    sum += diff * diff;
  }
  return sum;
}

// Stitch one patch (channels x size x size) into `image` at (top, left). The pixels already
// placed in the left overlap (columns [0, overlap), when has_left) and the top overlap (rows
// [0, overlap), when has_top) are kept on the image's side of the minimum-error cut:
//   left only  -> vertical cut, the patch covers x >= cut_v[y];
//   top only   -> horizontal cut, the patch covers y >= cut_h[x];
//   both       -> the corner is the intersection: the patch covers a pixel iff it lies on the
//                 patch side of both cuts (each cut runs the full length of the patch).
OBF_HD void quilt_place_patch(float* image, int channels, int height, int width, const float* patch,
                              int size, int overlap, int top, int left, bool has_top, bool has_left) {
  float err[OBF_QUILT_MAX_PATCH * OBF_QUILT_MAX_PATCH];
  float cum[OBF_QUILT_MAX_PATCH * OBF_QUILT_MAX_PATCH];
  int cut_v[OBF_QUILT_MAX_PATCH];
  int cut_h[OBF_QUILT_MAX_PATCH];
  if (has_left) {  // strip err[y][x], y along the patch, x across the overlap
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < overlap; ++x)
        err[y * overlap + x] = quilt_pixel_error(image, channels, height, width, patch, size, top, left, y, x);
    quilt_min_cut(err, size, overlap, cum, cut_v);
  }
  if (has_top) {  // transposed strip err[x][y], x along the patch, y across the overlap
    for (int x = 0; x < size; ++x)
      for (int y = 0; y < overlap; ++y)
        err[x * overlap + y] = quilt_pixel_error(image, channels, height, width, patch, size, top, left, y, x);
    quilt_min_cut(err, size, overlap, cum, cut_h);
  }
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      bool take = (!has_left || x >= cut_v[y]) && (!has_top || y >= cut_h[x]);
      if (!take) continue;
      for (int c = 0; c < channels; ++c)
        image[((index_t)c * height + top + y) * width + left + x] = patch[(c * size + y) * size + x];
    }
  }
}

// ------------------------------------------------------- Athalye et al.'s stitch (paper profile)
//
// `make_defend_quilt` in their inputtransformations/defense.py stitches differently from the
// textbook cut above; this reproduces its behaviour (bit for bit on their golden arrays,
// tests/test_authors_golden.py), for any patch size and overlap >= 2:
//   * Errors are float64 sums over the channels of squared differences, (0 + e_0) + e_1 + ...
//   * Their "minimum error table" T is not a cumulative path cost: an entry is its own error
//     plus the smallest raw error among its (up to three) neighbours one step along the seam.
//   * The seam is continued one step at a time to the cheapest admissible neighbour of
//     (same, -1, +1) across the strip, first on ties, where admissible means every coordinate
//     is strictly positive and inside the table: offset 0 is never re-entered.
//   * Each block's first row (column) of the seam starts at the cheapest table entry of the
//     strip's first row (column); an interior block starts both seams at the diagonal entry i
//     minimising T_top[i][i] + T_left[i][i] (first on ties).
//   * Interior blocks measure the top strip against canvas columns 0..P-1 and the left strip
//     against canvas rows 0..P-1 (the image's first block column/row, not the block's own
//     position): a quirk of their indexing, kept.
// With P = 5, overlap 2 the seams collapse to single decisions (their golden README lists them).

enum QuiltStitch { QUILT_MIN_CUT = 0, QUILT_AUTHORS = 1, QUILT_PASTE = 2 };

OBF_HD double quilt_pixel_error64(const float* image, int channels, int height, int width, const float* patch,
                                  int size, int image_row, int image_col, int y, int x) {
  double sum = 0.0;
  for (int c = 0; c < channels; ++c) {
    double diff = (double)patch[(c * size + y) * size + x] -
                  (double)image[((index_t)c * height + image_row) * width + image_col];
    sum += diff * diff;
  }
  return sum;
}

// T[a][b] of an error strip err[a][b] (along x across, `along` x `across`, row-major) whose seam
// runs along a: err[a][b] + min over b' in {b-1, b, b+1} of err[a+1][b'] (the last a: err).
OBF_HD double quilt_authors_table(const double* err, int along, int across, int a, int b) {
  const double* here = err + a * across;
  if (a + 1 >= along) return here[b];
  const double* next = here + across;
  double best = next[b];
  if (b > 0 && next[b - 1] < best) best = next[b - 1];
  if (b + 1 < across && next[b + 1] < best) best = next[b + 1];
  return here[b] + best;
}

// The seam's position at step a (> 0) coming from b: the cheapest admissible of b, b-1, b+1.
OBF_HD int quilt_authors_seam_step(const double* err, int along, int across, int a, int b) {
  int best = -1;
  double best_value = 0.0;
  const int candidates[3] = {b, b - 1, b + 1};
  for (int i = 0; i < 3; ++i) {
    const int c = candidates[i];
    if (c <= 0 || c >= across) continue;  // "index exists": strictly positive, inside
    const double value = quilt_authors_table(err, along, across, a, c);
    if (best < 0 || value < best_value) best = c, best_value = value;
  }
  return best >= 0 ? best : b;  // overlap >= 2: b or b + 1 is always admissible (b: memory-safe fallback)
}

// Marks take[y][x] for the pixels one seam covers: for each step a from `start` on (position b
// at a = start), the pixels across from b to `end` - 1. `vertical`: a is the tile row, b the
// column (take[a][b..end)); otherwise a is the column, b the row (take[b..end)[a]).
OBF_HD void quilt_authors_seam(const double* err, int along, int across, int start, int b, int end, int size,
                               bool vertical, bool* take) {
  for (int a = start; a < along; ++a) {
    if (a > start) b = quilt_authors_seam_step(err, along, across, a, b);
    for (int i = b; i < end; ++i) take[vertical ? a * size + i : i * size + a] = true;
  }
}

// Where a seam starts: the first b minimising the table's first step T[0][b].
OBF_HD int quilt_authors_seam_start(const double* err, int along, int across) {
  int best = 0;
  double best_value = quilt_authors_table(err, along, across, 0, 0);
  for (int b = 1; b < across; ++b) {
    const double value = quilt_authors_table(err, along, across, 0, b);
    if (value < best_value) best = b, best_value = value;
  }
  return best;
}

// Which tile pixels (take[y][x]) Athalye et al.'s stitch writes for a block, from its strips'
// errors: left_err[y][o] (size x overlap) and top_err[x][o] (the top strip transposed, so both
// strips are seam-position-major).
OBF_HD void quilt_authors_take(const double* left_err, const double* top_err, int size, int overlap,
                               bool has_top, bool has_left, bool* take) {
  for (int i = 0; i < size * size; ++i) take[i] = !has_top && !has_left;
  if (has_left && !has_top) {  // first block row: the left seam runs down the whole tile
    const int start = quilt_authors_seam_start(left_err, size, overlap);
    quilt_authors_seam(left_err, size, overlap, 0, start, size, size, true, take);
  } else if (has_top && !has_left) {  // first block column: the top seam runs across
    const int start = quilt_authors_seam_start(top_err, size, overlap);
    quilt_authors_seam(top_err, size, overlap, 0, start, size, size, false, take);
  } else if (has_top && has_left) {  // glue both seams on the diagonal
    int glue = 0;
    double glue_value = 0.0;
    for (int i = 0; i < overlap; ++i) {
      const double value = quilt_authors_table(top_err, size, overlap, i, i) +
                           quilt_authors_table(left_err, size, overlap, i, i);
      if (i == 0 || value < glue_value) glue = i, glue_value = value;
    }
    quilt_authors_seam(left_err, size, overlap, glue, glue, overlap, size, true, take);
    quilt_authors_seam(top_err, size, overlap, glue, glue, overlap, size, false, take);
    for (int y = overlap; y < size; ++y)
      for (int x = overlap; x < size; ++x) take[y * size + x] = true;
  }
}

// Stitch one tile into `image` at (top, left) the way Athalye et al.'s assign_block does.
OBF_HD void quilt_place_patch_authors(float* image, int channels, int height, int width, const float* patch,
                                      int size, int overlap, int top, int left, bool has_top, bool has_left) {
  double left_err[OBF_QUILT_MAX_PATCH * OBF_QUILT_MAX_PATCH];
  double top_err[OBF_QUILT_MAX_PATCH * OBF_QUILT_MAX_PATCH];
  bool take[OBF_QUILT_MAX_PATCH * OBF_QUILT_MAX_PATCH];
  // The left strip is always measured against canvas rows 0..P-1 and the top strip against
  // canvas columns 0..P-1: the block's own rows/columns in the first block row/column, the
  // canvas's first ones for interior blocks (their quirk, see above).
  for (int i = 0; i < size; ++i)
    for (int o = 0; o < overlap; ++o) {
      if (has_left)  // tile (i, o) against canvas (i, left + o)
        left_err[i * overlap + o] =
            quilt_pixel_error64(image, channels, height, width, patch, size, i, left + o, i, o);
      if (has_top)  // tile (o, i) against canvas (top + o, i), stored at [i][o]
        top_err[i * overlap + o] =
            quilt_pixel_error64(image, channels, height, width, patch, size, top + o, i, o, i);
    }
  quilt_authors_take(left_err, top_err, size, overlap, has_top, has_left, take);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      if (!take[y * size + x]) continue;
      for (int c = 0; c < channels; ++c)
        image[((index_t)c * height + top + y) * width + left + x] = patch[(c * size + y) * size + x];
    }
}

// Quilt one image in raster order. `neighbours` holds, for each of the rows x cols patch
// positions (row-major), its k database indices; the patch used is neighbours[p][pick].
// `image` (channels x height x width) is the output, filled completely since the patches
// tile it exactly: height = size + (rows - 1) * stride, and likewise for the width.
// `stitch`: QUILT_MIN_CUT (Efros & Freeman), QUILT_AUTHORS (Athalye et al.'s) or QUILT_PASTE
// (whole tiles, later over earlier: their graphcut=False).
OBF_HD void quilt_assemble_image(float* image, int channels, int height, int width, const float* database,
                                 const long long* neighbours, int k, int size, int overlap, int rows,
                                 int cols, unsigned long long seed, long long image_index, int stitch) {
  int stride = size - overlap;
  index_t patch_len = (index_t)channels * size * size;
  for (int py = 0; py < rows; ++py) {
    for (int px = 0; px < cols; ++px) {
      long long p = (long long)py * cols + px;
      long long chosen = neighbours[p * k + quilt_pick(seed, image_index, p, k)];
      const float* patch = database + chosen * patch_len;
      const bool has_top = stitch != QUILT_PASTE && py > 0, has_left = stitch != QUILT_PASTE && px > 0;
      if (stitch == QUILT_AUTHORS)
        quilt_place_patch_authors(image, channels, height, width, patch, size, overlap, py * stride,
                                  px * stride, has_top, has_left);
      else
        quilt_place_patch(image, channels, height, width, patch, size, overlap, py * stride, px * stride,
                          has_top, has_left);
    }
  }
}

}  // namespace obfgrad
