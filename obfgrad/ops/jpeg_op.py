"""JPEG round trip (encode + decode at a given quality) as a batched op, with BPDA backwards.

The forward is the lossy part of baseline JPEG exactly as libjpeg-turbo performs it when
Pillow saves (``Image.save(format="jpeg", quality=q)``) and re-opens an image: fixed-point
RGB -> YCbCr, 4:2:0 chroma downsampling (libjpeg's h2v2 box filter with its alternating
1, 2 rounding bias), the integer "islow" forward DCT (Loeffler-Ligtenberg-Moschytz, as in
IJG's jfdctint.c), quantisation with the IJG tables (JPEG standard Annex K) scaled by
``quality``, dequantisation, the integer "islow" inverse DCT (jidctint.c), "fancy"
(triangle) chroma upsampling (jdsample.c), fixed-point YCbCr -> RGB and rounding to 8 bits.
Entropy coding is lossless and skipped. The formulas and constants below are those
published in the IJG/libjpeg-turbo sources and the JFIF specification; this module
re-implements them from their description.

What Pillow does (checked against Pillow 13 / libjpeg-turbo, tests/test_jpeg.py): ``save``
uses libjpeg's defaults, i.e. the islow DCT and 4:2:0 chroma subsampling at *every* quality
(``subsampling=0`` gives 4:4:4), and quantisation tables clamped to 255 (baseline); ``open``
decodes with the islow IDCT and fancy upsampling. Grayscale ("L") images are one component,
without colour conversion or subsampling. Edge blocks are padded by repeating the last column
and row, as libjpeg does (for 4:2:0 chroma: full-resolution columns, downsampled rows).

Float to 8 bits (``rounding``): ``"nearest"`` (the default) is ``floor(255 x + 0.5)`` computed in
float32 (round half up; users who feed Pillow ``(255 x).round()`` differ only on exact halves);
``"truncate"`` is ``floor(255 x)``, i.e. ``(x * 255).astype(np.uint8)``, which is what Athalye et
al.'s ``defend_jpeg`` (``inputtransformations/defense.py``) feeds Pillow. The two agree on images
of 8-bit values ``k/255``; elsewhere truncation lowers every value by half a level on average
(about half the values of an attack iterate land one level apart), which is why rounding is
the default and truncation the paper profile's choice (it reproduces the authors' outputs bit
for bit, ``tests/test_authors_golden.py``). The result is ``v / 255`` in float32. Results are
bit-identical to Pillow on every image and quality tested.

Two backwards (BPDA, Athalye, Carlini & Wagner, ICML 2018, Section 4.1):

* ``"identity"``: the gradient passes straight through (the paper's choice for JPEG);
* ``"linear"``: the exact gradient of the round trip with every rounding replaced by the
  identity, every clamp removed and every fixed-point constant replaced by the real number
  it approximates. Quantisation and the DCT then cancel, and what is left is a linear map:
  colour transform, 2x2 chroma averaging, triangle upsampling, inverse colour transform.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from obfgrad import _native
from obfgrad._checks import check_choice, check_float32_images, check_image_batch, check_int

__all__ = ["jpeg", "reference", "linear_surrogate", "quantization_tables",
           "SUBSAMPLINGS", "BACKWARDS", "ROUNDINGS"]

SUBSAMPLINGS = ("4:2:0", "4:4:4")
BACKWARDS = ("identity", "linear")
#: Float -> 8-bit sample: round to nearest (default) or truncate (Athalye et al.'s defend_jpeg).
ROUNDINGS = ("nearest", "truncate")

# IJG default tables: JPEG standard (ITU-T T.81) Annex K, tables K.1 (luminance) and K.2
# (chrominance), in natural (row-major) order.
_LUMA_BASE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA_BASE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32


def quantization_tables(quality: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (luma, chroma) 8x8 int32 quantisation tables libjpeg uses at ``quality``.

    IJG's quality scaling (jcparam.c): percentage s = 5000/q for q < 50, else 200 - 2q;
    entry = (base * s + 50) // 100 clamped to [1, 255] (baseline, as Pillow requests).
    """
    check_int(quality, "quality", low=1, high=100)  # 0 divided by zero, 101 gave negative scales
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality

    def scaled(base):
        return torch.tensor([min(max((b * scale + 50) // 100, 1), 255) for b in base],
                            dtype=torch.int32).reshape(8, 8)

    return scaled(_LUMA_BASE), scaled(_CHROMA_BASE)


# --------------------------------------------------------------------------- fixed point
# Colour conversion (jccolor.c / jdcolor.c): 16 fractional bits, FIX(x) = round(x * 2^16).
_SCALEBITS = 16
_ONE_HALF = 1 << (_SCALEBITS - 1)
_CBCR_OFFSET = 128 << _SCALEBITS


def _fix16(x: float) -> int:
    return int(x * (1 << _SCALEBITS) + 0.5)


# The islow DCTs (jfdctint.c / jidctint.c): 13 fractional bits, 2 extra bits between passes.
_CONST_BITS = 13
_PASS1_BITS = 2


def _fix13(x: float) -> int:
    return int(x * (1 << _CONST_BITS) + 0.5)


# libjpeg's FIX_0_298631336 ... FIX_3_072711026 (each name holds its value's first digits)
_F_0_298, _F_0_390, _F_0_541, _F_0_765, _F_0_899, _F_1_175 = map(
    _fix13, (0.298631336, 0.390180644, 0.541196100, 0.765366865, 0.899976223, 1.175875602))
_F_1_501, _F_1_847, _F_1_961, _F_2_053, _F_2_562, _F_3_072 = map(
    _fix13, (1.501321110, 1.847759065, 1.961570560, 2.053119869, 2.562915447, 3.072711026))


def _descale(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Right shift by ``bits`` rounding half up (libjpeg's DESCALE; >> is arithmetic)."""
    return (x + (1 << (bits - 1))) >> bits


# --------------------------------------------------------------------------- reference steps


def _to_samples(x: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """Float images in [0, 1] -> 8-bit samples floor(x * 255 + 0.5) (or floor(x * 255) when
    truncating), computed in float32."""
    scaled = x.to(torch.float32) * 255.0
    return torch.floor(scaled if rounding == "truncate" else scaled + 0.5).to(torch.int64)


def _truncate_to_levels(x: torch.Tensor) -> torch.Tensor:
    """floor(255 x) / 255 in float32: the truncated 8-bit value as a float that the kernels'
    round-to-nearest maps back to exactly that value (float32(k / 255) * 255 == k for every k)."""
    return torch.floor(x * 255.0) / 255.0


def _rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) samples -> YCbCr samples, libjpeg's fixed point (jccolor.c)."""
    r, g, b = rgb.unbind(1)
    y = (_fix16(0.29900) * r + _fix16(0.58700) * g + _fix16(0.11400) * b + _ONE_HALF) >> 16
    # ONE_HALF - 1 keeps Cb, Cr <= 255 (jccolor.c).
    cb = (-_fix16(0.16874) * r - _fix16(0.33126) * g + _fix16(0.5) * b
          + _CBCR_OFFSET + _ONE_HALF - 1) >> 16
    cr = (_fix16(0.5) * r - _fix16(0.41869) * g - _fix16(0.08131) * b
          + _CBCR_OFFSET + _ONE_HALF - 1) >> 16
    return torch.stack((y, cb, cr), 1)


def _ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """YCbCr samples -> RGB samples, libjpeg's fixed point (jdcolor.c), clamped to 0..255."""
    y, cb, cr = ycc.unbind(1)
    cb = cb - 128
    cr = cr - 128
    r = y + ((_fix16(1.40200) * cr + _ONE_HALF) >> 16)
    g = y + ((-_fix16(0.34414) * cb + _ONE_HALF - _fix16(0.71414) * cr) >> 16)
    b = y + ((_fix16(1.77200) * cb + _ONE_HALF) >> 16)
    return torch.stack((r, g, b), 1).clamp(0, 255)


def _replicate_pad(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Extend (N, h, w) to (N, height, width) by repeating the last row and column."""
    rows = torch.arange(height, device=plane.device).clamp(max=plane.shape[1] - 1)
    cols = torch.arange(width, device=plane.device).clamp(max=plane.shape[2] - 1)
    return plane[:, rows][:, :, cols]


def _downsample_h2v2(plane: torch.Tensor) -> torch.Tensor:
    """2x2 box average with libjpeg's rounding bias 1, 2, 1, 2, ... along each row (jcsample.c)."""
    sums = plane[:, 0::2, 0::2] + plane[:, 0::2, 1::2] + plane[:, 1::2, 0::2] + plane[:, 1::2, 1::2]
    bias = 1 + (torch.arange(sums.shape[2], device=plane.device) % 2)
    return (sums + bias) >> 2


def _fdct_1d(d, pass_no: int):
    """One pass of the islow forward DCT (jfdctint.c) over the 8 tensors ``d``."""
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    out = [None] * 8
    if pass_no == 1:  # rows: keep PASS1_BITS extra bits
        out[0] = (tmp10 + tmp11) << _PASS1_BITS
        out[4] = (tmp10 - tmp11) << _PASS1_BITS
        shift = _CONST_BITS - _PASS1_BITS
    else:  # columns: remove them
        out[0] = _descale(tmp10 + tmp11, _PASS1_BITS)
        out[4] = _descale(tmp10 - tmp11, _PASS1_BITS)
        shift = _CONST_BITS + _PASS1_BITS
    z1 = (tmp12 + tmp13) * _F_0_541
    out[2] = _descale(z1 + tmp13 * _F_0_765, shift)
    out[6] = _descale(z1 - tmp12 * _F_1_847, shift)
    # Odd part: the rotations of Loeffler et al.'s flow graph.
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F_1_175
    tmp4, tmp5, tmp6, tmp7 = tmp4 * _F_0_298, tmp5 * _F_2_053, tmp6 * _F_3_072, tmp7 * _F_1_501
    z1, z2 = z1 * -_F_0_899, z2 * -_F_2_562
    z3, z4 = z3 * -_F_1_961 + z5, z4 * -_F_0_390 + z5
    out[7] = _descale(tmp4 + z1 + z3, shift)
    out[5] = _descale(tmp5 + z2 + z4, shift)
    out[3] = _descale(tmp6 + z2 + z3, shift)
    out[1] = _descale(tmp7 + z1 + z4, shift)
    return out


def _idct_1d(d, pass_no: int):
    """One pass of the islow inverse DCT (jidctint.c) over the 8 tensors ``d``."""
    z1 = (d[2] + d[6]) * _F_0_541
    tmp2 = z1 - d[6] * _F_1_847
    tmp3 = z1 + d[2] * _F_0_765
    tmp0 = (d[0] + d[4]) << _CONST_BITS
    tmp1 = (d[0] - d[4]) << _CONST_BITS
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    t0, t1, t2, t3 = d[7], d[5], d[3], d[1]
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _F_1_175
    t0, t1, t2, t3 = t0 * _F_0_298, t1 * _F_2_053, t2 * _F_3_072, t3 * _F_1_501
    z1, z2 = z1 * -_F_0_899, z2 * -_F_2_562
    z3, z4 = z3 * -_F_1_961 + z5, z4 * -_F_0_390 + z5
    t0, t1, t2, t3 = t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4
    # Pass 1 keeps PASS1_BITS extra bits; pass 2 also removes the DCT's factor 8.
    shift = _CONST_BITS - _PASS1_BITS if pass_no == 1 else _CONST_BITS + _PASS1_BITS + 3
    return [_descale(tmp10 + t3, shift), _descale(tmp11 + t2, shift),
            _descale(tmp12 + t1, shift), _descale(tmp13 + t0, shift),
            _descale(tmp13 - t0, shift), _descale(tmp12 - t1, shift),
            _descale(tmp11 - t2, shift), _descale(tmp10 - t3, shift)]


def _along(fn, blocks: torch.Tensor, dim: int, pass_no: int) -> torch.Tensor:
    return torch.stack(fn(list(blocks.unbind(dim)), pass_no), dim)


def _quantize(coef: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Divide by 8*q rounding half away from zero (jcdctmgr.c; the DCT output is scaled by 8)."""
    divisor = table.to(torch.int64) * 8
    magnitude = (coef.abs() + divisor // 2) // divisor
    return torch.where(coef < 0, -magnitude, magnitude)


def _roundtrip_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Samples (N, h, w), h and w multiples of 8 -> decoded samples (N, h, w)."""
    n, h, w = plane.shape
    blocks = (plane - 128).reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = _along(_fdct_1d, _along(_fdct_1d, blocks, -1, 1), -2, 2)
    dequantized = _quantize(coef, table) * table.to(torch.int64)
    samples = _along(_idct_1d, _along(_idct_1d, dequantized, -2, 1), -1, 2)
    samples = (samples + 128).clamp(0, 255)
    return samples.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _luma_roundtrip(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    _, h, w = plane.shape
    padded = _replicate_pad(plane, _ceil_to(h, 8), _ceil_to(w, 8))
    return _roundtrip_plane(padded, table)[:, :h, :w]


def _chroma_roundtrip_h2v2(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Full-resolution chroma (N, H, W) -> downsample, round trip, upsample -> (N, H, W).

    libjpeg pads the full-resolution rows on the right to the MCU width and the bottom to an
    even count (by repetition), downsamples, then repeats the last *downsampled* row to fill
    the last block row (jcprepct.c, jcsample.c).
    """
    _, height, width = plane.shape
    small_h, small_w = -(-height // 2), -(-width // 2)
    full = _replicate_pad(plane, 2 * small_h, _ceil_to(width, 16))
    small = _downsample_h2v2(full)
    small = _replicate_pad(small, _ceil_to(small_h, 8), small.shape[2])
    decoded = _roundtrip_plane(small, table)[:, :small_h, :small_w]
    return _upsample_h2v2(decoded)[:, :height, :width]


def _edge_neighbours(planes: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each entry's previous and next neighbour along ``dim`` (1: rows, 2: columns), the edge
    entries repeated."""
    size = planes.shape[dim]
    index = torch.arange(size, device=planes.device)
    return (planes.index_select(dim, (index - 1).clamp(min=0)),
            planes.index_select(dim, (index + 1).clamp(max=size - 1)))


def _upsample_h2v2(small: torch.Tensor) -> torch.Tensor:
    """Double both sizes: libjpeg-turbo's "fancy" triangle filter (jdsample.c), or plain
    replication when the downsampled width is at most 2 (libjpeg-turbo's rule)."""
    n, h, w = small.shape
    if w <= 2:
        return small.repeat_interleave(2, 1).repeat_interleave(2, 2)
    above, below = _edge_neighbours(small, 1)
    # Vertical: 3/4 of the nearer row + 1/4 of the farther one, kept as a sum (x4).
    colsum = torch.stack((3 * small + above, 3 * small + below), 2).reshape(n, 2 * h, w)
    left, right = _edge_neighbours(colsum, 2)
    # Horizontal, same weights; biases 8 and 7 alternate the rounding direction.
    out = torch.stack(((3 * colsum + left + 8) >> 4, (3 * colsum + right + 7) >> 4), 3)
    return out.reshape(n, 2 * h, 2 * w)


def reference(x: torch.Tensor, quality: int = 75, subsampling: str = "4:2:0",
              rounding: str = "nearest") -> torch.Tensor:
    """Pure-torch JPEG round trip in libjpeg's integer arithmetic: the oracle and the fallback.

    Same contract as :func:`jpeg` (no autograd); slow but exact.
    """
    check_image_batch(x, "x", channels=(1, 3))
    check_choice(subsampling, "subsampling", SUBSAMPLINGS)  # any other once ran as 4:4:4
    check_choice(rounding, "rounding", ROUNDINGS)
    luma_table, chroma_table = (t.to(x.device) for t in quantization_tables(quality))
    samples = _to_samples(x, rounding)
    if samples.shape[1] == 1:
        out = _luma_roundtrip(samples[:, 0], luma_table)[:, None]
    else:
        ycc = _rgb_to_ycbcr(samples)
        planes = [_luma_roundtrip(ycc[:, 0], luma_table)]
        for c in (1, 2):
            if subsampling == "4:2:0":
                planes.append(_chroma_roundtrip_h2v2(ycc[:, c], chroma_table))
            else:
                planes.append(_luma_roundtrip(ycc[:, c], chroma_table))
        out = _ycbcr_to_rgb(torch.stack(planes, 1))
    return (out.to(torch.float32) / 255.0).to(x.dtype)


# --------------------------------------------------------------------------- linear surrogate
# The fixed-point constants of the colour transforms, as the reals they approximate.
_ENCODE_MATRIX = ((0.29900, 0.58700, 0.11400),
                  (-0.16874, -0.33126, 0.50000),
                  (0.50000, -0.41869, -0.08131))
_DECODE_MATRIX = ((1.0, 0.0, 1.40200),
                  (1.0, -0.34414, -0.71414),
                  (1.0, 1.77200, 0.0))


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix (the transform the islow integer DCT approximates)."""
    k = torch.arange(8, dtype=dtype, device=device)[:, None]
    n = torch.arange(8, dtype=dtype, device=device)[None, :]
    basis = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return basis


def _smooth_plane_roundtrip(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT, divide by q, multiply by q, inverse DCT, on whole blocks, without rounding."""
    n, h, w = plane.shape
    padded = _replicate_pad(plane, _ceil_to(h, 8), _ceil_to(w, 8))
    ph, pw = padded.shape[1:]
    blocks = padded.reshape(n, ph // 8, 8, pw // 8, 8).permute(0, 1, 3, 2, 4)
    basis = _dct_matrix(plane.dtype, plane.device)
    q = table.to(plane.dtype).to(plane.device)
    coef = basis @ blocks @ basis.T
    blocks = basis.T @ ((coef / q) * q) @ basis
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, ph, pw)[:, :h, :w]


def _smooth_upsample_h2v2(small: torch.Tensor) -> torch.Tensor:
    n, h, w = small.shape
    if w <= 2:
        return small.repeat_interleave(2, 1).repeat_interleave(2, 2)
    above, below = _edge_neighbours(small, 1)
    tall = torch.stack((0.75 * small + 0.25 * above, 0.75 * small + 0.25 * below), 2).reshape(n, 2 * h, w)
    left, right = _edge_neighbours(tall, 2)
    return torch.stack((0.75 * tall + 0.25 * left, 0.75 * tall + 0.25 * right), 3).reshape(n, 2 * h, 2 * w)


def linear_surrogate(x: torch.Tensor, quality: int = 75, subsampling: str = "4:2:0") -> torch.Tensor:
    """The round trip with every rounding and clamp removed and every fixed-point constant
    replaced by the real number it approximates: differentiable, and linear up to a constant.

    This is the function whose exact gradient ``backward="linear"`` returns. Quantisation and
    the DCT cancel (``quality`` has no effect beyond float round-off); what remains is the
    colour transform, 2x2 chroma averaging of the edge-padded plane, triangle upsampling and
    the inverse colour transform. Grayscale images come back unchanged.
    """
    check_image_batch(x, "x", channels=(1, 3))
    check_choice(subsampling, "subsampling", SUBSAMPLINGS)
    luma_table, chroma_table = quantization_tables(quality)
    samples = x * 255.0
    if x.shape[1] == 1:
        out = _smooth_plane_roundtrip(samples[:, 0], luma_table)[:, None]
        return out / 255.0
    encode = torch.tensor(_ENCODE_MATRIX, dtype=x.dtype, device=x.device)
    decode = torch.tensor(_DECODE_MATRIX, dtype=x.dtype, device=x.device)
    offset = torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    ycc = torch.einsum("ij,njhw->nihw", encode, samples) + offset
    height, width = x.shape[2:]
    planes = [_smooth_plane_roundtrip(ycc[:, 0], luma_table)]
    for c in (1, 2):
        plane = ycc[:, c]
        if subsampling == "4:2:0":
            small_h, small_w = -(-height // 2), -(-width // 2)
            full = _replicate_pad(plane, 2 * small_h, 2 * small_w)
            small = (full[:, 0::2, 0::2] + full[:, 0::2, 1::2] + full[:, 1::2, 0::2] + full[:, 1::2, 1::2]) / 4
            small = _smooth_plane_roundtrip(small, chroma_table)
            plane = _smooth_upsample_h2v2(small)[:, :height, :width]
        else:
            plane = _smooth_plane_roundtrip(plane, chroma_table)
        planes.append(plane)
    out = torch.einsum("ij,njhw->nihw", decode, torch.stack(planes, 1) - offset)
    return out / 255.0


# --------------------------------------------------------------------------- dispatch

_MODE_CODE = {"identity": 0, "linear": 1}



def _plane_geometry(height: int, width: int, subsample: bool):
    """Padded plane sizes, as plane_geometry in jpeg.h computes them."""
    small_h, small_w = (-(-height // 2), -(-width // 2)) if subsample else (height, width)
    return _ceil_to(height, 8), _ceil_to(width, 8), _ceil_to(small_h, 8), _ceil_to(small_w, 8), small_h, small_w


def _forward_cuda(x: torch.Tensor, luma: torch.Tensor, chroma: torch.Tensor, subsample: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    subsample = subsample and c == 3
    luma_h, luma_w, chroma_h, chroma_w, small_h, _ = _plane_geometry(h, w, subsample)
    device = x.device
    luma_plane = torch.empty((n, luma_h, luma_w), dtype=torch.uint8, device=device)
    chroma_planes = torch.empty((n, 2 if c == 3 else 0, chroma_h, chroma_w), dtype=torch.uint8, device=device)
    out = torch.empty_like(x)
    luma_t = luma.to(device).flatten().contiguous()
    chroma_t = chroma.to(device).flatten().contiguous()
    launch = _native.launch_cuda
    launch("jpeg", "jpeg_encode_luma", luma_plane.numel(),
           (x, luma_plane, n, c, h, w, luma_h, luma_w), device=device)
    launch("jpeg", "jpeg_roundtrip_blocks", luma_plane.numel() // 64,
           (luma_plane, n, luma_h, luma_w, luma_t), device=device)
    if c == 3:
        launch("jpeg", "jpeg_encode_chroma", chroma_planes.numel(),
               (x, chroma_planes, n, h, w, chroma_h, chroma_w, small_h, int(subsample)), device=device)
        launch("jpeg", "jpeg_roundtrip_blocks", chroma_planes.numel() // 64,
               (chroma_planes, 2 * n, chroma_h, chroma_w, chroma_t), device=device)
    launch("jpeg", "jpeg_decode", n * h * w,
           (luma_plane, chroma_planes, out, n, c, h, w, luma_w, chroma_h, chroma_w, int(subsample)),
           device=device)
    return out


def _forward_impl(x: torch.Tensor, quality: int, subsample: bool, truncate: bool = False) -> torch.Tensor:
    # Dense NCHW in, dense NCHW out: the kernels index a C-contiguous buffer, so a channels_last
    # or sliced input is copied first and every layout gives the same answer.
    x = x.contiguous()
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if truncate:  # the kernels round to nearest; feed them the truncated levels
        x = _truncate_to_levels(x)
    luma, chroma = quantization_tables(quality)
    backend = _native.choose_backend("jpeg", x.device)
    if backend == "cuda":
        return _forward_cuda(x, luma, chroma, subsample)
    if backend == "reference":
        return reference(x, quality, "4:2:0" if subsample else "4:4:4")
    out = torch.empty(x.shape, dtype=torch.float32)
    _native.native().jpeg_forward(x.numpy(), out.numpy(), luma.flatten().numpy(), chroma.flatten().numpy(), subsample)
    return out


def _upsample_h2v2_transpose(grad: torch.Tensor, small_w: int) -> torch.Tensor:
    """Transpose of :func:`_smooth_upsample_h2v2` for (N, 2h, 2w) gradients."""
    n, tall_h, wide_w = grad.shape
    if small_w <= 2:
        return grad.reshape(n, tall_h // 2, 2, small_w, 2).sum((2, 4))

    def along_last(g: torch.Tensor) -> torch.Tensor:
        even, odd = g[..., 0::2], g[..., 1::2]
        size = even.shape[-1]
        index = torch.arange(size, device=g.device)
        out = 0.75 * (even + odd)
        out = out.index_add(-1, (index - 1).clamp(min=0), 0.25 * even)
        return out.index_add(-1, (index + 1).clamp(max=size - 1), 0.25 * odd)

    return along_last(along_last(grad).transpose(1, 2)).transpose(1, 2)


def _replicate_pad_transpose(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Transpose of :func:`_replicate_pad`: fold the repeated rows and columns back."""
    n, padded_h, padded_w = grad.shape
    rows = torch.arange(padded_h, device=grad.device).clamp(max=height - 1)
    cols = torch.arange(padded_w, device=grad.device).clamp(max=width - 1)
    folded = grad.new_zeros(n, height, padded_w).index_add(1, rows, grad)
    return grad.new_zeros(n, height, width).index_add(2, cols, folded)


def _linear_backward_reference(grad_out: torch.Tensor, subsample: bool) -> torch.Tensor:
    """Pure-torch transpose of :func:`linear_surrogate` (the fallback of the native kernel)."""
    if grad_out.shape[1] == 1:
        return grad_out.clone()
    encode = torch.tensor(_ENCODE_MATRIX, dtype=grad_out.dtype, device=grad_out.device)
    decode = torch.tensor(_DECODE_MATRIX, dtype=grad_out.dtype, device=grad_out.device)
    grad_ycc = torch.einsum("ij,nihw->njhw", decode, grad_out)
    if subsample:
        n, _, height, width = grad_out.shape
        small_h, small_w = -(-height // 2), -(-width // 2)
        chroma = grad_ycc[:, 1:].reshape(2 * n, height, width)
        chroma = torch.nn.functional.pad(chroma, (0, 2 * small_w - width, 0, 2 * small_h - height))
        small = _upsample_h2v2_transpose(chroma, small_w)
        full = small.repeat_interleave(2, 1).repeat_interleave(2, 2) / 4
        chroma = _replicate_pad_transpose(full, height, width).reshape(n, 2, height, width)
        grad_ycc = torch.cat((grad_ycc[:, :1], chroma), 1)
    return torch.einsum("ij,nihw->njhw", encode, grad_ycc)


def _linear_backward_cuda(grad_out: torch.Tensor, subsample: bool) -> torch.Tensor:
    n, c, h, w = grad_out.shape
    grad_in = torch.empty_like(grad_out)
    if c == 1:
        grad_in.copy_(grad_out)
        return grad_in
    subsample = subsample and c == 3
    *_, small_h, small_w = _plane_geometry(h, w, subsample)
    small = torch.empty((n, 2, small_h, small_w) if subsample else (0,), dtype=torch.float32, device=grad_out.device)
    if subsample:
        _native.launch_cuda("jpeg", "jpeg_linear_upsample_transpose", small.numel(),
                            (grad_out, small, n, h, w, small_h, small_w), device=grad_out.device)
    _native.launch_cuda("jpeg", "jpeg_linear_backward", n * h * w,
                        (grad_out, small, grad_in, n, h, w, small_h, small_w, int(subsample)),
                        device=grad_out.device)
    return grad_in


def _backward_impl(grad_out: torch.Tensor, subsample: bool) -> torch.Tensor:
    grad_out = grad_out.contiguous()
    if grad_out.numel() == 0:
        return torch.zeros(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device)
    backend = _native.choose_backend("jpeg", grad_out.device)
    if backend == "cuda":
        return _linear_backward_cuda(grad_out, subsample)
    if backend == "reference":
        return _linear_backward_reference(grad_out, subsample)
    grad_in = torch.empty(grad_out.shape, dtype=torch.float32)
    _native.native().jpeg_backward_linear(grad_out.numpy(), grad_in.numpy(), subsample)
    return grad_in


# --------------------------------------------------------------------------- torch ops


def _check_images(x) -> None:
    """check_images(x, "x", channels=(1, 3)) with the value checks in one pass over the data.

    check_images reads the batch three times (isfinite, min, max), which costs as much as the
    native round trip itself; aminmax reads it once and propagates NaN.
    """
    check_image_batch(x, "x", channels=(1, 3))
    if x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("x: contains NaN or Inf")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"x: expected values in [0, 1], got range [{lo:.6g}, {hi:.6g}]")



def _check_op_arguments(x: torch.Tensor, quality: int, mode: int) -> None:
    # The registered ops are callable directly (torch.ops.obfgrad.*): check what the kernels rely on.
    check_float32_images(x, "x", channels=(1, 3))
    check_int(quality, "quality", low=1, high=100)
    check_choice(mode, "mode", tuple(_MODE_CODE.values()))


@torch.library.custom_op("obfgrad::jpeg_roundtrip", mutates_args=())
def _roundtrip_op(x: torch.Tensor, quality: int, subsample: bool, mode: int, truncate: bool = False) -> torch.Tensor:
    _check_op_arguments(x, quality, mode)
    return _forward_impl(x, quality, subsample, truncate)


@_roundtrip_op.register_fake
def _roundtrip_fake(x: torch.Tensor, quality: int, subsample: bool, mode: int, truncate: bool = False) -> torch.Tensor:
    _check_op_arguments(x, quality, mode)
    return x.new_empty(x.shape)


@torch.library.custom_op("obfgrad::jpeg_linear_backward", mutates_args=())
def _linear_backward_op(grad_out: torch.Tensor, subsample: bool) -> torch.Tensor:
    check_image_batch(grad_out, "grad_out", channels=(1, 3))
    return _backward_impl(grad_out.to(torch.float32), subsample)


@_linear_backward_op.register_fake
def _linear_backward_fake(grad_out: torch.Tensor, subsample: bool) -> torch.Tensor:
    check_image_batch(grad_out, "grad_out", channels=(1, 3))
    return grad_out.new_empty(grad_out.shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    subsample, mode = inputs[2], inputs[3]
    ctx.subsample = subsample
    ctx.mode = mode


def _roundtrip_backward(ctx, grad_out):
    if ctx.mode == _MODE_CODE["identity"]:
        return grad_out, None, None, None, None
    return _linear_backward_op(grad_out, ctx.subsample), None, None, None, None


torch.library.register_autograd("obfgrad::jpeg_roundtrip", _roundtrip_backward, setup_context=_setup_context)


def jpeg(x: torch.Tensor, quality: int = 75, *, subsampling: str = "4:2:0",
         backward: str = "identity", rounding: str = "nearest") -> torch.Tensor:
    """JPEG-compress and decompress a batch of images, as Pillow does, with a BPDA gradient.

    Forward: ``x`` is quantised to 8 bits as ``floor(255 x + 0.5)`` (``rounding="truncate"``:
    ``floor(255 x)``, as Athalye et al.'s ``defend_jpeg``), encoded as baseline JPEG
    at ``quality`` and decoded, all in libjpeg-turbo's integer arithmetic (islow DCTs, fancy
    upsampling), and returned as ``v / 255``. It equals
    ``Image.open(save(Image.fromarray(u8), format="jpeg", quality=quality))`` bit for bit.
    Guo et al. (ICLR 2018) use JPEG at quality 75 as an input transformation; Athalye, Carlini
    & Wagner (ICML 2018, Section 5.2) break it with BPDA, the identity on the backward pass.

    Args:
        x: images in ``[0, 1]``, float (computed in float32; the output has ``x``'s dtype),
            1 (grayscale) or 3 (RGB) channels, any height and width.
        quality: IJG quality 1..100 (Pillow's default 75): quantisation tables of the JPEG
            standard's Annex K scaled by ``5000/q`` percent below 50, ``200 - 2q`` above,
            clamped to 1..255.
        subsampling: ``"4:2:0"`` (Pillow's default) or ``"4:4:4"`` (``subsampling=0``).
        backward: ``"identity"`` (straight through, the paper's choice) or ``"linear"``: the
            exact gradient of :func:`linear_surrogate`, the round trip without rounding.
        rounding: float to 8 bits, ``"nearest"`` (default; unbiased) or ``"truncate"``
            (``(x * 255).astype(uint8)``, what Athalye et al.'s ``defend_jpeg`` in
            ``inputtransformations/defense.py`` does; the paper profile's choice).

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``, ``C`` in ``{1, 3}``.

    Example:
        >>> import torch
        >>> from obfgrad.ops.jpeg_op import jpeg
        >>> x = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
        >>> y = jpeg(x, quality=75)
        >>> round(float(y[0, 0, 0, 0].detach()) * 255)  # flat grey survives JPEG
        128
        >>> y.sum().backward()
        >>> float(x.grad.min()), float(x.grad.max())  # identity backward
        (1.0, 1.0)
    """
    _check_images(x)
    check_int(quality, "quality", low=1, high=100)
    check_choice(subsampling, "subsampling", SUBSAMPLINGS)
    check_choice(backward, "backward", BACKWARDS)
    check_choice(rounding, "rounding", ROUNDINGS)
    out = _roundtrip_op(x.to(torch.float32).contiguous(), quality, subsampling == "4:2:0", _MODE_CODE[backward],
                        rounding == "truncate")
    return out if x.dtype == torch.float32 else out.to(x.dtype)
