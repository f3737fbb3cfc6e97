"""Procedural trigger patterns and vectorised ways to apply them.

The literature takes several triggers from image files (Hello Kitty for Blend,
the Trojan watermark, the Adaptive-Patch stickers); here they are seeded
procedural substitutes, so nothing is read from disk or downloaded. Geometry
is specified for 32x32 images and scaled with :func:`scaled` to other sizes.

Every ``apply``-style function takes a uint8 batch ``(N, H, W, C)`` and returns
a new uint8 batch; the input is never modified.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray

Box = tuple[int, int, int, int]  # top, left, height, width
Corner = Literal["bottom_right", "bottom_left", "top_right", "top_left"]
FloatArray = NDArray[np.float32]
UInt8Array = NDArray[np.uint8]

REFERENCE_SIZE = 32


def pattern_rng(pattern_seed: int | None, rng: np.random.Generator) -> np.random.Generator:
    """A generator for trigger textures: fixed by ``pattern_seed`` or split from ``rng``."""
    seed = int(rng.integers(2**63)) if pattern_seed is None else pattern_seed
    return np.random.default_rng(seed)


def scaled(length: float, size: int, minimum: int = 1) -> int:
    """``length`` (given for 32-pixel images) scaled to ``size`` pixels."""
    return max(minimum, round(length * size / REFERENCE_SIZE))


def to_uint8(x: NDArray[np.floating]) -> UInt8Array:
    """Round and clip floats on the 0..255 scale to uint8."""
    out: UInt8Array = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


def corner_box(h: int, w: int, size: int, corner: Corner = "bottom_right", margin: int = 0) -> Box:
    """A ``size``x``size`` box ``margin`` pixels from an image corner."""
    top = h - size - margin if corner.startswith("bottom") else margin
    left = w - size - margin if corner.endswith("right") else margin
    if top < 0 or left < 0:
        raise ValueError(f"a {size}px trigger with margin {margin} does not fit {h}x{w}")
    return top, left, size, size


def checker(size: int, channels: int) -> UInt8Array:
    """Black/white checkerboard ``(size, size, channels)``; the top-left pixel is white."""
    ij = np.add.outer(np.arange(size), np.arange(size))
    board = np.where(ij % 2 == 0, 255, 0).astype(np.uint8)
    return np.repeat(board[:, :, None], channels, axis=2)


def paste(
    x: UInt8Array,
    pattern: UInt8Array,
    top: int,
    left: int,
    alpha: float = 1.0,
    mask: NDArray[np.floating] | None = None,
) -> UInt8Array:
    """Blend ``pattern`` (h, w, C) into every image at (top, left) with opacity ``alpha``.

    ``mask`` (h, w) in [0, 1] restricts the pattern to a shape inside its box.
    """
    h, w = pattern.shape[:2]
    out = x.copy()
    region = out[:, top : top + h, left : left + w].astype(np.float32)
    a = np.float32(alpha) * (np.ones((h, w), np.float32) if mask is None else mask)
    a3 = a.astype(np.float32)[None, :, :, None]
    out[:, top : top + h, left : left + w] = to_uint8(region + a3 * (pattern - region))
    return out


def blend(
    x: UInt8Array, pattern: NDArray[np.floating] | UInt8Array, alpha: float | FloatArray
) -> UInt8Array:
    """``(1 - alpha) x + alpha pattern``; ``alpha`` a scalar or a per-pixel map ``(N, H, W)``."""
    xf = x.astype(np.float32)
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, :, :, None]
    return to_uint8(xf + a * (np.asarray(pattern, np.float32) - xf))


def _upsample(coarse: NDArray[np.floating], h: int, w: int) -> FloatArray:
    """Bilinear upsampling of ``(C, h0, w0)`` to ``(C, h, w)``."""
    t = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[None]
    up = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)
    out: FloatArray = up[0].numpy()
    return out


def texture(
    h: int, w: int, channels: int, rng: np.random.Generator, n_shapes: int = 4
) -> FloatArray:
    """Low-frequency colour texture with sharp edges, ``(h, w, C)`` on 0..255.

    A smooth field (a random 4x4 grid upsampled) overlaid with ``n_shapes``
    random hard-edged rectangles and stripes: a stand-in for a natural photo
    used as a blend key.
    """
    field = _upsample(rng.random((channels, 4, 4)), h, w)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    for _ in range(n_shapes):
        r0, r1 = np.sort(rng.integers(0, h + 1, 2))
        c0, c1 = np.sort(rng.integers(0, w + 1, 2))
        inside = (rows >= r0) & (rows < max(r1, r0 + 2)) & (cols >= c0) & (cols < max(c1, c0 + 2))
        colour = rng.random(channels).astype(np.float32)[:, None, None]
        field = np.where(inside[None], 0.3 * field + 0.7 * colour, field)
    lo = field.min(axis=(1, 2), keepdims=True)
    hi = field.max(axis=(1, 2), keepdims=True)
    norm = (field - lo) / np.maximum(hi - lo, 1e-6)
    out: FloatArray = (255.0 * norm).transpose(1, 2, 0).astype(np.float32)
    return out


def colour_patch(size: int, channels: int, rng: np.random.Generator) -> UInt8Array:
    """A random high-contrast colour patch ``(size, size, C)`` made of 2x2 cells."""
    cells = -(-size // 2)
    palette = rng.choice(np.array([0, 64, 192, 255], np.uint8), size=(cells, cells, channels))
    patch = np.repeat(np.repeat(palette, 2, axis=0), 2, axis=1)[:size, :size]
    return np.ascontiguousarray(patch)


def bright_blob(size: int, channels: int, rng: np.random.Generator) -> UInt8Array:
    """A bright random pattern ``(size, size, C)`` with values in 128..255."""
    coarse = rng.random((channels, 3, 3))
    smooth = _upsample(coarse, size, size).transpose(1, 2, 0)
    speckle = rng.random((size, size, channels))
    return to_uint8(128.0 + 127.0 * (0.6 * smooth + 0.4 * speckle))


def sine_pattern(h: int, w: int, channels: int, delta: float, frequency: float) -> FloatArray:
    """Horizontal sinusoid ``delta * sin(2 pi j f / W)`` as a signed ``(h, w, C)`` offset."""
    j = np.arange(w, dtype=np.float32)
    wave = delta * np.sin(2.0 * np.pi * j * frequency / w)
    out: FloatArray = np.broadcast_to(wave[None, :, None], (h, w, channels)).astype(np.float32)
    return out


def add_offset(x: UInt8Array, offset: NDArray[np.floating]) -> UInt8Array:
    """``clip(x + offset)`` for an additive trigger (SIG, residuals)."""
    return to_uint8(x.astype(np.float32) + offset)


def piece_masks(h: int, w: int, grid: int, chosen: NDArray[np.bool_]) -> FloatArray:
    """Per-sample pixel masks ``(N, h, w)`` from chosen grid pieces ``(N, grid, grid)``."""
    rows = np.arange(h) * grid // h
    cols = np.arange(w) * grid // w
    out: FloatArray = chosen[:, rows][:, :, cols].astype(np.float32)
    return out
