// Each csrc/cpu/<op>.cpp registers its bindings with OBF_REGISTER_OP, so adding an op never
// touches a shared file: module.cpp runs every registered function when Python imports _C.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

namespace obfgrad {

using RegisterFn = void (*)(pybind11::module_&);

inline std::vector<RegisterFn>& op_registry() {
  static std::vector<RegisterFn> registry;
  return registry;
}

struct OpRegistration {
  explicit OpRegistration(RegisterFn fn) { op_registry().push_back(fn); }
};

}  // namespace obfgrad

#define OBF_REGISTER_OP(name, fn) static ::obfgrad::OpRegistration obf_registration_##name(fn)
