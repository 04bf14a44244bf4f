"""Validation of public inputs. Each check raises ``TypeError``/``ValueError`` whose message
starts with the argument's name and says what was expected."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_images(
    x,
    name: str = "x",
    *,
    channels: Optional[Sequence[int]] = None,
    in_unit_range: bool = True,
    allow_empty: bool = True,
) -> torch.Tensor:
    """A float NCHW batch, finite, optionally with values in [0, 1] and given channel counts."""
    check_image_batch(x, name, channels=channels)
    if x.numel() == 0:
        if not allow_empty:
            raise ValueError(f"{name}: expected a non-empty batch")
        return x
    x_values = x.detach()
    if not bool(torch.isfinite(x_values).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    if in_unit_range:
        lo, hi = float(x_values.min()), float(x_values.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: expected values in [0, 1], got range [{lo:.6g}, {hi:.6g}]")
    return x


def check_image_batch(x, name: str = "x", *, channels: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The structure of an image batch (a floating-point NCHW tensor, given channel counts),
    without reading its values."""
    check_tensor(x, name)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor (float32 images in [0, 1]), got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D NCHW batch, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] not in channels:
        raise ValueError(f"{name}: expected {' or '.join(map(str, channels))} channels, got {x.shape[1]}")
    return x


def check_float32_images(x, name: str = "x", *, channels: Optional[Sequence[int]] = None) -> torch.Tensor:
    """What a registered op (``torch.ops.obfgrad.*``) takes: a float32 NCHW tensor. The public
    functions convert other float dtypes and check the values; the ops only check the structure."""
    check_image_batch(x, name, channels=channels)
    if x.dtype != torch.float32:
        raise TypeError(f"{name}: the registered op takes float32, got {x.dtype} (the public function "
                        "converts other float dtypes)")
    return x


def check_int(value, name: str, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected an int <= {high}, got {value}")
    return value


def check_float(value, name: str, *, low: Optional[float] = None, high: Optional[float] = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        bound = ">=" if low_inclusive else ">"
        raise ValueError(f"{name}: expected a number {bound} {low}, got {value}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        bound = "<=" if high_inclusive else "<"
        raise ValueError(f"{name}: expected a number {bound} {high}, got {value}")
    return value


def check_generator(generator, name: str = "generator"):
    """None (torch's default generator) or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


#: Seeds a user gives reach torch, numpy and scikit-learn alike; scikit-learn takes 0 <= seed < 2**32.
SEED_LIMIT = 2**32
#: Seeds obfgrad draws or derives itself (a randomized defense's per-call seed, an evaluation's
#: attack/probe/judge streams) lie in [0, SEED_BOUND): ``torch.manual_seed`` and the kernels' int64
#: counters take them, and a base seed plus a batch index stays inside both.
SEED_BOUND = 2**62


def check_seed(seed, name: str = "seed") -> int:
    """A seed every library the project seeds accepts: an int in [0, 2**32)."""
    return check_int(seed, name, low=0, high=SEED_LIMIT - 1)


def check_device(device, name: str = "device") -> torch.device:
    """A torch device this machine has: cpu, or an available cuda[:N]."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ValueError(f"{name}: not a torch device: {device!r} ({str(error).splitlines()[0]}); "
                         "expected cpu or cuda[:N]") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: {device!r}: only cpu and cuda[:N] devices are supported")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {device!r}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def finite_loss(loss: torch.Tensor, where: str) -> float:
    """The value of a training loss, or :class:`FloatingPointError` when it is NaN or Inf: a
    diverged run stops at once instead of caching NaN weights for every later run to use."""
    value = float(loss.detach())
    if value != value or value in (float("inf"), float("-inf")):
        raise FloatingPointError(f"{where}: the training loss became {value}: training diverged "
                                 "(lower the learning rate, check the images)")
    return value
