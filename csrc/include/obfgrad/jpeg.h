// JPEG round trip (baseline, entropy coding skipped) in libjpeg-turbo's integer arithmetic, so
// the result equals Pillow's save(format="jpeg", quality=q) + open bit for bit; and the
// transpose of its "rounding removed" linearisation, the `linear` BPDA backward (Athalye,
// Carlini & Wagner, ICML 2018, Section 4.1).
//
// The arithmetic re-implements published algorithms (read in IJG libjpeg 6b / libjpeg-turbo):
//   colour conversion  jccolor.c / jdcolor.c: JFIF matrices in 16-bit fixed point;
//   downsampling       jcsample.c h2v2: 2x2 sum + bias 1,2,1,2,... then >> 2;
//   forward DCT        jfdctint.c "islow": Loeffler-Ligtenberg-Moschytz, 13-bit constants,
//                      2 extra bits between passes, output scaled by 8;
//   quantisation       jcdctmgr.c: divide by 8*q, rounding half away from zero;
//   inverse DCT        jidctint.c "islow", output range-limited to 0..255;
//   upsampling         jdsample.c h2v2 "fancy": triangle filter 3/4, 1/4 in each direction
//                      with biases 8 and 7; plain 2x2 replication when the downsampled
//                      width is <= 2 (libjpeg-turbo's rule).
// Quantisation tables (JPEG standard Annex K, scaled by IJG's quality formula) are computed
// by the Python layer and passed in, natural (row-major) order.
//
// Layout: images (N, C, H, W) float32, C = 1 (grayscale) or 3 (RGB). Samples live in
// unsigned-char planes padded to whole 8x8 blocks (see plane_geometry below).
#pragma once

#include "obfgrad/common.h"

// The block transform is large; the CPU driver compiles it into per-ISA clones (SSE2, AVX2),
// which only works if it is inlined into them, so force that on the host.
#if OBF_ON_DEVICE
#define OBF_JPEG_HOT OBF_HD
#else
#define OBF_JPEG_HOT inline __attribute__((always_inline))
#endif

