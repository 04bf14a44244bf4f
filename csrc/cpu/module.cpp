// The extension module obfgrad._C: runs every op's registration (see registry.h) and
// reports how it was built, for obfgrad.backend_info().
#include <omp.h>

#include "registry.h"

#ifndef OBFGRAD_VERSION
#define OBFGRAD_VERSION "unknown"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "obfgrad native CPU kernels (OpenMP); see csrc/ for the sources.";
  m.attr("__version__") = OBFGRAD_VERSION;
  m.def("openmp_max_threads", []() { return omp_get_max_threads(); },
        "Threads an OpenMP parallel region uses by default.");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("n: expected a positive number of threads");
    omp_set_num_threads(n);
  }, py::arg("n"), "Set the OpenMP thread count for obfgrad's kernels.");
  py::dict build;
#if defined(__VERSION__)
  build["compiler"] = __VERSION__;
#endif
#if defined(__AVX512F__)
  build["simd"] = "avx512";
#elif defined(__AVX2__)
  build["simd"] = "avx2";
#else
  build["simd"] = "sse2";
#endif
#if defined(__SANITIZE_ADDRESS__)
  build["sanitizers"] = true;
#else
  build["sanitizers"] = false;
#endif
  build["openmp"] = _OPENMP;
  m.attr("build_info") = build;
  for (auto fn : obfgrad::op_registry()) fn(m);
}
