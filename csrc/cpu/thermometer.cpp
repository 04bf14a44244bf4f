// CPU driver of the thermometer encoding: OpenMP over (image, channel) planes, kernel body in
// obfgrad/thermometer.h.
#include "obfgrad/thermometer.h"

#include <vector>

#include "buffers.h"
#include "registry.h"

namespace obfgrad {
namespace {

namespace th = thermometer;

void check_levels(int levels) {
  if (levels < 2) throw py::value_error("levels: expected an int >= 2");
}

// x: (N, C, H, W) float32; out: (N, C*levels, H, W) float32, written in place.
void thermometer_forward(const carray<float>& x, carray<float>& out, int levels) {
  check_levels(levels);
  auto xs = checked_shape(x, "x", 4);
  auto os = checked_shape(out, "out", 4);
  require_shape(os, {xs[0], xs[1] * levels, xs[2], xs[3]}, "out");
  require_writable(out, "out");
  const index_t planes = xs[0] * xs[1], plane = xs[2] * xs[3];
  const float scale = 0.99999f * (float)levels;
  const float* src = x.data();
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
#pragma omp parallel
  {
    std::vector<int> buckets(static_cast<size_t>(plane));
#pragma omp for schedule(static)
    for (index_t p = 0; p < planes; ++p) {
      const float* xp = src + p * plane;
      for (index_t i = 0; i < plane; ++i) buckets[i] = th::bucket(xp[i], scale);
      // Plane by plane, so every store is sequential: the output is L times the input and the
      // loop is bound by writing it.
      float* op = dst + p * plane * levels;
      for (int k = 0; k < levels; ++k) {
        float* row = op + (index_t)k * plane;
        for (index_t i = 0; i < plane; ++i) row[i] = th::bit(buckets[i], k);
      }
    }
  }
}

// grad_in (N, C, H, W) = BPDA backward of grad_out (N, C*levels, H, W) at x.
void thermometer_backward(const carray<float>& x, const carray<float>& grad_out,
                          carray<float>& grad_in, int levels, int mode) {
  check_levels(levels);
  if (mode != th::SOFT && mode != th::STRAIGHT_THROUGH && mode != th::SOFT_255)
    throw py::value_error("mode: expected 0 (soft), 1 (straight-through) or 2 (soft on the 0-255 scale)");
  auto xs = checked_shape(x, "x", 4);
  require_shape(checked_shape(grad_out, "grad_out", 4), {xs[0], xs[1] * levels, xs[2], xs[3]}, "grad_out");
  require_shape(checked_shape(grad_in, "grad_in", 4), xs, "grad_in");
  require_writable(grad_in, "grad_in");
  const index_t planes = xs[0] * xs[1], plane = xs[2] * xs[3];
  const float slope = th::soft_slope(levels);
  const float* xp = x.data();
  const float* gp = grad_out.data();
  float* dst = grad_in.mutable_data();
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
  for (index_t p = 0; p < planes; ++p) {
    const float* g = gp + p * plane * levels;
    for (index_t i = 0; i < plane; ++i) {
      dst[p * plane + i] = th::backward_element(xp[p * plane + i], g + i, plane, levels, slope, mode);
    }
  }
}

void register_thermometer(py::module_& m) {
  m.def("thermometer_forward", &thermometer_forward, py::arg("x"), py::arg("out").noconvert(), py::arg("levels"),
        "Thermometer encoding of x (N,C,H,W) into out (N,C*levels,H,W).");
  m.def("thermometer_backward", &thermometer_backward, py::arg("x"), py::arg("grad_out"),
        py::arg("grad_in").noconvert(), py::arg("levels"), py::arg("mode"),
        "BPDA backward: mode 0 soft thermometer, 1 straight-through, 2 soft thermometer evaluated on the "
        "0-255 scale as Athalye et al.'s attack graph.");
}

}  // namespace

OBF_REGISTER_OP(thermometer, register_thermometer);

}  // namespace obfgrad
