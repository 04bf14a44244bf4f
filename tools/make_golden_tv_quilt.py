"""Writes tests/data/golden_tv_quilt.npz: small golden arrays for TV minimisation and image quilting.

    python tools/make_golden_tv_quilt.py [--out tests/data/golden_tv_quilt.npz]

An outside oracle for ``obfgrad.ops.tv_op`` and ``obfgrad.ops.quilt_op``: plain numpy, float64,
scalar loops written from the definitions (the module docstrings of the two ops and DESIGN.md's op
contract), and deliberately NOT importing obfgrad, so that a mistake shared by the native drivers
and the project's own pure-torch references shows up. The file is written with fixed zip
timestamps, so rerunning this script reproduces it byte for byte (its SHA-256 is recorded in the
tests).

Definitions used (from the ops' contracts):

* Philox4x32-10 (Salmon et al., SC 2011; Random123's round constants), counter = (i low, i high,
  stream low, stream high), key = (seed low, seed high); a uniform is ``(word0 >> 8) / 2**24``.
* TV keep mask: pixel (n, y, x) is kept iff ``uniform(seed, stream 0x7476, (n*H + y)*W + x) <
  keep_prob``, shared by the channels.
* TV minimisation: anisotropic split Bregman (Goldstein & Osher 2009) of
  ``|d_x u|_1 + |d_y u|_1 + w/2 sum_kept (u - x)^2`` with ``w = 2 / lambda_tv`` and
  ``lam = 2 w``, per channel, on a fixed ghost ring (top/left reflected: image row/column 1;
  bottom/right: the last row/column ("skimage") or the one before it ("reflect")). One
  iteration updates every pixel once (raster order, or the checkerboard colour (y + x) even
  first, then odd) with u computed from the four neighbours and the divergence of d - b, then
  d = shrink(grad u + b, 1/lam), b += grad u - d (grad u taken before the pixel's update); an
  image stops once the RMS change of u over all its channels is <= tol.
* TV at convergence, independently of the iteration: with every pixel kept, the fixed point of
  that iteration is the unique minimiser of
  ``E(u) = sum_TV-edges |D u - h| + w/2 |u - x|^2 + lam/2 sum_(top/left ghost edges) (u - g)^2``
  (the top/left ghost edges carry no Bregman variables, so the u-step penalises them
  quadratically). This script minimises E through its dual, a box-constrained QP, with
  L-BFGS-B, and stores the primal-dual gap: E is w-strongly convex, so the stored solution is
  within sqrt(2 gap / w) of the minimiser in l2.
* Quilting: every P x P patch (stride P - overlap) of the bottom/right edge-replicated image,
  as a channel-major vector, is matched to the database by squared l2 distance, neighbours
  ordered by (distance, index); the block takes neighbour floor(u K) (u = uniform(seed, stream =
  image index, counter = block index)); patches are stitched in raster order, "paste" writing
  whole patches, "min_cut" keeping the canvas left of the minimum vertical cut of the left
  overlap's channel-summed squared error and above the minimum horizontal cut of the top one
  (Efros & Freeman's dynamic programme: cumulative error down the strip, backtrace from the
  cheapest end through the cheapest of the three cells above).

float32 kernels and this float64 oracle can disagree on a discrete decision only when it is
nearly tied; the script checks that every decision it stores (neighbour order, pick, cut, TV
stopping test) has a clear margin, and refuses to write the file otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parent.parent
TV_MASK_STREAM = 0x7476
MASK32 = 0xFFFFFFFF
# The smallest relative gap a stored discrete decision of quilting may have: the op's float32
# distances (75 squared terms) and cut costs carry a relative rounding error below ~5e-6.
MARGIN = 1e-4
# The TV stopping test compares an RMS change of ~1e-3 computed in float32 by the op: its float32
# rounding error (~1e-6 per pixel change) is ~1e-3 of it, so the test needs a wider margin.
TV_STOP_MARGIN = 0.02


# ------------------------------------------------------------------------------------ Philox


def philox_uniform(seed: int, stream: int, counter: int) -> float:
    """Philox4x32-10 word 0 of block (counter, stream) under key seed, as a uniform in [0, 1)."""
    c = [counter & MASK32, (counter >> 32) & MASK32, stream & MASK32, (stream >> 32) & MASK32]
    k = [seed & MASK32, (seed >> 32) & MASK32]
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK32, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK32]
        k = [(k[0] + 0x9E3779B9) & MASK32, (k[1] + 0xBB67AE85) & MASK32]
    return (c[0] >> 8) / 16777216.0


# ------------------------------------------------------------------------------------ TV


def tv_keep_mask(n: int, h: int, w: int, keep_prob: float, seed: int) -> np.ndarray:
    mask = np.zeros((n, h, w), dtype=bool)
    for index in range(n * h * w):
        mask.flat[index] = philox_uniform(seed, TV_MASK_STREAM, index) < keep_prob
    return mask


def ghost_ring(image: np.ndarray, border: str) -> np.ndarray:
    """(H+2, W+2) float64 plane: the image inside its fixed ghost ring (corners unused)."""
    h, w = image.shape
    far_row = h - 2 if border == "reflect" and h > 1 else h - 1
    far_col = w - 2 if border == "reflect" and w > 1 else w - 1
    u = np.zeros((h + 2, w + 2))
    u[1:-1, 1:-1] = image
    u[0, 1:-1], u[1:-1, 0] = image[min(1, h - 1)], image[:, min(1, w - 1)]
    u[-1, 1:-1], u[1:-1, -1] = image[far_row], image[:, far_col]
    return u


def shrink(value: float, threshold: float) -> float:
    return float(np.sign(value)) * max(abs(value) - threshold, 0.0)


def sweep_order(h: int, w: int, sweep: str) -> list[tuple[int, int]]:
    pixels = [(y, x) for y in range(h) for x in range(w)]
    if sweep == "raster":
        return pixels
    return [p for p in pixels if sum(p) % 2 == 0] + [p for p in pixels if sum(p) % 2 == 1]


def bregman_pixel(state: dict, f: np.ndarray, kept: bool, weight: float, r: int, c: int) -> float:
    """One split-Bregman update at extended position (r, c); returns the squared change of u."""
    u, dx, dy, bx, by = (state[key] for key in ("u", "dx", "dy", "bx", "by"))
    lam = 2.0 * weight
    old = u[r, c]
    grad_x, grad_y = u[r, c + 1] - old, u[r + 1, c] - old
    s = (u[r + 1, c] + u[r - 1, c] + u[r, c + 1] + u[r, c - 1]
         + dx[r, c - 1] - dx[r, c] + dy[r - 1, c] - dy[r, c]
         - bx[r, c - 1] + bx[r, c] - by[r - 1, c] + by[r, c])
    new = (lam * s + weight * f[r - 1, c - 1]) / (weight + 4.0 * lam) if kept else s / 4.0
    dx[r, c] = shrink(grad_x + bx[r, c], 1.0 / lam)
    dy[r, c] = shrink(grad_y + by[r, c], 1.0 / lam)
    bx[r, c] += grad_x - dx[r, c]
    by[r, c] += grad_y - dy[r, c]
    u[r, c] = new
    return (new - old) ** 2


def tv_iterate(image: np.ndarray, kept: np.ndarray, lambda_tv: float, tol: float, max_iter: int, sweep: str,
               border: str) -> tuple[np.ndarray, int]:
    """One image (C, H, W), its keep mask (H, W): (output, iterations run)."""
    channels, h, w = image.shape
    weight = 2.0 / lambda_tv
    states = [{"u": ghost_ring(plane, border), **{key: np.zeros((h + 2, w + 2)) for key in ("dx", "dy", "bx", "by")}}
              for plane in image]
    order = sweep_order(h, w, sweep)
    for iteration in range(1, max_iter + 1):
        change2 = sum(bregman_pixel(state, plane, bool(kept[y, x]), weight, y + 1, x + 1)
                      for state, plane in zip(states, image) for y, x in order)
        rmse = np.sqrt(change2 / (channels * h * w))
        if tol > 0 and abs(rmse - tol) <= TV_STOP_MARGIN * tol:
            raise RuntimeError(f"TV stopping test nearly tied at iteration {iteration}: rmse {rmse!r}, tol {tol}")
        if rmse <= tol:
            break
    return np.stack([state["u"][1:-1, 1:-1] for state in states]), iteration


def tv_edges(h: int, w: int, border: str, image: np.ndarray):
    """The converged energy's terms for one plane: TV edges as (D, h) with |D u - h| and the
    quadratic ghost terms as (G diagonal, ghost values sum)."""
    ghost = ghost_ring(image, border)
    rows, offsets = [], []
    index = np.arange(h * w).reshape(h, w)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0)):  # forward difference to the right and down
                row = np.zeros(h * w)
                row[index[y, x]] = -1.0
                if y + dy < h and x + dx < w:
                    row[index[y + dy, x + dx]] = 1.0
                    offsets.append(0.0)
                else:  # the bottom / right ghost: |g - u| = |-u - (-g)|
                    offsets.append(-ghost[y + 1 + dy, x + 1 + dx])
                rows.append(row)
    quad, pull = np.zeros(h * w), np.zeros(h * w)
    for y in range(h):
        for x in range(w):
            for gy, gx in ((y, x + 1), (y + 1, x)):  # the top / left ghost of a first row / column
                if (gy == 0) or (gx == 0):
                    quad[index[y, x]] += 1.0
                    pull[index[y, x]] += ghost[gy, gx]
    return np.array(rows), np.array(offsets), quad, pull


def tv_converged(plane: np.ndarray, lambda_tv: float, border: str) -> tuple[np.ndarray, float]:
    """The minimiser of E (every pixel kept) via its dual; returns (u, primal-dual gap)."""
    h, w = plane.shape
    weight = 2.0 / lambda_tv
    lam = 2.0 * weight
    d, offset, quad, pull = tv_edges(h, w, border, plane)
    q_diag = weight + lam * quad  # E = |D u - o|_1 + 1/2 u'Qu - c'u + const, Q diagonal
    c = weight * plane.ravel() + lam * pull

    def primal_of(p):
        return (c - d.T @ p) / q_diag

    def dual(p):  # -min_u [p'(D u - o) + 1/2 u'Qu - c'u], minimised over |p| <= 1
        r = c - d.T @ p
        return 0.5 * np.sum(r * r / q_diag) + p @ offset, -d @ (r / q_diag) + offset

    result = minimize(dual, np.zeros(len(offset)), jac=True, method="L-BFGS-B", bounds=[(-1.0, 1.0)] * len(offset),
                      options={"maxiter": 100000, "ftol": 1e-16, "gtol": 1e-13, "maxcor": 50})
    u = primal_of(result.x)
    constant = 0.5 * weight * np.sum(plane ** 2) + 0.5 * lam * np.sum(
        [g * g for g in _ghost_values(plane, border)])
    primal_energy = np.abs(d @ u - offset).sum() + 0.5 * np.sum(q_diag * u * u) - c @ u + constant
    dual_energy = -result.fun + constant
    return u.reshape(h, w), float(primal_energy - dual_energy)


def _ghost_values(plane: np.ndarray, border: str) -> list[float]:
    h, w = plane.shape
    ghost = ghost_ring(plane, border)
    return [ghost[gy, gx] for y in range(h) for x in range(w) for gy, gx in ((y, x + 1), (y + 1, x))
            if gy == 0 or gx == 0]


# ------------------------------------------------------------------------------------ quilting


def edge_pad(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    def tiled(extent):
        return size if extent <= size else size + -(-(extent - size) // stride) * stride

    _, h, w = image.shape
    return np.pad(image, ((0, 0), (0, tiled(h) - h), (0, tiled(w) - w)), mode="edge")


def nearest(query: np.ndarray, database: np.ndarray, k: int) -> list[int]:
    """The k nearest rows by squared l2, ties to the smaller index; checks the order is clear."""
    dist = np.array([np.sum((query - row) ** 2) for row in database])
    order = sorted(range(len(database)), key=lambda i: (dist[i], i))
    ranked = dist[order[:k + 1]] if k < len(database) else dist[order[:k]]
    if np.any(np.diff(ranked) <= MARGIN * ranked[1:]):
        raise RuntimeError(f"nearly tied neighbour distances {ranked}")
    return order[:k]


def min_cut(err: np.ndarray) -> list[int]:
    """Efros & Freeman's cut down the rows of err (L, O): the column where each row switches."""
    length, width = err.shape
    cum = err.copy()
    for row in range(1, length):
        for col in range(width):
            cum[row, col] = err[row, col] + cum[row - 1, max(col - 1, 0):col + 2].min()

    def cheapest(values, lo):
        best = int(np.argmin(values))
        others = np.delete(values, best)
        if others.size and np.min(others) - values[best] <= MARGIN * max(values[best], 1e-3):
            raise RuntimeError(f"nearly tied cut costs {values}")
        return lo + best

    cut = [cheapest(cum[-1], 0)]
    for row in range(length - 2, -1, -1):
        lo = max(cut[-1] - 1, 0)
        cut.append(cheapest(cum[row, lo:min(cut[-1] + 1, width - 1) + 1], lo))
    return cut[::-1]


