"""Non-differentiable preprocessing ops as torch custom ops: forward = native kernel, backward =
its paired BPDA kernel; each module also has a pure-torch reference.

One module per op, ``<op>_op``, holding the op's function, its reference and its kernels'
dispatch; the package re-exports the functions::

    from obfgrad.ops import thermometer   # Buckman et al. 2018 (obfgrad.ops.thermometer_op)
    from obfgrad.ops import jpeg          # batched libjpeg-exact JPEG round trip (obfgrad.ops.jpeg_op)
    from obfgrad.ops import tv_minimize   # Guo et al. 2018 masked TV minimisation (obfgrad.ops.tv_op)
    from obfgrad.ops import quilt         # Guo et al. 2018 image quilting (obfgrad.ops.quilt_op)

plus :class:`~obfgrad.ops.bpda.BPDA`, the straight-through primitive (re-exported by
:mod:`obfgrad.attacks`). The ops are functions; each op's ``nn.Module`` is its defense in
:mod:`obfgrad.defenses` (``Thermometer``, ``JPEGCompression``, ``TVMinimization``,
``ImageQuilting``).
"""

from obfgrad.ops.bpda import BPDA
from obfgrad.ops.jpeg_op import jpeg
from obfgrad.ops.quilt_op import quilt
from obfgrad.ops.thermometer_op import thermometer
from obfgrad.ops.tv_op import tv_minimize

__all__ = ["BPDA", "jpeg", "quilt", "thermometer", "tv_minimize"]
