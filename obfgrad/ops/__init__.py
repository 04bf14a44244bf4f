"""Non-differentiable preprocessing ops as torch custom ops: forward = native kernel, backward =
its paired BPDA kernel; each module also has a pure-torch reference."""

from obfgrad.ops.jpeg import JPEG, jpeg
from obfgrad.ops.thermometer import Thermometer, thermometer
from obfgrad.ops.tv import TVMinimize, tv_minimize

__all__ = ["jpeg", "JPEG", "thermometer", "Thermometer", "tv_minimize", "TVMinimize"]