def place(canvas: np.ndarray, patch: np.ndarray, top: int, left: int, overlap: int, stitch: str) -> None:
    size = patch.shape[1]
    region = canvas[:, top:top + size, left:left + size]
    take = np.ones((size, size), dtype=bool)
    if stitch == "min_cut":
        err = np.sum((patch - region) ** 2, axis=0)
        if left > 0:
            cut = min_cut(err[:, :overlap])
            take &= np.arange(size)[None, :] >= np.array(cut)[:, None]
        if top > 0:
            cut = min_cut(err[:overlap, :].T)
            take &= np.arange(size)[:, None] >= np.array(cut)[None, :]
    region[:, take] = patch[:, take]


def quilt_image(image: np.ndarray, image_index: int, database: np.ndarray, k: int, overlap: int, seed: int,
                stitch: str) -> tuple[np.ndarray, np.ndarray]:
    """One image (C, H, W): (quilted image, the database row of every block)."""
    channels, height, width = image.shape
    size = database.shape[2]
    stride = size - overlap
    padded = edge_pad(image, size, stride)
    rows, cols = (padded.shape[1] - size) // stride + 1, (padded.shape[2] - size) // stride + 1
    flat = database.reshape(len(database), -1)
    canvas = np.zeros_like(padded)
    chosen = []
    for block in range(rows * cols):
        top, left = divmod(block, cols)
        top, left = top * stride, left * stride
        neighbours = nearest(padded[:, top:top + size, left:left + size].ravel(), flat, k)
        scaled = philox_uniform(seed, image_index, block) * k
        if scaled - np.floor(scaled) < MARGIN or np.ceil(scaled) - scaled < MARGIN:
            raise RuntimeError(f"pick {scaled} of block {block} is next to a boundary")
        chosen.append(neighbours[min(int(scaled), k - 1)])
        place(canvas, database[chosen[-1]], top, left, overlap, stitch)
    return canvas[:, :height, :width], np.array(chosen)


