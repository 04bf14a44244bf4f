// CPU driver of the masked TV minimisation (see obfgrad/tv.h for the algorithm and layout).
//
// Parallelism: with at least as many images as threads, each thread solves whole images
// (no barriers, one image's working set per thread); otherwise the threads share an image,
// splitting each plane's rows into blocks (red-black sweep only; the raster sweep is serial
// within an image). Both paths run the same arithmetic in the same order, so the result does
// not depend on the thread count (tested), and the CUDA driver reproduces it bit for bit.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "buffers.h"
#include "obfgrad/tv.h"
#include "registry.h"

namespace obfgrad {
namespace {

struct TvProblem {
  index_t channels, height, width, half, plane;
  float keep_prob, weight, tol;
  int max_iter;
  unsigned long long seed;
  bool raster;        // raster-order Gauss-Seidel instead of red-black
  bool reflect_far;   // Athalye et al.'s border: bottom/right ghosts from row H-2 / column W-2
  const uint8_t* mask;  // N x H x W keep mask given by the caller, or null: the Philox mask
};

// The packed state of one image: u, d, b per channel plane, the input f, the per-pixel
// fidelity weight (shared by the channels) and the squared-change sum of every half row, in
// two buffers used by alternate iterations (so threads can test the stopping rule of one
// iteration while others already write the sums of the next).
struct TvImageState {
  std::vector<float> u, dx, dy, bx, by, f, fidelity, half_row_sums;
  index_t sums_size;

  explicit TvImageState(const TvProblem& p)
      : u(p.channels * p.plane), dx(u.size()), dy(u.size()), bx(u.size()), by(u.size()),
        f(u.size()), fidelity(p.plane), half_row_sums(2 * p.channels * (p.height + 2) * 2),
        sums_size(p.channels * (p.height + 2) * 2) {}

  float* sums(int iteration) { return &half_row_sums[(iteration & 1) * sums_size]; }
};

// A barrier that spins briefly and then yields the core: OpenMP's barriers spin for a long
// time, which on an oversubscribed machine burns the core the late thread needs (measured
// here: 8x the CPU time of a serial solve). Sense by generation counter; the last thread to
// arrive releases the others, and its release / their acquire publish the sweep's writes.
class YieldingBarrier {
 public:
  explicit YieldingBarrier(int threads) : threads_(threads) {}

  void wait() {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spin = 0; generation_.load(std::memory_order_acquire) == generation; ++spin) {
      if (spin >= kSpinsBeforeYield) std::this_thread::yield();
    }
  }

