// CPU driver of image quilting: exact k-nearest-neighbour patch search and raster-order
// stitching (bodies in csrc/include/obfgrad/quilt.h).
//
// The search never forms the query x database distance matrix. Queries are put in k-d order
// and packed into panels of 32 (dimension-major); the database is walked in cache blocks of
// 480 rows. For each (panel, block) pair a register-blocked micro-kernel computes
//     approx = |q|^2 + |d|^2 - 2 q.d
// for a tile of rows x 32 queries, and flags the pairs whose approx is under the query's
// running K-th distance (plus a rounding slack). Flagged pairs are re-scored with the
// canonical distance (quilt_distance) and inserted into the running top-K: the result is
// exactly the brute-force answer under the canonical distance, ties to the smaller index.
//
// Exact pruning: for orthonormal directions u_i, |q - d|^2 >= sum_i (u_i.q - u_i.d)^2, and
// |q - d| >= | |q| - |d| |. Each block keeps the bounding box of its rows along eight fixed
// directions (mean level, ramps, colour contrasts, quadratic shapes: where natural patches put
// their energy) and its norm range; a (panel, block) pair is skipped when the bound exceeds
// the running K-th distance of every query in the panel (a panel-level box test first, then
// per query). Each group of 8 panels visits the blocks nearest to it first, so the K-th
// distances shrink early. The database is stored in k-d order with 480-row leaves
// (quilt_storage_order, used by obfgrad.ops.quilt_db), which makes the blocks' boxes tight;
// any order gives the same neighbours, only slower. All bounds are loosened by the rounding
// error of the float computations (set_slack), so no true neighbour is ever skipped.
//
// The micro-kernel is compiled for AVX-512 and AVX2+FMA with function-level target
// attributes and picked at run time, so a portable build still uses the wide units; a
// generic C++ kernel covers other CPUs. Only the filter uses the micro-kernel's (fused)
// arithmetic; the reported distances always come from the canonical body.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define OBF_QUILT_X86 1
#else
#define OBF_QUILT_X86 0
#endif

#include "buffers.h"
#include "obfgrad/quilt.h"
#include "registry.h"

