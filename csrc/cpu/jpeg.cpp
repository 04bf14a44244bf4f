// CPU driver of the JPEG round trip: OpenMP over images; each image goes through three
// passes over small per-thread planes (encode colour + downsample, the 8x8 block round trip,
// upsample + decode colour), written as row loops over the kernel body in obfgrad/jpeg.h so the
// compiler vectorises them. The CUDA driver runs the same body one sample per thread.
// The kernel body's host vector lanes are returned by value from always-inlined helpers only;
// GCC's note that such returns would change the ABI without AVX does not apply (the note is
// emitted at the end of the file, so it is silenced for the whole file).
#pragma GCC diagnostic ignored "-Wpsabi"

#include "obfgrad/jpeg.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "buffers.h"
#include "registry.h"

namespace obfgrad {
namespace {

namespace jp = jpeg;

// The portable build targets baseline x86-64 (SSE2). The hot loops are also compiled for AVX2
// (8 int32 lanes: one block row per register, and a native 32-bit multiply), picked at load
// time by the CPU; both clones run the same arithmetic, so results are identical.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX2__)
#define OBF_CPU_CLONES __attribute__((noinline, target_clones("avx2", "default")))
#else
#define OBF_CPU_CLONES __attribute__((noinline))
#endif

struct ImageShape {
  index_t channels, h, w;
  bool subsample;  // 4:2:0 (colour only)
};

// The padded sample planes of the image being processed (int: whole-vector block loads).
struct Planes {
  std::vector<int> luma, cb, cr;

  void reserve(const ImageShape& s, const jp::PlaneGeometry& g) {
    luma.resize(g.luma_h * g.luma_w);
    if (s.channels == 3) {
      cb.resize(g.chroma_h * g.chroma_w);
      cr.resize(g.chroma_h * g.chroma_w);
    }
  }
};

// Per-thread row buffers.
struct RowScratch {
  std::vector<int> cb_rows[2], cr_rows[2];  // full-resolution chroma of one row pair
  std::vector<int> colsum, cb_line, cr_line;  // upsampling of one output row