namespace obfgrad {
namespace jpeg {

// ----------------------------------------------------------------------------- geometry

OBF_HD index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }
OBF_HD index_t round_up(index_t a, index_t b) { return ceil_div(a, b) * b; }

// Sizes of the sample planes: luma (and 4:4:4 chroma) cover the image padded to whole
// blocks; 4:2:0 chroma covers ceil(H/2) x ceil(W/2) real samples padded to whole blocks.
struct PlaneGeometry {
  index_t luma_h, luma_w;      // padded luma plane
  index_t chroma_h, chroma_w;  // padded chroma plane
  index_t small_h, small_w;    // real (unpadded) chroma samples
};

OBF_HD PlaneGeometry plane_geometry(index_t h, index_t w, int subsample) {
  PlaneGeometry g;
  g.luma_h = round_up(h, 8);
  g.luma_w = round_up(w, 8);
  g.small_h = subsample ? ceil_div(h, 2) : h;
  g.small_w = subsample ? ceil_div(w, 2) : w;
  g.chroma_h = round_up(g.small_h, 8);
  g.chroma_w = round_up(g.small_w, 8);
  return g;
}

OBF_HD index_t min_index(index_t a, index_t b) { return a < b ? a : b; }
OBF_HD index_t max_index(index_t a, index_t b) { return a > b ? a : b; }
OBF_HD int clamp_sample(int v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

// ----------------------------------------------------------------------------- 8-bit I/O

// Float in [0, 1] -> sample floor(x*255 + 0.5). The argument is >= 0.5 for validated input,
// so truncation is floor; float32 with no FMA, as the torch reference computes it.
OBF_HD int to_sample(float x) { return (int)(x * 255.0f + 0.5f); }
OBF_HD float from_sample(int v) { return (float)v / 255.0f; }

// ----------------------------------------------------------------------------- colour

// FIX(x) = round(x * 2^16) for the JFIF coefficients (jccolor.c, jdcolor.c).
enum : int {
  kFix_0_29900 = 19595, kFix_0_58700 = 38470, kFix_0_11400 = 7471,
  kFix_0_16874 = 11059, kFix_0_33126 = 21709, kFix_0_50000 = 32768,
  kFix_0_41869 = 27439, kFix_0_08131 = 5329,
  kFix_1_40200 = 91881, kFix_0_34414 = 22554, kFix_0_71414 = 46802, kFix_1_77200 = 116130,
  kOneHalf = 1 << 15, kCbCrOffset = 128 << 16,
};

OBF_HD int rgb_to_y(int r, int g, int b) {
  return (kFix_0_29900 * r + kFix_0_58700 * g + kFix_0_11400 * b + kOneHalf) >> 16;
}
// "kOneHalf - 1" keeps the result <= 255 (jccolor.c).
OBF_HD int rgb_to_cb(int r, int g, int b) {
  return (-kFix_0_16874 * r - kFix_0_33126 * g + kFix_0_50000 * b + kCbCrOffset + kOneHalf - 1) >> 16;
}
OBF_HD int rgb_to_cr(int r, int g, int b) {
  return (kFix_0_50000 * r - kFix_0_41869 * g - kFix_0_08131 * b + kCbCrOffset + kOneHalf - 1) >> 16;
}
OBF_HD int rgb_to_component(int r, int g, int b, int component) {
  return component == 0 ? rgb_to_y(r, g, b) : (component == 1 ? rgb_to_cb(r, g, b) : rgb_to_cr(r, g, b));
}

OBF_HD int ycc_to_r(int y, int cr) { return clamp_sample(y + ((kFix_1_40200 * (cr - 128) + kOneHalf) >> 16)); }
OBF_HD int ycc_to_g(int y, int cb, int cr) {
  return clamp_sample(y + ((-kFix_0_34414 * (cb - 128) - kFix_0_71414 * (cr - 128) + kOneHalf) >> 16));
}
OBF_HD int ycc_to_b(int y, int cb) { return clamp_sample(y + ((kFix_1_77200 * (cb - 128) + kOneHalf) >> 16)); }

// ----------------------------------------------------------------------------- resampling

// One 4:2:0 chroma sample from its 2x2 full-resolution block; the bias alternates 1, 2 along
// the row (output column parity), so rounding does not drift one way (jcsample.c).
OBF_HD int downsample_h2v2(int a, int b, int c, int d, index_t out_col) {
  return (a + b + c + d + 1 + (int)(out_col & 1)) >> 2;
}

// Fancy upsampling: the vertical pass keeps 3*nearer + farther (x4 scale); the horizontal pass
// combines two such sums and divides by 16, biases 8 (left output) and 7 (right output).
OBF_HD int fancy_colsum(int nearer, int farther) { return 3 * nearer + farther; }
OBF_HD int fancy_left(int colsum, int colsum_left) { return (3 * colsum + colsum_left + 8) >> 4; }
OBF_HD int fancy_right(int colsum, int colsum_right) { return (3 * colsum + colsum_right + 7) >> 4; }

// libjpeg-turbo falls back to 2x2 replication when the downsampled width is <= 2.
OBF_HD bool uses_fancy_upsampling(index_t small_w) { return small_w > 2; }

// Upsampled 4:2:0 chroma at full-resolution (y, x) from the decoded plane (row stride
// `stride`, real size small_h x small_w); edges repeat the last real row/column.
OBF_HD int upsampled_chroma_at(const unsigned char* plane, index_t stride, index_t small_h,
                               index_t small_w, index_t y, index_t x) {
  const index_t row = y >> 1, col = x >> 1;
  if (!uses_fancy_upsampling(small_w)) return plane[row * stride + col];
  const index_t far_row = (y & 1) ? min_index(row + 1, small_h - 1) : max_index(row - 1, 0);
  const index_t far_col = (x & 1) ? min_index(col + 1, small_w - 1) : max_index(col - 1, 0);
  const unsigned char* near_line = plane + row * stride;
  const unsigned char* far_line = plane + far_row * stride;
  const int here = fancy_colsum(near_line[col], far_line[col]);
  const int there = fancy_colsum(near_line[far_col], far_line[far_col]);
  return (x & 1) ? fancy_right(here, there) : fancy_left(here, there);
}

// ----------------------------------------------------------------------------- islow DCT

constexpr int kConstBits = 13, kPass1Bits = 2;
// FIX(x) = round(x * 2^13) (jfdctint.c, jidctint.c). Plain ints (not enumerators) so they
// combine with the host vector lanes.
constexpr int kF_0_298 = 2446, kF_0_390 = 3196, kF_0_541 = 4433, kF_0_765 = 6270;
constexpr int kF_0_899 = 7373, kF_1_175 = 9633, kF_1_501 = 12299, kF_1_847 = 15137;
constexpr int kF_1_961 = 16069, kF_2_053 = 16819, kF_2_562 = 20995, kF_3_072 = 25172;

// The 1-D transforms are templates over the "lane" type L: `int` transforms one line of 8
// samples (the GPU, one block per thread), a host vector of 8 ints transforms 8 lines at once
// (the CPU). Same expressions either way, so CPU and GPU round identically.

// Shift right by n rounding half up (libjpeg's DESCALE); >> on signed ints is arithmetic here.
template <int n, typename L>
OBF_JPEG_HOT L descale(L x) { return (x + (1 << (n - 1))) >> n; }

// One pass of the forward DCT on d[0..7], in place. Pass 1 (kFirst) keeps kPass1Bits extra
// bits; pass 2 removes them.
template <bool kFirst, typename L>
OBF_JPEG_HOT void fdct_1d(L* d) {
  constexpr int shift = kFirst ? kConstBits - kPass1Bits : kConstBits + kPass1Bits;
  const L tmp0 = d[0] + d[7], tmp7 = d[0] - d[7];
  const L tmp1 = d[1] + d[6], tmp6 = d[1] - d[6];
  const L tmp2 = d[2] + d[5], tmp5 = d[2] - d[5];
  const L tmp3 = d[3] + d[4], tmp4 = d[3] - d[4];
  // Even part.
  const L tmp10 = tmp0 + tmp3, tmp13 = tmp0 - tmp3;
  const L tmp11 = tmp1 + tmp2, tmp12 = tmp1 - tmp2;
  if (kFirst) {
    d[0] = (tmp10 + tmp11) * (1 << kPass1Bits);
    d[4] = (tmp10 - tmp11) * (1 << kPass1Bits);
  } else {
    d[0] = descale<kPass1Bits>(tmp10 + tmp11);
    d[4] = descale<kPass1Bits>(tmp10 - tmp11);
  }
  const L z1e = (tmp12 + tmp13) * kF_0_541;
  d[2] = descale<shift>(z1e + tmp13 * kF_0_765);
  d[6] = descale<shift>(z1e - tmp12 * kF_1_847);
  // Odd part: the rotations of the Loeffler et al. flow graph.
  const L z5 = (tmp4 + tmp6 + tmp5 + tmp7) * kF_1_175;
  const L z1 = (tmp4 + tmp7) * -kF_0_899, z2 = (tmp5 + tmp6) * -kF_2_562;
  const L z3 = (tmp4 + tmp6) * -kF_1_961 + z5, z4 = (tmp5 + tmp7) * -kF_0_390 + z5;
  d[7] = descale<shift>(tmp4 * kF_0_298 + z1 + z3);
  d[5] = descale<shift>(tmp5 * kF_2_053 + z2 + z4);
  d[3] = descale<shift>(tmp6 * kF_3_072 + z2 + z3);
  d[1] = descale<shift>(tmp7 * kF_1_501 + z1 + z4);
}

// One pass of the inverse DCT on d[0..7], in place. Pass 1 keeps kPass1Bits extra bits; pass 2
// removes them and the DCT's factor 8 (3 more bits).
template <bool kFirst, typename L>
OBF_JPEG_HOT void idct_1d(L* d) {
  constexpr int shift = kFirst ? kConstBits - kPass1Bits : kConstBits + kPass1Bits + 3;
  // Even part.
  const L z1e = (d[2] + d[6]) * kF_0_541;
  const L tmp2e = z1e - d[6] * kF_1_847, tmp3e = z1e + d[2] * kF_0_765;
  const L tmp0e = (d[0] + d[4]) * (1 << kConstBits);
  const L tmp1e = (d[0] - d[4]) * (1 << kConstBits);
  const L tmp10 = tmp0e + tmp3e, tmp13 = tmp0e - tmp3e;
  const L tmp11 = tmp1e + tmp2e, tmp12 = tmp1e - tmp2e;
  // Odd part.
  const L t0 = d[7], t1 = d[5], t2 = d[3], t3 = d[1];
  const L z5 = (t0 + t2 + t1 + t3) * kF_1_175;
  const L z1 = (t0 + t3) * -kF_0_899, z2 = (t1 + t2) * -kF_2_562;
  const L z3 = (t0 + t2) * -kF_1_961 + z5, z4 = (t1 + t3) * -kF_0_390 + z5;
  const L o0 = t0 * kF_0_298 + z1 + z3, o1 = t1 * kF_2_053 + z2 + z4;
  const L o2 = t2 * kF_3_072 + z2 + z3, o3 = t3 * kF_1_501 + z1 + z4;
  d[0] = descale<shift>(tmp10 + o3);
  d[7] = descale<shift>(tmp10 - o3);
  d[1] = descale<shift>(tmp11 + o2);
  d[6] = descale<shift>(tmp11 - o2);
  d[2] = descale<shift>(tmp12 + o1);
  d[5] = descale<shift>(tmp12 - o1);
  d[3] = descale<shift>(tmp13 + o0);
  d[4] = descale<shift>(tmp13 - o0);
}

// Quantise (divide by 8*q rounding half away from zero, jcdctmgr.c) and dequantise (times q).
// The float32 division is exact here: numerator < 2^17, divisor >= 8, so the rounding error is
// below 1/divisor, the smallest distance from a non-integer quotient to an integer.
OBF_HD int quantize_dequantize(int coef, int q) {
  const int magnitude = coef < 0 ? -coef : coef;
  const int level = (int)((float)(magnitude + 4 * q) / (float)(8 * q));
  return (coef < 0 ? -level : level) * q;
}

// The lossy core on one 8x8 block of a sample plane, in place: level shift, forward DCT (rows
// then columns), quantise + dequantise, inverse DCT (columns then rows), range limit. Scalar
// form, one line at a time (the GPU's; the CPU runs roundtrip_block_simd below).
OBF_JPEG_HOT void roundtrip_block(unsigned char* block, index_t stride, const int* table) {
  int v[8][8];
  for (int r = 0; r < 8; ++r) {
    for (int c = 0; c < 8; ++c) v[r][c] = (int)block[r * stride + c] - 128;
  }
  for (int r = 0; r < 8; ++r) fdct_1d<true>(v[r]);  // rows
  for (int c = 0; c < 8; ++c) {                       // columns
    int line[8];
    for (int k = 0; k < 8; ++k) line[k] = v[k][c];
    fdct_1d<false>(line);
    // Natural order: v[vertical frequency][horizontal frequency], as the table.
    for (int k = 0; k < 8; ++k) line[k] = quantize_dequantize(line[k], table[k * 8 + c]);
    idct_1d<true>(line);  // inverse: columns first
    for (int k = 0; k < 8; ++k) v[k][c] = line[k];
  }
  for (int r = 0; r < 8; ++r) {  // then rows
    idct_1d<false>(v[r]);
    for (int c = 0; c < 8; ++c) block[r * stride + c] = (unsigned char)clamp_sample(v[r][c] + 128);
  }
}

#if !OBF_ON_DEVICE && defined(__GNUC__)
// Host form: the same 1-D transforms on GCC vectors of 8 lanes (SSE2 or AVX2 code depending on
// the function's target), i.e. 8 lines per call. Only the data movement differs from above.
typedef int lanes8i __attribute__((vector_size(32)));
typedef float lanes8f __attribute__((vector_size(32)));
// Unaligned view of 8 consecutive ints of a plane row (direct vector loads and stores).
typedef int lanes8i_unaligned __attribute__((vector_size(32), aligned(4), may_alias));

// 8x8 transpose of rows held as 8-lane vectors (three rounds of pairwise interleaves).
OBF_JPEG_HOT void transpose_lanes(lanes8i* m) {
  lanes8i t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(m[i], m[i + 1], lanes8i{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(m[i], m[i + 1], lanes8i{2, 10, 3, 11, 6, 14, 7, 15});
  }
  lanes8i u[8];
  for (int i = 0; i < 8; i += 4) {
    for (int j = 0; j < 2; ++j) {
      u[i + j] = __builtin_shuffle(t[i + j], t[i + j + 2], lanes8i{0, 1, 8, 9, 4, 5, 12, 13});
      u[i + j + 2] = __builtin_shuffle(t[i + j], t[i + j + 2], lanes8i{2, 3, 10, 11, 6, 7, 14, 15});
    }
  }
  for (int j = 0; j < 4; ++j) {
    m[j] = __builtin_shuffle(u[j], u[j + 4], lanes8i{0, 1, 2, 3, 8, 9, 10, 11});
    m[j + 4] = __builtin_shuffle(u[j], u[j + 4], lanes8i{4, 5, 6, 7, 12, 13, 14, 15});
  }
  // After the rounds the rows come out in the order 0, 2, 1, 3, 4, 6, 5, 7.
  const lanes8i r1 = m[1], r5 = m[5];
  m[1] = m[2];
  m[2] = r1;
  m[5] = m[6];
  m[6] = r5;
}

// quantize_dequantize on 8 lanes, in place.
OBF_JPEG_HOT void quantize_dequantize_lanes(lanes8i& coef, const lanes8i& q) {
  const lanes8i magnitude = coef < 0 ? -coef : coef;
  const lanes8f quotient = __builtin_convertvector(magnitude + 4 * q, lanes8f) / __builtin_convertvector(8 * q, lanes8f);
  const lanes8i level = __builtin_convertvector(quotient, lanes8i);  // truncation, as (int)
  coef = (coef < 0 ? -level : level) * q;
}

// Same as roundtrip_block, on a plane of int samples (so rows load and store as whole vectors).
OBF_JPEG_HOT void roundtrip_block_simd(int* block, index_t stride, const lanes8i* table_rows) {
  lanes8i m[8];
  for (int r = 0; r < 8; ++r) m[r] = *reinterpret_cast<const lanes8i_unaligned*>(block + r * stride) - 128;
  transpose_lanes(m);  // m[column]: lanes are rows
  fdct_1d<true>(m);    // rows (across columns)
  transpose_lanes(m);  // m[row]: lanes are horizontal frequencies
  fdct_1d<false>(m);   // columns -> m[vertical frequency][horizontal frequency]
  for (int k = 0; k < 8; ++k) quantize_dequantize_lanes(m[k], table_rows[k]);
  idct_1d<true>(m);    // columns
  transpose_lanes(m);  // m[horizontal frequency]: lanes are rows
  idct_1d<false>(m);   // rows -> m[column][row]
  transpose_lanes(m);
  for (int r = 0; r < 8; ++r) {
    lanes8i v = m[r] + 128;
    v = v < 0 ? 0 : v;
    v = v > 255 ? 255 : v;
    *reinterpret_cast<lanes8i_unaligned*>(block + r * stride) = v;
  }
}
#endif

// ----------------------------------------------------------------------------- per-sample forward steps
// (one thread per sample on the GPU; the CPU driver runs row loops over the same functions)

// Sample of component `component` of pixel (y, x) clamped into the image: the padding that
// repeats the last row and column (jcsample.c expand_right_edge, jcprepct.c expand_bottom_edge).
OBF_HD int component_at(const float* image, index_t channels, index_t h, index_t w, index_t y,
                        index_t x, int component) {
  const index_t plane = h * w, at = min_index(y, h - 1) * w + min_index(x, w - 1);
  const int r = to_sample(image[at]);
  if (channels == 1) return r;
  return rgb_to_component(r, to_sample(image[plane + at]), to_sample(image[2 * plane + at]), component);
}

// 4:2:0 chroma sample (row, col) of the padded plane: full-resolution columns are repeated
// to the right before downsampling, while rows past the last real chroma row repeat that
// downsampled row (jcprepct.c pads the downsampled planes to the block height).
OBF_HD int subsampled_chroma_at(const float* image, index_t h, index_t w, index_t small_h, index_t row,
                                index_t col, int component) {
  const index_t y = 2 * min_index(row, small_h - 1), x = 2 * col;
  return downsample_h2v2(component_at(image, 3, h, w, y, x, component),
                         component_at(image, 3, h, w, y, x + 1, component),
                         component_at(image, 3, h, w, y + 1, x, component),
                         component_at(image, 3, h, w, y + 1, x + 1, component), col);
}

// ----------------------------------------------------------------------------- linear backward
// The round trip with rounding and clamps removed and fixed-point constants replaced by the
// reals they approximate is x -> x + chroma-only smoothing: quantisation and DCT cancel. Its
// transpose, applied to the upstream gradient g, in two steps for 4:2:0 colour:
//   (1) per chroma sample: U^T applied to the chroma part of Mdec^T g (U = fancy upsampling
//       with the crop to H x W), result on the small grid;
//   (2) per pixel: Menc^T [ (Mdec^T g)_Y ; D^T (step 1) ] with D = 2x2 averaging of the
//       edge-padded plane.
// Grayscale: the identity. 4:4:4 colour: Menc^T Mdec^T g per pixel.

// Mdec = d(R,G,B)/d(Y,Cb,Cr) (jdcolor.c's constants); Menc = d(Y,Cb,Cr)/d(R,G,B) (jccolor.c).
OBF_HD float mdec_t_cb(float gr, float gg, float gb) { (void)gr; return -0.34414f * gg + 1.77200f * gb; }
OBF_HD float mdec_t_cr(float gr, float gg, float gb) { (void)gb; return 1.40200f * gr - 0.71414f * gg; }
OBF_HD float mdec_t_y(float gr, float gg, float gb) { return gr + gg + gb; }

OBF_HD void menc_t(float gy, float gcb, float gcr, float* out_r, float* out_g, float* out_b) {
  *out_r = 0.29900f * gy - 0.16874f * gcb + 0.50000f * gcr;
  *out_g = 0.58700f * gy - 0.33126f * gcb - 0.41869f * gcr;
  *out_b = 0.11400f * gy + 0.50000f * gcb - 0.08131f * gcr;
}

// Gradient reaching chroma component `component` (1 = Cb, 2 = Cr) of full-res pixel (y, x), or
// 0 outside the image (the decoder crops).
OBF_HD float chroma_grad_at(const float* grad, index_t h, index_t w, index_t y, index_t x, int component) {
  if (y < 0 || x < 0 || y >= h || x >= w) return 0.0f;
  const index_t plane = h * w, at = y * w + x;
  const float gr = grad[at], gg = grad[plane + at], gb = grad[2 * plane + at];
  return component == 1 ? mdec_t_cb(gr, gg, gb) : mdec_t_cr(gr, gg, gb);
}

// Where step (1) reads the chroma gradient: straight from the RGB gradient (GPU), or from a
// plane of chroma_grad_at values with a border of zeros one sample wide (CPU, computed once).
struct ChromaGradFromRGB {
  const float* grad;
  index_t h, w;
  int component;
  OBF_HD float operator()(index_t y, index_t x) const { return chroma_grad_at(grad, h, w, y, x, component); }
};
struct ChromaGradFromPlane {
  const float* plane;  // rows -1 .. 2*small_h, columns -1 .. 2*small_w
  index_t stride;
  OBF_HD float operator()(index_t y, index_t x) const { return plane[(y + 1) * stride + x + 1]; }
};

// Weights of the smooth 1-D fancy upsampling's transpose at small index i of n: outputs
// 2i-1 .. 2i+2 receive 1/4, 3/4, 3/4, 1/4 of it, plus the 1/4 of the clamped edge neighbour at
// i = 0 (output 0) and i = n-1 (output 2n-1).
OBF_HD void fancy_transpose_weights(index_t i, index_t n, float* weights) {
  weights[0] = 0.25f;
  weights[1] = i == 0 ? 1.0f : 0.75f;
  weights[2] = i == n - 1 ? 1.0f : 0.75f;
  weights[3] = 0.25f;
}

// Step (1) at small sample (row, col): all 4x4 terms, always in the same order (terms outside
// the image are exact zeros), so every driver sums identically.
template <typename Fetch>
OBF_HD float upsample_transpose_at(const Fetch& fetch, index_t small_h, index_t small_w, index_t row,
                                   index_t col) {
  if (!uses_fancy_upsampling(small_w)) {  // 2x2 replication
    return fetch(2 * row, 2 * col) + fetch(2 * row, 2 * col + 1) + fetch(2 * row + 1, 2 * col) +
           fetch(2 * row + 1, 2 * col + 1);
  }
  float wy[4], wx[4];
  fancy_transpose_weights(row, small_h, wy);
  fancy_transpose_weights(col, small_w, wx);
  float acc = 0.0f;
  for (int a = 0; a < 4; ++a) {
    float line = 0.0f;
    for (int b = 0; b < 4; ++b) line += wx[b] * fetch(2 * row - 1 + a, 2 * col - 1 + b);
    acc += wy[a] * line;
  }
  return acc;
}

// D^T at full-res pixel (y, x): the pixel is 1/4 of its chroma sample, counted twice along an
// axis where the image has an odd size and the pixel is the repeated last row/column.
OBF_HD float downsample_transpose_at(const float* small_grad, index_t small_w, index_t h, index_t w,
                                     index_t y, index_t x) {
  float weight = 0.25f;
  if (y == h - 1 && (y & 1) == 0) weight *= 2.0f;
  if (x == w - 1 && (x & 1) == 0) weight *= 2.0f;
  return weight * small_grad[(y >> 1) * small_w + (x >> 1)];
}

// Step (2) at pixel (y, x): writes the three input-gradient channels. `small_cb`/`small_cr`
// are step (1)'s planes (small_h x small_w), or null for 4:4:4 (chroma gradient unchanged).
OBF_HD void linear_backward_pixel(const float* grad, const float* small_cb, const float* small_cr,
                                  index_t small_w, index_t h, index_t w, index_t y, index_t x,
                                  float* grad_in) {
  const index_t plane = h * w, at = y * w + x;
  const float gr = grad[at], gg = grad[plane + at], gb = grad[2 * plane + at];
  const float gy = mdec_t_y(gr, gg, gb);
  float gcb, gcr;
  if (small_cb) {
    gcb = downsample_transpose_at(small_cb, small_w, h, w, y, x);
    gcr = downsample_transpose_at(small_cr, small_w, h, w, y, x);
  } else {
    gcb = mdec_t_cb(gr, gg, gb);
    gcr = mdec_t_cr(gr, gg, gb);
  }
  menc_t(gy, gcb, gcr, grad_in + at, grad_in + plane + at, grad_in + 2 * plane + at);
}

}  // namespace jpeg
}  // namespace obfgrad