namespace obfgrad {
namespace {

constexpr int kPanel = 32;        // queries per packed panel (two AVX-512 vectors)
constexpr int kBlockRows = 480;   // database rows per cache block: a multiple of every kernel's rows
constexpr int kGroupPanels = 8;   // panels that share one walk over the database blocks

// ------------------------------------------------------------------ micro-kernels
// Each kernel takes `rows` database rows (contiguous, `dim` floats each), a packed panel
// (panel[j * 32 + q] = query q's element j), the rows' squared norms, the panel's squared
// norms and thresholds, and writes for every row a 32-bit mask of the queries whose approx
// distance is <= their threshold. Returns whether any bit is set.

struct GenericKernel {
  static constexpr int kRows = 4;
  static bool tile(const float* rows, int dim, const float* panel, const float* row_sq, const float* q_sq,
                   const float* thr, uint32_t* masks) {
    float acc[kRows][kPanel] = {};
    for (int j = 0; j < dim; ++j) {
      const float* b = panel + (index_t)j * kPanel;
      for (int r = 0; r < kRows; ++r) {
        float a = rows[(index_t)r * dim + j];
        for (int q = 0; q < kPanel; ++q) acc[r][q] += a * b[q];
      }
    }
    uint32_t any = 0;
    for (int r = 0; r < kRows; ++r) {
      uint32_t mask = 0;
      for (int q = 0; q < kPanel; ++q) {
        float approx = q_sq[q] + row_sq[r] - 2.f * acc[r][q];
        mask |= (uint32_t)(approx <= thr[q]) << q;
      }
      masks[r] = mask;
      any |= mask;
    }
    return any != 0;
  }
};

#if OBF_QUILT_X86
struct Avx2Kernel {
  static constexpr int kRows = 3;  // 3 rows x 4 vectors of 8 = 12 accumulators
  __attribute__((target("avx2,fma"))) static bool tile(const float* rows, int dim, const float* panel,
                                                       const float* row_sq, const float* q_sq,
                                                       const float* thr, uint32_t* masks) {
    __m256 acc[kRows][4];
#pragma GCC unroll 3
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_ps();
    for (int j = 0; j < dim; ++j) {
      const float* b = panel + (index_t)j * kPanel;
      __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
      __m256 b2 = _mm256_loadu_ps(b + 16), b3 = _mm256_loadu_ps(b + 24);
#pragma GCC unroll 3
      for (int r = 0; r < kRows; ++r) {
        __m256 a = _mm256_broadcast_ss(rows + (index_t)r * dim + j);
        acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        acc[r][2] = _mm256_fmadd_ps(a, b2, acc[r][2]);
        acc[r][3] = _mm256_fmadd_ps(a, b3, acc[r][3]);
      }
    }
    const __m256 minus_two = _mm256_set1_ps(-2.f);
    uint32_t any = 0;
    for (int r = 0; r < kRows; ++r) {
      __m256 row = _mm256_set1_ps(row_sq[r]);
      uint32_t mask = 0;
      for (int v = 0; v < 4; ++v) {
        __m256 base = _mm256_add_ps(_mm256_loadu_ps(q_sq + 8 * v), row);
        __m256 approx = _mm256_fmadd_ps(acc[r][v], minus_two, base);
        __m256 hit = _mm256_cmp_ps(approx, _mm256_loadu_ps(thr + 8 * v), _CMP_LE_OQ);
        mask |= (uint32_t)_mm256_movemask_ps(hit) << (8 * v);
      }
      masks[r] = mask;
      any |= mask;
    }
    return any != 0;
  }
};

struct Avx512Kernel {
  static constexpr int kRows = 12;  // 12 rows x 2 vectors of 16 = 24 accumulators
  __attribute__((target("avx512f"))) static bool tile(const float* rows, int dim, const float* panel,
                                                      const float* row_sq, const float* q_sq,
                                                      const float* thr, uint32_t* masks) {
    __m512 acc[kRows][2];
#pragma GCC unroll 12
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int j = 0; j < dim; ++j) {
      const float* b = panel + (index_t)j * kPanel;
      __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
      for (int r = 0; r < kRows; ++r) {
        __m512 a = _mm512_set1_ps(rows[(index_t)r * dim + j]);
        acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      }
    }
    const __m512 minus_two = _mm512_set1_ps(-2.f);
    const __m512 q0 = _mm512_loadu_ps(q_sq), q1 = _mm512_loadu_ps(q_sq + 16);
    const __m512 t0 = _mm512_loadu_ps(thr), t1 = _mm512_loadu_ps(thr + 16);
    uint32_t any = 0;
#pragma GCC unroll 12
    for (int r = 0; r < kRows; ++r) {
      __m512 row = _mm512_set1_ps(row_sq[r]);
      __m512 approx0 = _mm512_fmadd_ps(acc[r][0], minus_two, _mm512_add_ps(q0, row));
      __m512 approx1 = _mm512_fmadd_ps(acc[r][1], minus_two, _mm512_add_ps(q1, row));
      uint32_t mask = (uint32_t)_mm512_cmp_ps_mask(approx0, t0, _CMP_LE_OQ) |
                      ((uint32_t)_mm512_cmp_ps_mask(approx1, t1, _CMP_LE_OQ) << 16);
      masks[r] = mask;
      any |= mask;
    }
    return any != 0;
  }
};
#endif

// ------------------------------------------------------------------ search state

struct AlignedFloats {  // 64-byte aligned scratch, so panel loads never split cache lines
  float* data = nullptr;
  explicit AlignedFloats(size_t n) {
    size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    data = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!data) throw std::bad_alloc();
    std::memset(data, 0, bytes);
  }
  ~AlignedFloats() { std::free(data); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
};

// ------------------------------------------------------------------ pruning projections
// Orthonormal directions u_i in patch space (channel-major, C x P x P): mean level, linear
// ramps in x and y, two colour contrasts (R - B, R + B - 2G), and the quadratic x^2, y^2 and
// xy shapes. For any orthonormal set, |q - d|^2 >= sum_i (u_i.q - u_i.d)^2 (Bessel), so a
// bounding box of the database block in these coordinates bounds every distance into it.
// Natural-image patches put most of their energy in exactly these low-order components.
constexpr int kMaxProjections = 8;

int projection_basis(int dim, int channels, std::vector<float>& basis) {
  basis.clear();
  int size = 0;
  if (channels > 0 && dim % channels == 0) {
    size = (int)std::lround(std::sqrt((double)(dim / channels)));
    if (size * size * channels != dim) size = 0;
  }
  std::vector<std::vector<double>> dirs;
  std::vector<double> dc(dim, 1.0);
  dirs.push_back(dc);
  if (size >= 2) {
    double mid = (size - 1) / 2.0, second = 0;
    for (int t = 0; t < size; ++t) second += (t - mid) * (t - mid) / size;
    std::vector<double> ramp_x(dim), ramp_y(dim), quad_x(dim), quad_y(dim), cross(dim), rb(dim), rgb(dim);
    for (int c = 0; c < channels; ++c)
      for (int y = 0; y < size; ++y)
        for (int x = 0; x < size; ++x) {
          int j = (c * size + y) * size + x;
          ramp_x[j] = x - mid;
          ramp_y[j] = y - mid;
          quad_x[j] = (x - mid) * (x - mid) - second;
          quad_y[j] = (y - mid) * (y - mid) - second;
          cross[j] = (x - mid) * (y - mid);
          rb[j] = channels == 3 ? (c == 0) - (c == 2) : 0.0;
          rgb[j] = channels == 3 ? (c == 0) + (c == 2) - 2.0 * (c == 1) : 0.0;
        }
    for (auto* d : {&ramp_x, &ramp_y, &rb, &rgb, &quad_x, &quad_y, &cross}) dirs.push_back(*d);
  }
  for (auto& d : dirs) {
    double norm = 0;
    for (double v : d) norm += v * v;
    if (norm == 0 || (int)basis.size() / dim == kMaxProjections) continue;
    for (double v : d) basis.push_back((float)(v / std::sqrt(norm)));
  }
  return (int)(basis.size() / dim);
}

void project_rows(const float* rows, index_t n, int dim, const std::vector<float>& basis, int m, float* out) {
#pragma omp parallel for schedule(static)
  for (index_t r = 0; r < n; ++r) {
    float acc[kMaxProjections] = {};
    const float* v = rows + r * dim;
    for (int j = 0; j < dim; ++j)
      for (int i = 0; i < m; ++i) acc[i] += basis[(size_t)i * dim + j] * v[j];
    for (int i = 0; i < m; ++i) out[r * m + i] = acc[i];
  }
}

// Order points so that every run of `leaf` consecutive points (and every aligned power-of-two
// run of leaves) is compact in projection space: a k-d tree split at leaf multiples, each time
// along the coordinate of largest spread, ties by index.
void kd_order(const float* proj, int m, index_t* idx, index_t n, index_t leaf) {
  if (n <= leaf) return;
  int axis = 0;
  float widest = -1.f;
  for (int i = 0; i < m; ++i) {
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (index_t t = 0; t < n; ++t) {
      lo = std::min(lo, proj[idx[t] * m + i]);
      hi = std::max(hi, proj[idx[t] * m + i]);
    }
    if (hi - lo > widest) widest = hi - lo, axis = i;
  }
  index_t leaves = (n + leaf - 1) / leaf;
  index_t half = ((leaves + 1) / 2) * leaf;
  std::nth_element(idx, idx + half, idx + n, [&](index_t a, index_t b) {
    float pa = proj[a * m + axis], pb = proj[b * m + axis];
    return pa < pb || (pa == pb && a < b);
  });
  kd_order(proj, m, idx, half, leaf);
  kd_order(proj, m, idx + half, n - half, leaf);
}

// ------------------------------------------------------------------ search state

struct Search {
  const float* queries;
  const float* db;
  const float* db_sq;
  const float* db_proj;  // num_db x num_proj
  index_t num_queries, num_db;
  int dim, k, num_proj;
  float* out_dist;
  long long* out_index;
  // Rounding slack of the filter (see set_slack): |approx - exact| <= slack_scale * (|q|^2 + |d|^2).
  float slack_scale, kth_scale, gamma;
  // Packed queries in k-d order: slot s of panel p holds query order[p * 32 + s] (-1: padding).
  index_t num_panels;
  std::vector<index_t> order;
  std::vector<float> slot_sq, slot_norm, slot_proj;
  std::vector<float> panel_lo, panel_hi, panel_norm_lo, panel_norm_hi, panel_sq_max;  // per-panel boxes
  // Database blocks: norm range (sqrt), largest squared norm, projection box.
  index_t num_blocks;
  std::vector<float> block_min, block_max, block_max_sq, block_lo, block_hi;
};

// Bound on the error of approx = |q|^2 + |d|^2 - 2 q.d (float32, any summation order, fused or
// not) against the canonical distance: each dot product of length n errs by at most
// gamma_n * sum |a_j b_j| (Higham, "Accuracy and Stability of Numerical Algorithms", eq. 3.5,
// gamma_n = n u / (1 - n u)), so the three products err by <= 2 gamma (|q|^2 + |d|^2) and the
// final additions by <= 4 u (|q|^2 + |d|^2); we double that, and cover the canonical
// distance's own error through kth_scale.
void set_slack(Search& s) {
  const double unit = std::ldexp(1.0, -24);
  const double gamma = (s.dim + 2) * unit / (1.0 - (s.dim + 2) * unit);
  s.slack_scale = (float)(2.0 * (2.0 * gamma + 4.0 * unit));
  s.kth_scale = (float)(1.0 + 2.0 * gamma);
  s.gamma = (float)(4.0 * gamma);
}

// Bounding box of each panel's queries (projections and norms), for the panel-level bound.
void summarise_panels(Search& s) {
  const int m = s.num_proj;
  const float inf = std::numeric_limits<float>::infinity();
  s.panel_lo.assign(s.num_panels * m, inf);
  s.panel_hi.assign(s.num_panels * m, -inf);
  s.panel_norm_lo.assign(s.num_panels, inf);
  s.panel_norm_hi.assign(s.num_panels, -inf);
  s.panel_sq_max.assign(s.num_panels, 0.f);
  for (index_t slot = 0; slot < s.num_panels * kPanel; ++slot) {
    if (s.order[slot] < 0) continue;
    index_t p = slot / kPanel;
    for (int i = 0; i < m; ++i) {
      s.panel_lo[p * m + i] = std::min(s.panel_lo[p * m + i], s.slot_proj[slot * m + i]);
      s.panel_hi[p * m + i] = std::max(s.panel_hi[p * m + i], s.slot_proj[slot * m + i]);
    }
    s.panel_norm_lo[p] = std::min(s.panel_norm_lo[p], s.slot_norm[slot]);
    s.panel_norm_hi[p] = std::max(s.panel_norm_hi[p], s.slot_norm[slot]);
    s.panel_sq_max[p] = std::max(s.panel_sq_max[p], s.slot_sq[slot]);
  }
}

void pack_queries(Search& s, AlignedFloats& packed, const std::vector<float>& basis) {
  std::vector<float> sq(s.num_queries), proj((size_t)s.num_queries * s.num_proj);
  for (index_t q = 0; q < s.num_queries; ++q) {
    const float* v = s.queries + q * s.dim;
    float sum = 0.f;
    for (int j = 0; j < s.dim; ++j) sum += v[j] * v[j];
    sq[q] = sum;
  }
  project_rows(s.queries, s.num_queries, s.dim, basis, s.num_proj, proj.data());
  std::vector<index_t> sorted(s.num_queries);
  for (index_t q = 0; q < s.num_queries; ++q) sorted[q] = q;
  kd_order(proj.data(), s.num_proj, sorted.data(), s.num_queries, kPanel);
  s.num_panels = (s.num_queries + kPanel - 1) / kPanel;
  s.order.assign(s.num_panels * kPanel, -1);
  s.slot_sq.assign(s.num_panels * kPanel, 0.f);
  s.slot_norm.assign(s.num_panels * kPanel, 0.f);
  s.slot_proj.assign(s.num_panels * kPanel * s.num_proj, 0.f);
  for (index_t slot = 0; slot < s.num_queries; ++slot) {
    index_t q = sorted[slot];
    s.order[slot] = q;
    s.slot_sq[slot] = sq[q];
    s.slot_norm[slot] = std::sqrt(sq[q]);
    for (int i = 0; i < s.num_proj; ++i) s.slot_proj[slot * s.num_proj + i] = proj[q * s.num_proj + i];
    index_t panel = slot / kPanel, lane = slot % kPanel;
    float* dst = packed.data + panel * (index_t)s.dim * kPanel + lane;
    for (int j = 0; j < s.dim; ++j) dst[(index_t)j * kPanel] = s.queries[q * s.dim + j];
  }
  summarise_panels(s);
}

void summarise_blocks(Search& s) {
  const int m = s.num_proj;
  s.num_blocks = (s.num_db + kBlockRows - 1) / kBlockRows;
  s.block_min.assign(s.num_blocks, 0.f);
  s.block_max.assign(s.num_blocks, 0.f);
  s.block_max_sq.assign(s.num_blocks, 0.f);
  s.block_lo.assign(s.num_blocks * m, 0.f);
  s.block_hi.assign(s.num_blocks * m, 0.f);
#pragma omp parallel for schedule(static)
  for (index_t b = 0; b < s.num_blocks; ++b) {
    index_t begin = b * kBlockRows, end = std::min(s.num_db, begin + kBlockRows);
    float lo = std::numeric_limits<float>::infinity(), hi = 0.f;
    float* box_lo = &s.block_lo[b * m];
    float* box_hi = &s.block_hi[b * m];
    for (int i = 0; i < m; ++i) box_lo[i] = std::numeric_limits<float>::infinity(), box_hi[i] = -box_lo[i];
    for (index_t r = begin; r < end; ++r) {
      lo = std::min(lo, s.db_sq[r]);
      hi = std::max(hi, s.db_sq[r]);
      for (int i = 0; i < m; ++i) {
        box_lo[i] = std::min(box_lo[i], s.db_proj[r * m + i]);
        box_hi[i] = std::max(box_hi[i], s.db_proj[r * m + i]);
      }
    }
    s.block_min[b] = std::sqrt(lo);
    s.block_max[b] = std::sqrt(hi);
    s.block_max_sq[b] = hi;
  }
}

// Current K-th distance of the query in `slot` (+inf while its list is not full).
inline float kth_of(const Search& s, index_t slot) {
  index_t q = s.order[slot];
  return s.out_dist[q * s.k + s.k - 1];
}

// Lower bound on the squared distance from a point (norm, projections) to any row of block b:
// the larger of the norm-gap bound and the projection-box bound, each gap shrunk by `margin`
// (rounding of the projections and norms) so that the bound never exceeds the truth.
inline float block_lower_bound(const Search& s, index_t b, float norm, const float* proj, float margin) {
  float gap = std::max(0.f, std::max(s.block_min[b] - norm, norm - s.block_max[b]) - margin);
  float box = 0.f;
  const float* lo = &s.block_lo[b * s.num_proj];
  const float* hi = &s.block_hi[b * s.num_proj];
  for (int i = 0; i < s.num_proj; ++i) {
    float g = std::max(0.f, std::max(lo[i] - proj[i], proj[i] - hi[i]) - margin);
    box += g * g;
  }
  return std::max(gap * gap, box);
}

// Per-slot filter thresholds for block b; -inf (never a candidate) for padding and for the
// queries the bounds rule out. Returns whether any query of the panel needs the block.
bool panel_thresholds(const Search& s, index_t panel, index_t b, float* thr) {
  // Panel-level test first: box-to-box bound against the panel's loosest limit.
  float worst = 0.f;
  for (int lane = 0; lane < kPanel; ++lane) {
    index_t slot = panel * kPanel + lane;
    if (s.order[slot] >= 0) worst = std::max(worst, kth_of(s, slot));
  }
  {
    const int m = s.num_proj;
    float limit = worst * s.kth_scale + s.slack_scale * (s.panel_sq_max[panel] + s.block_max_sq[b]);
    float margin = s.gamma * (s.panel_norm_hi[panel] + s.block_max[b]);
    float gap = std::max(0.f, std::max(s.block_min[b] - s.panel_norm_hi[panel],
                                       s.panel_norm_lo[panel] - s.block_max[b]) - margin);
    float box = 0.f;
    for (int i = 0; i < m; ++i) {
      float g = std::max(0.f, std::max(s.block_lo[b * m + i] - s.panel_hi[panel * m + i],
                                       s.panel_lo[panel * m + i] - s.block_hi[b * m + i]) - margin);
      box += g * g;
    }
    if (std::max(gap * gap, box) > limit) return false;
  }
  bool needed = false;
  for (int lane = 0; lane < kPanel; ++lane) {
    index_t slot = panel * kPanel + lane;
    thr[lane] = -std::numeric_limits<float>::infinity();
    if (s.order[slot] < 0) continue;
    float kth = kth_of(s, slot);
    float limit = kth * s.kth_scale + s.slack_scale * (s.slot_sq[slot] + s.block_max_sq[b]);
    float margin = s.gamma * (s.slot_norm[slot] + s.block_max[b]);
    if (block_lower_bound(s, b, s.slot_norm[slot], &s.slot_proj[slot * s.num_proj], margin) > limit) continue;
    thr[lane] = limit;
    needed = true;
  }
  return needed;
}

// Re-score the flagged (row, query) pairs with the canonical distance and update the lists.
index_t handle_candidates(const Search& s, index_t panel, index_t b, index_t first_row, int rows,
                          const uint32_t* masks, float* thr) {
  index_t rescored = 0;
  for (int r = 0; r < rows; ++r) {
    uint32_t mask = masks[r];
    index_t row = first_row + r;
    while (mask) {
      ++rescored;
      int lane = __builtin_ctz(mask);
      mask &= mask - 1;
      index_t slot = panel * kPanel + lane;
      index_t q = s.order[slot];
      float dist = quilt_distance(s.queries + q * s.dim, s.db + row * s.dim, s.dim);
      if (quilt_topk_insert(dist, row, s.out_dist + q * s.k, s.out_index + q * s.k, s.k)) {
        thr[lane] = kth_of(s, slot) * s.kth_scale + s.slack_scale * (s.slot_sq[slot] + s.block_max_sq[b]);
      }
    }
  }
  return rescored;
}

// Returns the number of pairs re-scored with the canonical distance.
template <class Kernel>
index_t scan_block(const Search& s, const float* packed_panel, index_t panel, index_t b, float* thr,
                   float* tail_rows, float* tail_sq) {
  index_t rescored = 0;
  constexpr int R = Kernel::kRows;
  uint32_t masks[R];
  index_t begin = b * kBlockRows, end = std::min(s.num_db, begin + kBlockRows);
  const float* panel_sq = s.slot_sq.data() + panel * kPanel;
  index_t row = begin;
  for (; row + R <= end; row += R) {
    if (Kernel::tile(s.db + row * s.dim, s.dim, packed_panel, s.db_sq + row, panel_sq, thr, masks))
      rescored += handle_candidates(s, panel, b, row, R, masks, thr);
  }
  if (row < end) {  // last rows of the database: zero-padded copy, padding rows ignored
    int valid = (int)(end - row);
    std::memset(tail_rows, 0, sizeof(float) * R * s.dim);
    std::memcpy(tail_rows, s.db + row * s.dim, sizeof(float) * valid * s.dim);
    for (int r = 0; r < R; ++r) tail_sq[r] = r < valid ? s.db_sq[row + r] : 0.f;
    if (Kernel::tile(tail_rows, s.dim, packed_panel, tail_sq, panel_sq, thr, masks))
      rescored += handle_candidates(s, panel, b, row, valid, masks, thr);
  }
  return rescored;
}

// Blocks in the order a group of panels visits them: by lower bound from the group's mean
// point (closest first, ties by block index), so the running K-th distances shrink early.
std::vector<index_t> visit_order(const Search& s, index_t first_slot, index_t last_slot) {
  std::vector<float> centre(s.num_proj, 0.f);
  float norm = 0.f;
  index_t count = 0;
  for (index_t slot = first_slot; slot < last_slot; ++slot) {
    if (s.order[slot] < 0) continue;
    for (int i = 0; i < s.num_proj; ++i) centre[i] += s.slot_proj[slot * s.num_proj + i];
    norm += s.slot_norm[slot];
    ++count;
  }
  for (int i = 0; i < s.num_proj; ++i) centre[i] /= (float)std::max<index_t>(count, 1);
  norm /= (float)std::max<index_t>(count, 1);
  std::vector<std::pair<float, index_t>> keyed(s.num_blocks);
  for (index_t b = 0; b < s.num_blocks; ++b) keyed[b] = {block_lower_bound(s, b, norm, centre.data(), 0.f), b};
  std::sort(keyed.begin(), keyed.end());
  std::vector<index_t> order(s.num_blocks);
  for (index_t b = 0; b < s.num_blocks; ++b) order[b] = keyed[b].second;
  return order;
}

template <class Kernel>
void search_all(const Search& s, const AlignedFloats& packed, index_t* pairs_scanned, index_t* pairs_rescored) {
  const index_t num_groups = (s.num_panels + kGroupPanels - 1) / kGroupPanels;
  const index_t panel_floats = (index_t)s.dim * kPanel;
  index_t scanned = 0, rescored = 0;
#pragma omp parallel reduction(+ : scanned, rescored)
  {
    AlignedFloats tail_rows((size_t)Kernel::kRows * s.dim);
    float tail_sq[Kernel::kRows];
    alignas(64) float thr[kPanel];
#pragma omp for schedule(dynamic, 1)
    for (index_t g = 0; g < num_groups; ++g) {
      index_t first = g * kGroupPanels, last = std::min(s.num_panels, first + kGroupPanels);
      for (index_t b : visit_order(s, first * kPanel, last * kPanel)) {
        for (index_t p = first; p < last; ++p) {
          if (!panel_thresholds(s, p, b, thr)) continue;
          rescored += scan_block<Kernel>(s, packed.data + p * panel_floats, p, b, thr, tail_rows.data, tail_sq);
          ++scanned;
        }
      }
    }
  }
  *pairs_scanned = scanned;
  *pairs_rescored = rescored;
}

std::string best_isa() {
#if OBF_QUILT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
#endif
  return "generic";
}

// ------------------------------------------------------------------ bindings

void check_database(const std::vector<long long>& db_shape, const std::vector<long long>& sq_shape) {
  if (db_shape[0] < 1 || db_shape[1] < 1) throw py::value_error("database: expected a non-empty (N, D) array");
  require_shape(sq_shape, {db_shape[0]}, "database_sq_norms");
}

// Exact k nearest neighbours (canonical squared l2) of every query row among the database rows.
py::dict knn(carray<float> queries, carray<float> database, carray<float> database_sq_norms,
             carray<float> database_projections, int channels, int k, carray<long long> out_index,
             carray<float> out_dist, const std::string& isa) {
  auto q_shape = checked_shape(queries, "queries", 2);
  auto db_shape = checked_shape(database, "database", 2);
  check_database(db_shape, checked_shape(database_sq_norms, "database_sq_norms", 1));
  if (q_shape[1] != db_shape[1])
    throw py::value_error("queries: expected " + std::to_string(db_shape[1]) + " columns (the database's), got " +
                          std::to_string(q_shape[1]));
  if (k < 1 || k > db_shape[0])
    throw py::value_error("k: expected 1 <= k <= database size (" + std::to_string(db_shape[0]) + "), got " +
                          std::to_string(k));
  require_shape(checked_shape(out_index, "out_index", 2), {q_shape[0], k}, "out_index");
  require_shape(checked_shape(out_dist, "out_dist", 2), {q_shape[0], k}, "out_dist");
  require_writable(out_index, "out_index");
  require_writable(out_dist, "out_dist");
  std::string chosen = isa == "auto" ? best_isa() : isa;
  if (chosen != "generic" && chosen != "avx2" && chosen != "avx512")
    throw py::value_error("isa: expected 'auto', 'generic', 'avx2' or 'avx512', got '" + isa + "'");
  if (chosen != "generic" && best_isa() != chosen && !(chosen == "avx2" && best_isa() == "avx512"))
    throw py::value_error("isa: this CPU does not support " + chosen);

  Search s;
  s.queries = queries.data();
  s.db = database.data();
  s.db_sq = database_sq_norms.data();
  s.num_queries = q_shape[0];
  s.num_db = db_shape[0];
  s.dim = (int)q_shape[1];
  s.k = k;
  s.out_dist = out_dist.mutable_data();
  s.out_index = out_index.mutable_data();
  std::vector<float> basis;
  s.num_proj = projection_basis(s.dim, channels, basis);
  require_shape(checked_shape(database_projections, "database_projections", 2), {db_shape[0], s.num_proj},
                "database_projections");
  s.db_proj = database_projections.data();
  index_t scanned = 0, rescored = 0;
  {
    py::gil_scoped_release release;
    set_slack(s);
    for (index_t q = 0; q < s.num_queries; ++q) quilt_topk_reset(s.out_dist + q * k, s.out_index + q * k, k);
    AlignedFloats packed((size_t)((s.num_queries + kPanel - 1) / kPanel) * kPanel * s.dim);
    pack_queries(s, packed, basis);
    summarise_blocks(s);
    if (s.num_queries > 0) {
#if OBF_QUILT_X86
      if (chosen == "avx512") search_all<Avx512Kernel>(s, packed, &scanned, &rescored);
      else if (chosen == "avx2") search_all<Avx2Kernel>(s, packed, &scanned, &rescored);
      else search_all<GenericKernel>(s, packed, &scanned, &rescored);
#else
      search_all<GenericKernel>(s, packed, &scanned, &rescored);
#endif
    }
  }
  py::dict stats;
  stats["isa"] = chosen;
  stats["block_pairs_scanned"] = scanned;
  stats["pairs_rescored"] = rescored;
  stats["block_pairs_total"] = (long long)(((s.num_queries + kPanel - 1) / kPanel) * ((s.num_db + kBlockRows - 1) / kBlockRows));
  return stats;
}

void sq_norms(carray<float> database, carray<float> out) {
  auto shape = checked_shape(database, "database", 2);
  require_shape(checked_shape(out, "out", 1), {shape[0]}, "out");
  require_writable(out, "out");
  const float* db = database.data();
  float* dst = out.mutable_data();
  const index_t n = shape[0], dim = shape[1];
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
  for (index_t r = 0; r < n; ++r) {
    float sum = 0.f;
    for (index_t j = 0; j < dim; ++j) sum += db[r * dim + j] * db[r * dim + j];
    dst[r] = sum;
  }
}

// Stitch every image of the batch from its patches' neighbour lists (`stitch`: QuiltStitch).
void assemble(carray<float> database, carray<long long> neighbours, unsigned long long seed, carray<float> out,
              int size, int overlap, int stitch) {
  auto db_shape = checked_shape(database, "database", 2);
  auto nb_shape = checked_shape(neighbours, "neighbours", 3);
  auto out_shape = checked_shape(out, "out", 4);
  require_writable(out, "out");
  if (size < 2 || size > OBF_QUILT_MAX_PATCH)
    throw py::value_error("size: expected 2 <= size <= " + std::to_string(OBF_QUILT_MAX_PATCH));
  if (overlap < 1 || overlap >= size) throw py::value_error("overlap: expected 1 <= overlap < size");
  if (stitch != QUILT_MIN_CUT && stitch != QUILT_AUTHORS && stitch != QUILT_PASTE)
    throw py::value_error("stitch: expected 0 (min cut), 1 (Athalye et al.'s) or 2 (paste)");
  if (stitch == QUILT_AUTHORS && overlap < 2) throw py::value_error("overlap: Athalye et al.'s stitch needs >= 2");
  const long long batch = out_shape[0], channels = out_shape[1], height = out_shape[2], width = out_shape[3];
  const int stride = size - overlap;
  if (height < size || width < size || (height - size) % stride || (width - size) % stride)
    throw py::value_error("out: height and width must be size + n * (size - overlap)");
  const long long rows = (height - size) / stride + 1, cols = (width - size) / stride + 1;
  if (db_shape[1] != channels * size * size)
    throw py::value_error("database: expected rows of channels*size*size = " + std::to_string(channels * size * size) +
                          " values, got " + std::to_string(db_shape[1]));
  if (nb_shape[0] != batch || nb_shape[1] != rows * cols || nb_shape[2] < 1)
    throw py::value_error("neighbours: expected shape (" + std::to_string(batch) + ", " + std::to_string(rows * cols) +
                          ", K)");
  const int k = (int)nb_shape[2];
  const long long* nb = neighbours.data();
  const index_t total = batch * rows * cols * k;
  for (index_t i = 0; i < total; ++i)
    if (nb[i] < 0 || nb[i] >= db_shape[0]) throw py::value_error("neighbours: index out of the database's range");
  const float* db = database.data();
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) if (batch > 1)
  for (long long n = 0; n < batch; ++n) {
    float* image = dst + n * channels * height * width;
    std::fill(image, image + channels * height * width, 0.f);
    quilt_assemble_image(image, (int)channels, (int)height, (int)width, db, nb + n * rows * cols * k, k, size,
                         overlap, (int)rows, (int)cols, seed, n, stitch);
  }
}