# ------------------------------------------------------------------------------------ the file


def tv_arrays() -> dict[str, np.ndarray]:
    """Masked TV (keep_prob 0.5) in every sweep x border, once stopped by the tolerance (the
    tolerance is 1e-2: near the paper's 1e-3 the RMS change of an 8x8 inpainting creeps down by
    ~1% an iteration, too slowly for a clear stopping decision) and once run for a fixed 60
    iterations; then the converged minimiser with every pixel kept."""
    rng = np.random.default_rng(20180718)
    x = rng.random((2, 2, 9, 8)).astype(np.float32)
    seed, keep_prob, lambda_tv = 12345, 0.5, 0.03
    mask = tv_keep_mask(2, 9, 8, keep_prob, seed)
    arrays = {"tv_x": x, "tv_mask": mask, "tv_params": np.array([seed, keep_prob, lambda_tv], dtype=np.float64)}
    for case, tol, max_iter in (("stop", 1e-2, 100), ("fixed", 0.0, 60)):
        arrays[f"tv_{case}_tol_max_iter"] = np.array([tol, max_iter], dtype=np.float64)
        for sweep in ("raster", "red_black"):
            for border in ("skimage", "reflect"):
                outs, iterations = zip(*(tv_iterate(x[n].astype(np.float64), mask[n], lambda_tv, tol, max_iter,
                                                    sweep, border) for n in range(2)))
                arrays[f"tv_{case}_{sweep}_{border}_out"] = np.stack(outs)
                arrays[f"tv_{case}_{sweep}_{border}_iterations"] = np.array(iterations, dtype=np.int32)
    smooth = rng.random((1, 2, 8, 7)).astype(np.float32)
    arrays["tv_converged_x"] = smooth
    for border in ("skimage", "reflect"):
        planes, gaps = zip(*(tv_converged(plane.astype(np.float64), lambda_tv, border) for plane in smooth[0]))
        arrays[f"tv_converged_{border}_out"] = np.stack(planes)[None]
        arrays[f"tv_converged_{border}_gap"] = np.array(gaps)
    return arrays


