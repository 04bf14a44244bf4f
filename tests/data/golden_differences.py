"""Prints max |ours - authors'| on the golden arrays for every transformation, paper-profile
variant and library default side by side (the assertions live in tests/test_authors_golden.py).
"default" switches back only the option the variant sets (for TV: the border, in raster order).

    python tests/data/golden_differences.py     # from the repository root
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from obfgrad.defenses import BitDepthReduction, JPEGCompression, crop_rescale, resize_and_pad  # noqa: E402
from obfgrad.ops.quilt_op import quilt  # noqa: E402
from obfgrad.ops.thermometer_op import thermometer  # noqa: E402
from obfgrad.ops.tv_op import reference, tv_minimize  # noqa: E402

GOLDEN = np.load(Path(__file__).with_name("authors_ops.npz"))


def nchw(array: np.ndarray) -> torch.Tensor:
    array = array if array.ndim == 4 else array[None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().permute(0, 2, 3, 1).numpy()


def decode(codes: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) / np.float32(255)


def gap(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)).max())


def thermometer_gradient(backward: str) -> np.ndarray:
    x = (nchw(GOLDEN["therm_x255"]) / 255.0).requires_grad_(True)
    (thermometer(x, 16, backward=backward) * nchw(GOLDEN["therm_G"])).sum().backward()
    return nhwc(x.grad / 255.0)


def rows():
    x32, x299 = nchw(GOLDEN["x32"]), nchw(decode(GOLDEN["x299_u8"]))
    mask = torch.from_numpy(GOLDEN["tv_mask"])
    database = nchw(decode(GOLDEN["quilt_db_u8"]))
    chosen = torch.from_numpy(GOLDEN["quilt299_chosen"]).long()[None]
    size, top, left = GOLDEN["xie_r_top_left"].tolist()
    starts = torch.from_numpy(GOLDEN["guo_offsets_yx"][:1])
    xie = lambda geometry: resize_and_pad(x299, torch.tensor([size]), torch.tensor([[top, left]]),  # noqa: E731
                                          padded=331, geometry=geometry)[0, 0]
    yield "bit depth (x32)", gap(nhwc(BitDepthReduction(3)(x32)), GOLDEN["reduce_out"]), None
    yield ("jpeg (x32)", gap(nhwc(JPEGCompression(rounding="truncate")(x32)), GOLDEN["jpeg_out"]),
           gap(nhwc(JPEGCompression()(x32)), GOLDEN["jpeg_out"]))
    tv = lambda **options: nhwc(tv_minimize(x32, mask=mask, sweep="raster", **options))  # noqa: E731
    yield "tv native float32 (x32)", gap(tv(border="reflect"), GOLDEN["tv_out"]), gap(tv(), GOLDEN["tv_out"])
    exact = reference(x32.double(), mask=mask[:, None], sweep="raster", border="reflect")
    yield "tv reference float64 (x32)", gap(nhwc(exact), GOLDEN["tv_out"]), None
    yield ("thermometer BPDA gradient", gap(thermometer_gradient("soft_255"), GOLDEN["therm_grad255"]),
           gap(thermometer_gradient("soft"), GOLDEN["therm_grad255"]))
    yield ("quilting stitch (299)", gap(nhwc(quilt(x299, database, choices=chosen, stitch="authors"))[0],
                                        decode(GOLDEN["quilt299_out_u8"])),
           gap(nhwc(quilt(x299, database, choices=chosen))[0], decode(GOLDEN["quilt299_out_u8"])))
    yield "xie resize and pad (299, ch 0)", gap(xie("authors"), GOLDEN["xie_out299_ch0"]), gap(
        xie("centred"), GOLDEN["xie_out299_ch0"])
    yield ("guo crop rescale (299, ch 0)", gap(crop_rescale(x299, starts, geometry="authors")[0, :1],
                                               GOLDEN["guo_out299_ch0"]),
           gap(crop_rescale(x299, starts)[0, :1], GOLDEN["guo_out299_ch0"]))


if __name__ == "__main__":
    print(f"{'transformation':34} {'paper variant':>14} {'default':>10}")
    for name, variant, default in rows():
        print(f"{name:34} {variant:14.3g} {'(same)' if default is None else f'{default:.3g}':>10}")
