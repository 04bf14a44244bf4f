"""A float64 transcription of the raster loop of Athalye et al.'s split Bregman
(``inputtransformations/defense.py:bregman``, anishathalye/obfuscated-gradients): the TV tests'
oracle for the op's raster sweep, and the pure-Python contender that benchmarks/bench_tv.py times."""

import math

import numpy as np


def _shrink(s, threshold):
    return s - threshold if s > threshold else (s + threshold if s < -threshold else 0.0)


def paper_bregman(image, mask, weight, eps, max_iter, border="skimage"):
    """The paper's masked split-Bregman loop in float64 (raster order, joint stopping rule).

    image: (C, H, W) float64 numpy; mask: (H, W) bool. Returns (u, iterations).
    """
    dims, rows, cols = image.shape
    u = np.zeros((dims, rows + 2, cols + 2))
    dx, dy, bx, by = (np.zeros_like(u) for _ in range(4))
    far = 2 if border == "reflect" else 1  # the bottom/right ghost copies row H - far
    u[:, 1:-1, 1:-1] = image
    u[:, 0, 1:-1] = image[:, min(1, rows - 1)]
    u[:, 1:-1, 0] = image[:, :, min(1, cols - 1)]
    u[:, -1, 1:-1] = image[:, max(rows - far, 0)]
    u[:, 1:-1, -1] = image[:, :, max(cols - far, 0)]
    lam = 2.0 * weight
    iteration, rmse = 0, math.inf
    while iteration < max_iter and rmse > eps:
        rmse = 0.0
        for k in range(dims):
            for r in range(1, rows + 1):
                for c in range(1, cols + 1):
                    uprev = u[k, r, c]
                    ux, uy = u[k, r, c + 1] - uprev, u[k, r + 1, c] - uprev
                    s = (u[k, r + 1, c] + u[k, r - 1, c] + u[k, r, c + 1] + u[k, r, c - 1]
                         + dx[k, r, c - 1] - dx[k, r, c] + dy[k, r - 1, c] - dy[k, r, c]
                         - bx[k, r, c - 1] + bx[k, r, c] - by[k, r - 1, c] + by[k, r, c])
                    if mask[r - 1, c - 1]:
                        unew = (lam * s + weight * image[k, r - 1, c - 1]) / (weight + 4 * lam)
                    else:  # the weight -> 0 limit: a dropped pixel has no data term
                        unew = s / 4.0
                    u[k, r, c] = unew
                    rmse += (unew - uprev) ** 2
                    dxx, dyy = _shrink(ux + bx[k, r, c], 1 / lam), _shrink(uy + by[k, r, c], 1 / lam)
                    dx[k, r, c], dy[k, r, c] = dxx, dyy
                    bx[k, r, c] += ux - dxx
                    by[k, r, c] += uy - dyy
        rmse = math.sqrt(rmse / (rows * cols * dims))
        iteration += 1
    return u[:, 1:-1, 1:-1], iteration