  void reserve(const jp::PlaneGeometry& g) {
    for (auto* rows : {cb_rows, cr_rows})
      for (int k = 0; k < 2; ++k) rows[k].resize(2 * g.chroma_w);
    colsum.resize(g.small_w + 2);
    cb_line.resize(2 * g.small_w);
    cr_line.resize(2 * g.small_w);
  }
};

// Repeat the last real sample of a row up to `padded` samples.
template <typename T>
void pad_row(T* row, index_t real, index_t padded) {
  std::fill(row + real, row + padded, row[real - 1]);
}

// Repeat row `last` of a plane into rows last+1 .. rows-1.
void pad_rows(int* plane, index_t stride, index_t last, index_t rows) {
  for (index_t r = last + 1; r < rows; ++r) std::memcpy(plane + r * stride, plane + last * stride, stride * sizeof(int));
}

// Row loops: restrict-qualified pointers and sizes in locals, so the compiler vectorises them.

// One image row: float RGB -> Y samples (padded to `luma_w`) and full-resolution Cb, Cr.
inline void convert_row(const float* __restrict r, const float* __restrict g, const float* __restrict b,
                        index_t w, index_t luma_w, int* __restrict luma, int* __restrict cb,
                        int* __restrict cr) {
  for (index_t x = 0; x < w; ++x) {
    const int R = jp::to_sample(r[x]), G = jp::to_sample(g[x]), B = jp::to_sample(b[x]);
    luma[x] = jp::rgb_to_y(R, G, B);
    cb[x] = jp::rgb_to_cb(R, G, B);
    cr[x] = jp::rgb_to_cr(R, G, B);
  }
  pad_row(luma, w, luma_w);
}

// One 4:2:0 chroma row from two full-resolution rows.
inline void downsample_row(const int* __restrict upper, const int* __restrict lower, index_t n,
                           int* __restrict out) {
  for (index_t col = 0; col < n; ++col) {
    out[col] = jp::downsample_h2v2(upper[2 * col], upper[2 * col + 1], lower[2 * col], lower[2 * col + 1], col);
  }
}

// Pass 1, one step: colour 4:2:0 -> row pair `row` (two luma rows, one chroma row); colour
// 4:4:4 -> image row `row`; grayscale -> image row `row`. Rows past the image come later
// (pad_planes), so steps are independent.
OBF_CPU_CLONES void encode_step(const float* image, const ImageShape& s, const jp::PlaneGeometry& g,
                                index_t row, Planes& p, RowScratch& scratch) {
  const index_t plane = s.h * s.w, w = s.w;
  if (s.channels == 1) {
    int* out = p.luma.data() + row * g.luma_w;
    const float* in = image + row * w;
    for (index_t x = 0; x < w; ++x) out[x] = jp::to_sample(in[x]);
    pad_row(out, w, g.luma_w);
    return;
  }
  const float *red = image, *green = image + plane, *blue = image + 2 * plane;
  if (s.subsample) {
    for (int k = 0; k < 2; ++k) {
      const index_t y = std::min(2 * row + k, s.h - 1);  // an odd last row pairs with itself
      int *cb = scratch.cb_rows[k].data(), *cr = scratch.cr_rows[k].data();
      convert_row(red + y * w, green + y * w, blue + y * w, w, g.luma_w, p.luma.data() + (2 * row + k) * g.luma_w,
                  cb, cr);
      pad_row(cb, w, 2 * g.chroma_w);
      pad_row(cr, w, 2 * g.chroma_w);
    }
    downsample_row(scratch.cb_rows[0].data(), scratch.cb_rows[1].data(), g.chroma_w, p.cb.data() + row * g.chroma_w);
    downsample_row(scratch.cr_rows[0].data(), scratch.cr_rows[1].data(), g.chroma_w, p.cr.data() + row * g.chroma_w);
  } else {
    int* cb = p.cb.data() + row * g.chroma_w;
    int* cr = p.cr.data() + row * g.chroma_w;
    convert_row(red + row * w, green + row * w, blue + row * w, w, g.luma_w, p.luma.data() + row * g.luma_w, cb, cr);
    pad_row(cb, w, g.chroma_w);
    pad_row(cr, w, g.chroma_w);
  }
}

index_t encode_steps(const ImageShape& s, const jp::PlaneGeometry& g) {
  return s.subsample ? g.small_h : s.h;
}

// Pass 1, end: rows past the image repeat the last row. For 4:2:0 chroma that is the last
// *downsampled* row (jcprepct.c pads the downsampled planes to the block height).
void pad_planes(const ImageShape& s, const jp::PlaneGeometry& g, Planes& p) {
  pad_rows(p.luma.data(), g.luma_w, s.h - 1, g.luma_h);
  if (s.channels == 3) {
    pad_rows(p.cb.data(), g.chroma_w, g.small_h - 1, g.chroma_h);
    pad_rows(p.cr.data(), g.chroma_w, g.small_h - 1, g.chroma_h);
  }
}

// Pass 2, one step: the 8x8 blocks of one block row of a plane, in place.
OBF_CPU_CLONES void roundtrip_block_row(int* plane, index_t block_row, index_t cols, const int* table) {
  jp::lanes8i table_rows[8];
  std::memcpy(table_rows, table, sizeof(table_rows));
  int* row = plane + block_row * 8 * cols;
  for (index_t bx = 0; bx < cols; bx += 8) jp::roundtrip_block_simd(row + bx, cols, table_rows);
}

// Pass 3 helpers. Fancy upsampling of one chroma row: colsum[1 .. n] holds the vertical sums;
// colsum[0] and colsum[n + 1] repeat the edges, so the horizontal loop has no branches.
inline void fancy_row(const int* __restrict near_line, const int* __restrict far_line,
                      index_t n, int* __restrict colsum, int* __restrict line) {
  for (index_t col = 0; col < n; ++col) colsum[col + 1] = jp::fancy_colsum(near_line[col], far_line[col]);
  colsum[0] = colsum[1];
  colsum[n + 1] = colsum[n];
  for (index_t col = 0; col < n; ++col) {
    line[2 * col] = jp::fancy_left(colsum[col + 1], colsum[col]);
    line[2 * col + 1] = jp::fancy_right(colsum[col + 1], colsum[col + 2]);
  }
}

// Full-resolution row y of a 4:2:0 chroma plane into `line` (>= W samples).
inline void upsample_row(const int* plane, const jp::PlaneGeometry& g, index_t y, int* colsum, int* line) {
  const index_t row = y >> 1, n = g.small_w;
  const int* near_line = plane + row * g.chroma_w;
  if (!jp::uses_fancy_upsampling(n)) {
    for (index_t col = 0; col < n; ++col) line[2 * col] = line[2 * col + 1] = near_line[col];
    return;
  }
  const index_t far_row = (y & 1) ? std::min(row + 1, g.small_h - 1) : std::max<index_t>(row - 1, 0);
  fancy_row(near_line, plane + far_row * g.chroma_w, n, colsum, line);
}

// YCbCr samples of one row -> float RGB.
inline void ycc_row_to_rgb(const int* __restrict luma, const int* __restrict cb, const int* __restrict cr,
                           index_t w, float* __restrict r, float* __restrict g, float* __restrict b) {
  for (index_t x = 0; x < w; ++x) {
    r[x] = jp::from_sample(jp::ycc_to_r(luma[x], cr[x]));
    g[x] = jp::from_sample(jp::ycc_to_g(luma[x], cb[x], cr[x]));
    b[x] = jp::from_sample(jp::ycc_to_b(luma[x], cb[x]));
  }
}

// Pass 3, one step: output row y (chroma back to full resolution, YCbCr -> RGB, 8-bit -> float).
OBF_CPU_CLONES void decode_step(float* out, const ImageShape& s, const jp::PlaneGeometry& g, index_t y,
                                const Planes& p, RowScratch& scratch) {
  const index_t plane = s.h * s.w;
  const int* luma = p.luma.data() + y * g.luma_w;
  if (s.channels == 1) {
    for (index_t x = 0; x < s.w; ++x) out[y * s.w + x] = jp::from_sample(luma[x]);
    return;
  }
  const int *cb = p.cb.data() + y * g.chroma_w, *cr = p.cr.data() + y * g.chroma_w;
  if (s.subsample) {
    upsample_row(p.cb.data(), g, y, scratch.colsum.data(), scratch.cb_line.data());
    upsample_row(p.cr.data(), g, y, scratch.colsum.data(), scratch.cr_line.data());
    cb = scratch.cb_line.data();
    cr = scratch.cr_line.data();
  }
  ycc_row_to_rgb(luma, cb, cr, s.w, out + y * s.w, out + plane + y * s.w, out + 2 * plane + y * s.w);
}

// Loop policies for the steps of one image: run them all on the calling thread (OpenMP is
// spread over images), or share them among the threads of the enclosing parallel region
// (fewer images than threads). Each worksharing loop ends with a barrier, so a pass sees the
// previous pass complete.
struct SerialSteps {
  template <typename Step>
  void operator()(index_t count, const Step& step) const {
    for (index_t i = 0; i < count; ++i) step(i);
  }
};
struct SharedSteps {
  template <typename Step>
  void operator()(index_t count, const Step& step) const {
#pragma omp for schedule(static)
    for (index_t i = 0; i < count; ++i) step(i);
  }
};

template <typename Steps>
void roundtrip_image(const float* image, float* out, const ImageShape& s, const jp::PlaneGeometry& g,
                     const int* luma_table, const int* chroma_table, Planes& p, RowScratch& scratch,
                     const Steps& steps) {
  steps(encode_steps(s, g), [&](index_t row) { encode_step(image, s, g, row, p, scratch); });
  steps(1, [&](index_t) { pad_planes(s, g, p); });
  const index_t luma_rows = g.luma_h / 8, chroma_rows = s.channels == 3 ? g.chroma_h / 8 : 0;
  steps(luma_rows + 2 * chroma_rows, [&](index_t r) {
    if (r < luma_rows) {
      roundtrip_block_row(p.luma.data(), r, g.luma_w, luma_table);
    } else {
      r -= luma_rows;
      int* plane = r < chroma_rows ? p.cb.data() : p.cr.data();
      roundtrip_block_row(plane, r % chroma_rows, g.chroma_w, chroma_table);
    }
  });
  steps(s.h, [&](index_t y) { decode_step(out, s, g, y, p, scratch); });
}

ImageShape image_shape(const std::vector<long long>& xs, bool subsample) {
  if (xs[1] != 1 && xs[1] != 3) throw py::value_error("x: expected 1 or 3 channels");
  return ImageShape{xs[1], xs[2], xs[3], subsample && xs[1] == 3};
}

std::vector<int> checked_table(const carray<int>& table, const char* name) {
  require_shape(checked_shape(table, name, 1), {64}, name);
  std::vector<int> values(table.data(), table.data() + 64);
  for (int q : values)
    if (q < 1 || q > 255) throw py::value_error(std::string(name) + ": entries must be in 1..255");
  return values;
}

// x: (N, C, H, W) float32 in [0, 1]; out: same shape, written.
void jpeg_forward(const carray<float>& x, carray<float>& out, const carray<int>& luma_table,
                  const carray<int>& chroma_table, bool subsample) {
  auto xs = checked_shape(x, "x", 4);
  require_shape(checked_shape(out, "out", 4), xs, "out");
  require_writable(out, "out");
  const ImageShape s = image_shape(xs, subsample);
  const std::vector<int> luma = checked_table(luma_table, "luma_table");
  const std::vector<int> chroma = checked_table(chroma_table, "chroma_table");
  const index_t n = xs[0], image = s.channels * s.h * s.w;
  if (n == 0 || image == 0) return;
  const float* src = x.data();
  float* dst = out.mutable_data();
  const jp::PlaneGeometry g = jp::plane_geometry(s.h, s.w, s.subsample);
  py::gil_scoped_release release;
  if (n >= omp_get_max_threads()) {
#pragma omp parallel
    {
      Planes planes;
      RowScratch scratch;
      planes.reserve(s, g);
      scratch.reserve(g);
#pragma omp for schedule(dynamic)
      for (index_t i = 0; i < n; ++i) {
        roundtrip_image(src + i * image, dst + i * image, s, g, luma.data(), chroma.data(), planes, scratch,
                        SerialSteps{});
      }
    }
  } else {
    Planes planes;  // one image at a time, its rows and blocks shared among the threads
    planes.reserve(s, g);
#pragma omp parallel
    {
      RowScratch scratch;
      scratch.reserve(g);
      for (index_t i = 0; i < n; ++i) {
        roundtrip_image(src + i * image, dst + i * image, s, g, luma.data(), chroma.data(), planes, scratch,
                        SharedSteps{});
      }
    }
  }
}

// Chroma parts of Mdec^T g into the interiors of two zero-bordered planes (row stride `stride`).
OBF_CPU_CLONES void chroma_gradients(const float* grad, index_t h, index_t w, index_t stride, float* cb,
                                     float* cr) {
  const index_t plane = h * w;
  for (index_t y = 0; y < h; ++y) {
    const float* __restrict r = grad + y * w;
    const float* __restrict g = grad + plane + y * w;
    const float* __restrict b = grad + 2 * plane + y * w;
    float* __restrict cb_row = cb + (y + 1) * stride + 1;
    float* __restrict cr_row = cr + (y + 1) * stride + 1;
    for (index_t x = 0; x < w; ++x) {
      cb_row[x] = jp::mdec_t_cb(r[x], g[x], b[x]);
      cr_row[x] = jp::mdec_t_cr(r[x], g[x], b[x]);
    }
  }
}

// grad_in = transpose of the linearised round trip applied to grad_out (both (N, C, H, W)).
void jpeg_backward_linear(const carray<float>& grad_out, carray<float>& grad_in, bool subsample) {
  auto gs = checked_shape(grad_out, "grad_out", 4);
  require_shape(checked_shape(grad_in, "grad_in", 4), gs, "grad_in");
  require_writable(grad_in, "grad_in");
  const ImageShape s = image_shape(gs, subsample);
  const index_t n = gs[0], image = s.channels * s.h * s.w;
  if (n == 0 || image == 0) return;
  const float* src = grad_out.data();
  float* dst = grad_in.mutable_data();
  py::gil_scoped_release release;
  if (s.channels == 1) {
    std::memcpy(dst, src, sizeof(float) * n * image);
    return;
  }
  const jp::PlaneGeometry g = jp::plane_geometry(s.h, s.w, s.subsample);
  // 4:2:0: chroma gradients with a zero border, covering rows -1 .. 2*small_h, cols -1 .. 2*small_w.
  const index_t border_w = 2 * g.small_w + 2, border_h = 2 * g.small_h + 2;
#pragma omp parallel
  {
    std::vector<float> small_cb, small_cr, full_cb, full_cr;
    if (s.subsample) {
      small_cb.resize(g.small_h * g.small_w);
      small_cr.resize(g.small_h * g.small_w);
      full_cb.assign(border_h * border_w, 0.0f);
      full_cr.assign(border_h * border_w, 0.0f);
    }
#pragma omp for schedule(dynamic)
    for (index_t i = 0; i < n; ++i) {
      const float* grad = src + i * image;
      if (s.subsample) {
        chroma_gradients(grad, s.h, s.w, border_w, full_cb.data(), full_cr.data());
        const jp::ChromaGradFromPlane cb{full_cb.data(), border_w}, cr{full_cr.data(), border_w};
        for (index_t row = 0; row < g.small_h; ++row) {
          for (index_t col = 0; col < g.small_w; ++col) {
            small_cb[row * g.small_w + col] = jp::upsample_transpose_at(cb, g.small_h, g.small_w, row, col);
            small_cr[row * g.small_w + col] = jp::upsample_transpose_at(cr, g.small_h, g.small_w, row, col);
          }
        }
      }
      for (index_t y = 0; y < s.h; ++y) {
        for (index_t x = 0; x < s.w; ++x) {
          jp::linear_backward_pixel(grad, s.subsample ? small_cb.data() : nullptr,
                                    s.subsample ? small_cr.data() : nullptr, g.small_w, s.h, s.w, y, x,
                                    dst + i * image);
        }
      }
    }
  }
}

void register_jpeg(py::module_& m) {
  m.def("jpeg_forward", &jpeg_forward, py::arg("x"), py::arg("out").noconvert(), py::arg("luma_table"),
        py::arg("chroma_table"), py::arg("subsample"),
        "JPEG round trip of x (N,C,H,W) into out; tables: 64 int32 each, natural order.");
  m.def("jpeg_backward_linear", &jpeg_backward_linear, py::arg("grad_out"), py::arg("grad_in").noconvert(),
        py::arg("subsample"), "Transpose of the rounding-free JPEG round trip.");
}

}  // namespace

OBF_REGISTER_OP(jpeg, register_jpeg);

}  // namespace obfgrad