// Rows' coordinates along the pruning directions (see projection_basis), and the basis size.
void projections(carray<float> database, int channels, carray<float> out) {
  auto shape = checked_shape(database, "database", 2);
  std::vector<float> basis;
  int m = projection_basis((int)shape[1], channels, basis);
  require_shape(checked_shape(out, "out", 2), {shape[0], m}, "out");
  require_writable(out, "out");
  const float* rows = database.data();
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  project_rows(rows, shape[0], (int)shape[1], basis, m, dst);
}

int num_projections(int dim, int channels) {
  std::vector<float> basis;
  return projection_basis(dim, channels, basis);
}

// Storage order for a database: k-d order of its projections with leaves of one cache block.
void storage_order(carray<float> projections, carray<long long> out) {
  auto shape = checked_shape(projections, "projections", 2);
  require_shape(checked_shape(out, "out", 1), {shape[0]}, "out");
  require_writable(out, "out");
  const float* proj = projections.data();
  long long* idx = out.mutable_data();
  py::gil_scoped_release release;
  for (index_t i = 0; i < shape[0]; ++i) idx[i] = i;
  kd_order(proj, (int)shape[1], idx, shape[0], kBlockRows);
  // The blocks' contents are fixed by the (total) order used to split; their internal order
  // is whatever nth_element left, which differs between standard libraries: sort it.
  for (index_t begin = 0; begin < shape[0]; begin += kBlockRows)
    std::sort(idx + begin, idx + std::min<index_t>(shape[0], begin + kBlockRows));
}

