"""JPEG q75 round trip (issue: native >= 5x Pillow in a loop and >= 2x simplejpeg in a loop, at
batch 256x3x32x32 and 16x3x299x299, 2 threads). Compare in one run:

    OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_jpeg.py --benchmark-group-by=group

Contenders, all from the same float NCHW batch to the same float NCHW result:
  * native: obfgrad.ops.jpeg_op.jpeg (C++ kernel, OpenMP over images);
  * pillow: Image.save(format="jpeg") + Image.open per image (ART's JpegCompression and the
    paper's code do this);
  * simplejpeg: encode_jpeg + decode_jpeg per image (libjpeg-turbo with SIMD, no Pillow);
  * reference: the pure-torch integer reference (the fallback without the native build);
  * native_linear_backward: the `linear` BPDA backward kernel on the same batch.

On a machine shared with other busy processes (more runnable threads than cores), OpenMP's
spin-waiting threads fight the other processes for the cores; ``OMP_WAIT_POLICY=passive``
keeps the native timings meaningful there. ``--benchmark-timer=time.process_time`` reports CPU
time instead of wall time (for native, the sum over its threads).

``python benchmarks/bench_jpeg.py`` prints the fidelity table instead: for each image set and
quality, the fraction of 8-bit values where native and Pillow differ by 0, 1, 2, >2.
``python benchmarks/bench_jpeg.py --cpu-time`` prints single-thread CPU times of every contender.
"""

import io
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from obfgrad.ops.jpeg_op import jpeg, reference

QUALITY = 75
SHAPES = {"256x3x32x32": (256, 3, 32, 32), "16x3x299x299": (16, 3, 299, 299)}
THREADS = int(os.environ.get("OBFGRAD_BENCH_THREADS", "2"))


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    from obfgrad import _native

    module = _native.native()
    if module is not None:
        module.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def _batch(shape):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def _uint8_images(x):
    return np.ascontiguousarray(torch.floor(x * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy())


def _to_float(arrays):
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def pillow_loop(x):
    out = []
    for image in _uint8_images(x):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="jpeg", quality=QUALITY)
        out.append(np.asarray(Image.open(buffer)))
    return _to_float(out)


def simplejpeg_loop(x):
    import simplejpeg

    out = []
    for image in _uint8_images(x):
        encoded = simplejpeg.encode_jpeg(image, quality=QUALITY, colorspace="RGB", colorsubsampling="420")
        out.append(simplejpeg.decode_jpeg(encoded, colorspace="RGB"))
    return _to_float(out)


@pytest.mark.parametrize("name", list(SHAPES))
def test_native(benchmark, name):
    benchmark.group = f"jpeg q75 {name}"
    x = _batch(SHAPES[name])
    benchmark(jpeg, x, QUALITY)


@pytest.mark.parametrize("name", list(SHAPES))
def test_pillow(benchmark, name):
    benchmark.group = f"jpeg q75 {name}"
    benchmark(pillow_loop, _batch(SHAPES[name]))


@pytest.mark.parametrize("name", list(SHAPES))
def test_simplejpeg(benchmark, name):
    pytest.importorskip("simplejpeg")
    benchmark.group = f"jpeg q75 {name}"
    benchmark(simplejpeg_loop, _batch(SHAPES[name]))


@pytest.mark.parametrize("name", list(SHAPES))
def test_reference(benchmark, name):
    benchmark.group = f"jpeg q75 {name}"
    benchmark.pedantic(reference, (_batch(SHAPES[name]), QUALITY), rounds=3, iterations=1)


@pytest.mark.parametrize("name", list(SHAPES))
def test_native_linear_backward(benchmark, name):
    benchmark.group = f"jpeg q75 {name}"
    grad_out = torch.randn(SHAPES[name], generator=torch.Generator().manual_seed(1))
    benchmark(torch.ops.obfgrad.jpeg_linear_backward, grad_out, True)


# ----------------------------------------------------------------------------- fidelity


def _natural_crops(size):
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry()]
    crops = []
    for photo in photos:
        for k in range(4):
            top = (photo.shape[0] - size) * k // 3
            left = (photo.shape[1] - size) * (3 - k) // 3
            crops.append(photo[top:top + size, left:left + size])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def _pillow_uint8(x, quality):
    out = []
    for image in _uint8_images(x):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="jpeg", quality=quality)
        out.append(np.asarray(Image.open(buffer)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(torch.int16)


def fidelity_report(file=sys.stdout):
    sets = {
        "natural 32x32 (20 crops)": _natural_crops(32),
        "natural 299x299 (20 crops)": _natural_crops(299),
        "random 37x45 (32)": _batch((32, 3, 37, 45)),
        "random 299x299 (4)": _batch((4, 3, 299, 299)),
    }
    print(f"{'image set':28s} {'q':>3s} {'|d|=0':>9s} {'|d|=1':>9s} {'|d|=2':>9s} {'|d|>2':>9s}", file=file)
    for name, x in sets.items():
        for quality in (10, 50, 75, 95):
            ours = torch.round(jpeg(x, quality) * 255).to(torch.int16)
            diff = (ours - _pillow_uint8(x, quality)).abs()
            fractions = [(diff == 0), (diff == 1), (diff == 2), (diff > 2)]
            cells = " ".join(f"{float(f.float().mean()):9.6f}" for f in fractions)
            print(f"{name:28s} {quality:3d} {cells}", file=file)


def cpu_time_report(file=sys.stdout, repeats=7):
    """Single-thread CPU time per contender (median of `repeats`): robust to other load."""
    import time

    from obfgrad import _native

    torch.set_num_threads(1)
    module = _native.native()
    if module is not None:
        module.set_num_threads(1)
    contenders = {"native": lambda x: jpeg(x, QUALITY), "pillow": pillow_loop, "simplejpeg": simplejpeg_loop,
                  "reference": lambda x: reference(x, QUALITY)}
    for name, shape in SHAPES.items():
        x = _batch(shape)
        times = {}
        for contender, fn in contenders.items():
            fn(x)
            runs = []
            for _ in range(repeats if contender != "reference" else 1):
                start = time.process_time()
                fn(x)
                runs.append(time.process_time() - start)
            times[contender] = sorted(runs)[len(runs) // 2]
        cells = ", ".join(f"{k} {v * 1e3:.2f} ms ({times[k] / times['native']:.1f}x native)" for k, v in times.items())
        print(f"{name}: {cells}", file=file)


if __name__ == "__main__":
    if "--cpu-time" in sys.argv:
        cpu_time_report()
    else:
        fidelity_report()
