"""Non-differentiable preprocessing ops as torch custom ops: forward = native kernel, backward =
its paired BPDA kernel; each module also has a pure-torch ``*_reference``."""

from obfgrad.ops.thermometer import Thermometer, thermometer

__all__ = ["thermometer", "Thermometer"]