// One minimum-error boundary cut (exposed so tests can compare it with an exhaustive search).
void min_cut(carray<float> err, carray<int> out_cut) {
  auto shape = checked_shape(err, "err", 2);
  require_shape(checked_shape(out_cut, "out_cut", 1), {shape[0]}, "out_cut");
  require_writable(out_cut, "out_cut");
  if (shape[0] < 1 || shape[1] < 1) throw py::value_error("err: expected a non-empty strip");
  std::vector<float> cum(shape[0] * shape[1]);
  quilt_min_cut(err.data(), (int)shape[0], (int)shape[1], cum.data(), out_cut.mutable_data());
}

void register_quilt(py::module_& m) {
  m.def("quilt_min_cut", &min_cut, py::arg("err"), py::arg("out_cut").noconvert(),
        "Minimum-error boundary cut through err (length x width): out_cut[l] = column at row l.");
  m.def("quilt_knn", &knn, py::arg("queries"), py::arg("database"), py::arg("database_sq_norms"),
        py::arg("database_projections"), py::arg("channels"), py::arg("k"), py::arg("out_index").noconvert(),
        py::arg("out_dist").noconvert(), py::arg("isa") = "auto",
        "Exact k nearest neighbours (canonical squared l2, ties to the smaller index) of each query row; "
        "fills out_index/out_dist (ascending) and returns search statistics.");
  m.def("quilt_projections", &projections, py::arg("database"), py::arg("channels"), py::arg("out").noconvert(),
        "Coordinates of each row along the search's pruning directions (out: N x quilt_num_projections).");
  m.def("quilt_num_projections", &num_projections, py::arg("dim"), py::arg("channels"));
  m.def("quilt_storage_order", &storage_order, py::arg("projections"), py::arg("out").noconvert(),
        "Permutation that makes every 480-row block of the database compact in projection space.");
  m.def("quilt_sq_norms", &sq_norms, py::arg("database"), py::arg("out").noconvert(), "Squared l2 norm of every row.");
  m.def("quilt_assemble", &assemble, py::arg("database"), py::arg("neighbours"), py::arg("seed"), py::arg("out").noconvert(),
        py::arg("size"), py::arg("overlap"), py::arg("stitch") = 0,
        "Stitch each image from its patches' K neighbours (one picked per patch by Philox(seed)) along "
        "minimum-error boundary cuts (stitch 0), as Athalye et al.'s assign_block (1) or by pasting whole "
        "patches (2).");
  m.def("quilt_best_isa", &best_isa, "The k-NN micro-kernel this CPU runs: avx512, avx2 or generic.");
}

}  // namespace

OBF_REGISTER_OP(quilt, register_quilt);

}  // namespace obfgrad
