// Checks on the numpy buffers the Python layer hands to the CPU drivers. The Python layer
// validates user input once; these re-check what the kernels index with, so no call can
// reach memory outside its buffers even if the Python layer has a bug.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace obfgrad {

namespace py = pybind11;

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

// Rank and C-contiguity of a buffer named `name`; returns its shape.
template <typename T>
std::vector<long long> checked_shape(const carray<T>& a, const char* name, int rank) {
  if (a.ndim() != rank) {
    std::ostringstream msg;
    msg << name << ": expected a rank-" << rank << " buffer, got rank " << a.ndim();
    throw py::value_error(msg.str());
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": expected a C-contiguous buffer");
  }
  std::vector<long long> shape(rank);
  for (int i = 0; i < rank; ++i) shape[i] = static_cast<long long>(a.shape(i));
  return shape;
}

// Output buffers must be bound with py::arg(...).noconvert(): pybind11 would otherwise convert a
// non-contiguous or wrongly typed array into a temporary copy, the kernel would write into the
// copy and the caller's array would silently keep its old contents. With noconvert such a call
// is refused with a TypeError instead.
template <typename T>
void require_writable(carray<T>& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + ": output buffer is read-only");
}

inline void require_shape(const std::vector<long long>& got, const std::vector<long long>& want,
                          const char* name) {
  if (got != want) {
    std::ostringstream msg;
    msg << name << ": expected shape (";
    for (size_t i = 0; i < want.size(); ++i) msg << (i ? ", " : "") << want[i];
    msg << "), got (";
    for (size_t i = 0; i < got.size(); ++i) msg << (i ? ", " : "") << got[i];
    msg << ")";
    throw py::value_error(msg.str());
  }
}

}  // namespace obfgrad
