"""Non-differentiable preprocessing ops as torch custom ops: forward = native kernel, backward =
its paired BPDA kernel; each module also has a pure-torch reference.

One module per op, named like the op's function, so import the function from its module::

    from obfgrad.ops.thermometer import thermometer   # Buckman et al. 2018
    from obfgrad.ops.jpeg import jpeg                 # batched libjpeg-exact JPEG round trip
    from obfgrad.ops.tv import tv_minimize            # Guo et al. 2018 masked TV minimisation
    from obfgrad.ops.quilt import quilt               # Guo et al. 2018 image quilting

(The package does not re-export the functions: ``obfgrad.ops.jpeg`` stays the module.)
"""

from obfgrad.ops import jpeg, quilt, thermometer, tv

__all__ = ["jpeg", "quilt", "thermometer", "tv"]