def quilt_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20010812)
    database = rng.random((40, 3, 5, 5)).astype(np.float32)
    arrays = {"quilt_database": database}
    inputs = {"exact": rng.random((2, 3, 8, 8)).astype(np.float32),  # 2 x 2 blocks, no padding
              "padded": rng.random((1, 3, 10, 9)).astype(np.float32)}  # padded to 11 x 11: 3 x 3 blocks
    seed, overlap = 77, 2
    arrays["quilt_params"] = np.array([seed, overlap], dtype=np.int64)
    for name, x in inputs.items():
        arrays[f"quilt_{name}_x"] = x
        for k in (1, 3):
            for stitch in ("min_cut", "paste"):
                outs, chosen = zip(*(quilt_image(x[n].astype(np.float64), n, database.astype(np.float64), k, overlap,
                                                 seed, stitch) for n in range(len(x))))
                arrays[f"quilt_{name}_k{k}_{stitch}_out"] = np.stack(outs).astype(np.float32)
                arrays[f"quilt_{name}_k{k}_chosen"] = np.stack(chosen)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """An .npz that np.load reads, with fixed timestamps and order (reproducible bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "golden_tv_quilt.npz")
    args = parser.parse_args(argv)
    arrays = {**tv_arrays(), **quilt_arrays()}
    digest = write_npz(args.out, arrays)
    for name in sorted(arrays):
        if name.endswith(("_iterations", "_gap")):
            print(f"{name}: {arrays[name].tolist()}")
    print(f"{args.out}: {args.out.stat().st_size} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