 private:
  static constexpr int kSpinsBeforeYield = 4000;
  const int threads_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// Loads image n (C x H x W, row-major) into the packed layout: u and f from the image, u's
// ghost ring from the boundary rule, d = b = 0, and the fidelity weight from the mask (the
// caller's when given, else Philox keyed by the seed).
void pack_image(const float* image, index_t n, const TvProblem& p, TvImageState& s) {
  const index_t H = p.height, W = p.width, half = p.half;
  std::fill(s.dx.begin(), s.dx.end(), 0.0f);
  std::fill(s.dy.begin(), s.dy.end(), 0.0f);
  std::fill(s.bx.begin(), s.bx.end(), 0.0f);
  std::fill(s.by.begin(), s.by.end(), 0.0f);
  std::fill(s.u.begin(), s.u.end(), 0.0f);
  std::fill(s.f.begin(), s.f.end(), 0.0f);
  std::fill(s.fidelity.begin(), s.fidelity.end(), 0.0f);
  for (index_t row = 0; row <= H + 1; ++row) {
    for (index_t col = 0; col <= W + 1; ++col) {
      const int colour = (int)((row + col) & 1);
      const index_t at = tv_half_row_index(row, colour, half) + (col - tv_colour_offset(row, colour)) / 2;
      index_t y, x;
      if (!tv_source_pixel(row, col, H, W, p.reflect_far, &y, &x)) continue;
      const bool interior = row >= 1 && row <= H && col >= 1 && col <= W;
      if (interior) {
        const index_t pixel = (n * H + y) * W + x;
        const bool keep = p.mask ? p.mask[pixel] != 0 : tv_keep_pixel(p.seed, pixel, p.keep_prob);
        s.fidelity[at] = keep ? p.weight : 0.0f;
      }
      for (index_t c = 0; c < p.channels; ++c) {
        const float value = image[(c * H + y) * W + x];
        s.u[c * p.plane + at] = value;
        if (interior) s.f[c * p.plane + at] = value;
      }
    }
  }
}

void unpack_image(const TvImageState& s, const TvProblem& p, float* out) {
  const index_t H = p.height, W = p.width, half = p.half;
  for (index_t c = 0; c < p.channels; ++c)
    for (index_t y = 0; y < H; ++y)
      for (index_t x = 0; x < W; ++x) {
        const index_t row = y + 1, col = x + 1;
        const int colour = (int)((row + col) & 1);
        const index_t at = tv_half_row_index(row, colour, half) + (col - tv_colour_offset(row, colour)) / 2;
        out[(c * H + y) * W + x] = s.u[c * p.plane + at];
      }
}

// The kernel body's half-row loop compiled for several instruction sets (GCC/Clang function
// multiversioning picks one at load time). Only IEEE-exact operations run in it and FMA
// contraction is off, so every clone gives bit-identical results.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define OBF_TV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define OBF_TV_CLONES
#endif
OBF_TV_CLONES void update_half_row_simd(float* u_here, float* dx_here, float* dy_here, float* bx_here,
                                        float* by_here, const float* u_side, const float* dx_side,
                                        const float* bx_side, const float* u_up, const float* dy_up,
                                        const float* by_up, const float* u_down, const float* f,
                                        const float* fidelity, float* change2, index_t begin,
                                        index_t end, int offset, float lam, float inv_lam) {
  tv_update_half_row(u_here, dx_here, dy_here, bx_here, by_here, u_side, dx_side, bx_side, u_up,
                     dy_up, by_up, u_down, f, fidelity, change2, begin, end, offset, lam, inv_lam);
}

// Updates the interior of half row (c, row, colour) and records its squared-change sum.
void update_half_row(TvImageState& s, const TvProblem& p, index_t c, index_t row, int colour,
                     float* sums, float* change2) {
  const index_t half = p.half;
  const float lam = tv_lambda(p.weight), inv_lam = tv_threshold(p.weight);
  const int offset = tv_colour_offset(row, colour);
  const index_t base = c * p.plane;
  const index_t here = base + tv_half_row_index(row, colour, half);
  const index_t side = base + tv_half_row_index(row, 1 - colour, half);
  const index_t up = base + tv_half_row_index(row - 1, 1 - colour, half);
  const index_t down = base + tv_half_row_index(row + 1, 1 - colour, half);
  const index_t begin = tv_row_begin(offset), end = tv_row_end(p.width, offset);
  update_half_row_simd(&s.u[here], &s.dx[here], &s.dy[here], &s.bx[here], &s.by[here], &s.u[side],
                     &s.dx[side], &s.bx[side], &s.u[up], &s.dy[up], &s.by[up], &s.u[down],
                     &s.f[here], &s.fidelity[here - base], change2, begin, end, offset, lam, inv_lam);
  sums[(c * (p.height + 2) + row) * 2 + colour] = tv_lane_sum(change2, end - begin);
}

// One red-black iteration of every channel, with the two half sweeps pipelined row by row so
// each row's data passes through the cache once per iteration: black row R - 1 follows red
// row R (its red neighbours in rows R - 2..R are then new, and red row R read black R - 1
// before it changed), which gives exactly the result of a full red sweep then a full black
// sweep. Each plane's rows are cut into `blocks`; thread `thread` of `threads` takes a
// contiguous share of the (plane, block) items. A block's first and last black rows read red
// rows of the neighbouring blocks, so they wait for a second pass after `barrier`.
void sweep_red_black(TvImageState& s, const TvProblem& p, index_t blocks, int thread, int threads,
                     YieldingBarrier* barrier, float* sums, float* change2) {
  const index_t H = p.height;
  const index_t items = p.channels * blocks;
  const index_t mine_begin = items * thread / threads, mine_end = items * (thread + 1) / threads;
  auto block_rows = [&](index_t item, index_t* first, index_t* last) {
    const index_t block = item % blocks;
    *first = 1 + block * H / blocks;
    *last = (block + 1) * H / blocks;  // inclusive
  };
  for (index_t item = mine_begin; item < mine_end; ++item) {
    const index_t c = item / blocks;
    index_t first, last;
    block_rows(item, &first, &last);
    for (index_t row = first; row <= last; ++row) {
      update_half_row(s, p, c, row, 0, sums, change2);
      if (row - 1 > first) update_half_row(s, p, c, row - 1, 1, sums, change2);
    }
  }
  if (barrier) barrier->wait();
  for (index_t item = mine_begin; item < mine_end; ++item) {
    const index_t c = item / blocks;
    index_t first, last;
    block_rows(item, &first, &last);
    update_half_row(s, p, c, first, 1, sums, change2);
    if (last > first) update_half_row(s, p, c, last, 1, sums, change2);
  }
  if (barrier) barrier->wait();
}

// One raster-order sweep (scikit-image's and Athalye et al.'s order: rows top to bottom,
// columns left to right). Each pixel depends on the one just updated, so the loop is serial
// within a plane; the channels are independent and are interleaved pixel by pixel to give the
// CPU several dependency chains at once. Squared changes are summed per half row exactly as
// in the red-black sweep.
void sweep_raster(TvImageState& s, const TvProblem& p, float* sums) {
  const index_t H = p.height, W = p.width, half = p.half, C = p.channels;
  const float lam = tv_lambda(p.weight), inv_lam = tv_threshold(p.weight);
  std::vector<float> change2(C * 2 * half);
  for (index_t row = 1; row <= H; ++row) {
    for (index_t col = 1; col <= W; ++col) {
      const int colour = (int)((row + col) & 1);
      const int offset = tv_colour_offset(row, colour);
      const index_t j = (col - offset) / 2;
      for (index_t c = 0; c < C; ++c) {
        const index_t base = c * p.plane;
        change2[(c * 2 + colour) * half + j - tv_row_begin(offset)] =
            tv_step_packed(&s.u[base], &s.dx[base], &s.dy[base], &s.bx[base], &s.by[base],
                           &s.f[base], s.fidelity.data(), row, colour, j, half, lam, inv_lam);
      }
    }
    for (index_t c = 0; c < C; ++c) {
      for (int colour = 0; colour < 2; ++colour) {
        const int offset = tv_colour_offset(row, colour);
        sums[(c * (H + 2) + row) * 2 + colour] = tv_lane_sum(
            &change2[(c * 2 + colour) * half], tv_row_end(W, offset) - tv_row_begin(offset));
      }
    }
  }
}

// Solves image n; returns the number of iterations it ran. With `parallel` (red-black only),
// one parallel region spans all iterations: two barriers per iteration, and every thread
// evaluates the stopping rule on the same sums (double-buffered by iteration parity, so a
// thread may already write the next iteration's), so all leave the loop together.
int solve_image(const float* image, float* out, index_t n, const TvProblem& p, TvImageState& s,
                bool parallel) {
  pack_image(image, n, p, s);
  const int threads = (parallel && !p.raster && p.height >= 4) ? omp_get_max_threads() : 1;
  const index_t blocks = std::min<index_t>(threads, p.height / 2 > 0 ? p.height / 2 : 1);
  YieldingBarrier barrier(threads);
  int iterations = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    // The barrier counts `threads` arrivals: OpenMP must give us all of them (it does unless
    // dynamic adjustment is on); otherwise every thread runs the whole sweep serially.
    const int team = omp_get_num_threads();
    const bool shared = team == threads && threads > 1;
    const int thread = shared ? omp_get_thread_num() : 0;
    if (shared || omp_get_thread_num() == 0) {
      std::vector<float> change2(p.half);
      int done = 0;
      bool go_on = true;
      while (go_on) {
        float* sums = s.sums(done);
        if (p.raster) {
          sweep_raster(s, p, sums);  // serial within an image: images run in parallel
        } else {
          sweep_red_black(s, p, shared ? blocks : 1, thread, shared ? threads : 1,
                          shared ? &barrier : nullptr, sums, change2.data());
        }
        ++done;
        go_on = done < p.max_iter && tv_should_continue(sums, p.channels, p.height, p.width, p.tol);
      }
      if (thread == 0) iterations = done;
    }
  }
  unpack_image(s, p, out);
  return iterations;
}

void tv_minimize(carray<float> x, carray<float> out, carray<int32_t> iterations, float keep_prob,
                 float weight, float tol, int max_iter, unsigned long long seed, bool raster,
                 bool reflect_far, carray<uint8_t> mask) {
  auto shape = checked_shape(x, "x", 4);
  require_shape(checked_shape(out, "out", 4), shape, "out");
  require_shape(checked_shape(iterations, "iterations", 1), {shape[0]}, "iterations");
  // An empty mask means "draw it from the seed"; a given one must be N x H x W.
  const bool given_mask = mask.size() > 0;
  if (given_mask) require_shape(checked_shape(mask, "mask", 3), {shape[0], shape[2], shape[3]}, "mask");
  require_writable(out, "out");
  require_writable(iterations, "iterations");
  if (!(keep_prob > 0.0f && keep_prob <= 1.0f)) throw py::value_error("keep_prob: expected a number in (0, 1]");
  if (!(weight > 0.0f)) throw py::value_error("weight: expected a positive number");
  if (!(tol >= 0.0f)) throw py::value_error("tol: expected a number >= 0");
  if (max_iter < 1) throw py::value_error("max_iter: expected an int >= 1");
  const index_t N = shape[0], C = shape[1], H = shape[2], W = shape[3];
  if (N == 0 || C == 0 || H == 0 || W == 0) {
    for (index_t n = 0; n < N; ++n) iterations.mutable_data()[n] = 0;
    return;
  }
  TvProblem p{C,        H,    W,      tv_half_width(W), tv_plane_size(H, W),
              keep_prob, weight, tol, max_iter, seed, raster, reflect_far,
              given_mask ? mask.data() : nullptr};
  const float* in_data = x.data();
  float* out_data = out.mutable_data();
  int32_t* iter_data = iterations.mutable_data();
  const index_t image_size = C * H * W;
  const bool per_image = N >= omp_get_max_threads();
  py::gil_scoped_release release;
  if (per_image) {
#pragma omp parallel
    {
      TvImageState state(p);
#pragma omp for schedule(dynamic, 1)
      for (index_t n = 0; n < N; ++n)
        iter_data[n] = solve_image(in_data + n * image_size, out_data + n * image_size, n, p, state, false);
    }
  } else {
    TvImageState state(p);
    for (index_t n = 0; n < N; ++n)
      iter_data[n] = solve_image(in_data + n * image_size, out_data + n * image_size, n, p, state, true);
  }
}

void tv_mask(carray<uint8_t> out, float keep_prob, unsigned long long seed) {
  auto shape = checked_shape(out, "out", 3);
  require_writable(out, "out");
  if (!(keep_prob > 0.0f && keep_prob <= 1.0f)) throw py::value_error("keep_prob: expected a number in (0, 1]");
  const index_t total = shape[0] * shape[1] * shape[2];
  uint8_t* data = out.mutable_data();
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
  for (index_t i = 0; i < total; ++i) data[i] = tv_keep_pixel(seed, i, keep_prob) ? 1 : 0;
}

void register_tv(py::module_& m) {
  m.def("tv_minimize", &tv_minimize, py::arg("x"), py::arg("out").noconvert(), py::arg("iterations").noconvert(),
        py::arg("keep_prob"), py::arg("weight"), py::arg("tol"), py::arg("max_iter"), py::arg("seed"), py::arg("raster") = false,
        py::arg("reflect_far") = false, py::arg("mask") = py::array_t<uint8_t>(0),
        "Masked anisotropic TV minimisation (split Bregman; red-black Gauss-Seidel, or raster "
        "order if `raster`) of a float32 NCHW batch into `out`; writes each image's iteration "
        "count to `iterations`. `reflect_far`: Athalye et al.'s border (bottom/right ghosts from "
        "row H-2 / column W-2); `mask`: an N x H x W uint8 keep mask (1 = kept) instead of the "
        "seed's Philox mask (empty: use the seed).");
  m.def("tv_mask", &tv_mask, py::arg("out").noconvert(), py::arg("keep_prob"), py::arg("seed"),
        "Guo et al.'s pixel keep mask (1 = kept) of an N x H x W batch for `seed`.");
}

}  // namespace

OBF_REGISTER_OP(tv, register_tv);

}  // namespace obfgrad
