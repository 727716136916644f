"""The drawing surface of the face painter: a batch canvas and anti-aliased shapes.

Shapes give a signed distance d (face units, negative inside); `Canvas.cover` turns it
into coverage = clip(0.5 - d / pixel, 0, 1), which anti-aliases edges. Arrays are laid
out (rgb, rows, cols, batch): a box of pixels is a few long contiguous runs and
per-image values broadcast along the fast axis (an (N, 3) colour against a trailing rgb
axis of 3 runs ~10x slower). Hot functions use in-place operations: fresh
multi-megabyte temporaries cost more in page faults than their arithmetic.
"""

import numpy as np


def f32(x):
    """Per-image values as float32; pixel arrays end in the batch axis, so they broadcast."""
    return np.asarray(x, np.float32)


def planar(colors: np.ndarray) -> np.ndarray:
    """(N, 3) colours as a C-ordered (3, 1, 1, N) array.

    A transposed view would work too, but numpy keeps its odd strides in every result
    computed from it, and then every pixel operation runs several times slower.
    """
    return np.ascontiguousarray(colors.T)[:, None, None, :]


class Canvas:
    """A batch of images plus the face coordinates (u, v) of every pixel.

    Image coordinates X, Y span [-1, 1]; the face is drawn in its own frame,
    (X, Y) = t + s * R(angle) (u, v), so pose is one transform for all shapes.
    """

    def __init__(self, size: int, angle, scale, tx, ty):
        self.size = size
        self.pose = tuple(f32(x) for x in (angle, scale, tx, ty))
        angle, scale, tx, ty = self.pose
        grid = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
        self.y_img, self.x_img = grid[:, None, None], grid[None, :, None]
        self.inv_px = f32(size * scale / 2)
        cos, sin = f32(np.cos(angle)), f32(np.sin(angle))
        dx, dy = self.x_img - tx, self.y_img - ty
        self.u = (cos * dx + sin * dy) / scale
        self.v = (cos * dy - sin * dx) / scale
        self.image = np.empty((3, size, size, len(angle)), np.float32)
        self.index = None  # Which images of the batch this canvas draws on (None: all).
        self.mask = None  # Or: draw on all, but only where this (N,) 0/1 mask is 1.

    def subset(self, index: np.ndarray) -> "Canvas":
        """A canvas drawing on the images `index` of this one (shares its pixels).

        Only the boxes that layers touch are gathered and written back, which is
        much cheaper than gathering whole images along the batch axis.
        """
        sub = object.__new__(Canvas)
        sub.__dict__.update(self.__dict__)
        sub.pose = tuple(x[index] for x in self.pose)
        sub.inv_px = self.inv_px[index]
        sub.index = index
        return sub

    def masked(self, selected: np.ndarray) -> "Canvas":
        """A canvas drawing on the whole batch but changing only the `selected` images.

        For layers most images have: gathering a subset would cost more than it saves.
        """
        sub = object.__new__(Canvas)
        sub.__dict__.update(self.__dict__)
        sub.mask = selected.astype(np.float32)
        return sub

    def region(self, cx, cy, half_w, half_h, soft=1.0):
        """Slices covering the face-frame boxes (per image) of the whole batch.

        A shape of edge softness `soft` reaches soft / 2 pixels past its outline,
        so the margin (in pixels) grows with it.
        """
        angle, scale, tx, ty = self.pose
        cos, sin = np.cos(angle), np.sin(angle)
        margin = (2.0 + soft) * 2.0 / self.size
        ext_x = scale * (np.abs(cos) * half_w + np.abs(sin) * half_h) + margin
        ext_y = scale * (np.abs(sin) * half_w + np.abs(cos) * half_h) + margin
        center_x = tx + scale * (cos * cx - sin * cy)
        center_y = ty + scale * (sin * cx + cos * cy)

        def pixel_range(lo, hi):
            first = np.floor((np.min(lo) + 1) / 2 * self.size)
            last = np.ceil((np.max(hi) + 1) / 2 * self.size)
            return slice(int(np.clip(first, 0, self.size)), int(np.clip(last, 0, self.size)))

        rows = pixel_range(center_y - ext_y, center_y + ext_y)
        cols = pixel_range(center_x - ext_x, center_x + ext_x)
        return rows, cols

    def uv(self, where):
        """Face coordinates of the pixels in a region."""
        u, v = self.u[where], self.v[where]
        if self.index is not None:
            # np.take keeps the batch axis last; u[..., index] would move it first.
            u, v = np.take(u, self.index, axis=-1), np.take(v, self.index, axis=-1)
        return u, v

    def cover(self, dist, soft=1.0):
        """Anti-aliased coverage of a shape from its signed distance."""
        coverage = dist * -(self.inv_px / np.float32(soft))
        coverage += 0.5
        return np.clip(coverage, 0.0, 1.0, out=coverage)

    def paint(self, where, coverage, color, opacity=1.0):
        """Composites `color` ((3,), (N, 3) or per pixel (3, h, w, N)) over the region."""
        alpha = coverage if opacity == 1.0 else coverage * np.float32(opacity)
        if self.mask is not None:
            alpha = alpha * self.mask
        if color.ndim == 1:
            color = color[:, None, None, None]
        elif color.ndim == 2:
            color = planar(color)
        view = self.image[:, where[0], where[1]]
        target = view if self.index is None else np.take(view, self.index, axis=-1)
        change = color - target
        change *= alpha
        target += change
        if self.index is not None:
            view[..., self.index] = target


def ellipse(u, v, cx, cy, a, b, elongated=False):
    """Signed distance to an axis-aligned ellipse (negative inside), in face units.

    Round shapes use (k - 1) * min(a, b) with k the normalised radius; `elongated`
    ones the first-order estimate (k - 1) / |grad k|, exact on the boundary, so their
    long ends do not blur over several pixels. Written with in-place operations:
    fresh multi-megabyte temporaries cost page faults that outweigh the arithmetic.
    """
    a, b = f32(a), f32(b)
    inv_a, inv_b = 1.0 / a, 1.0 / b
    du = u - f32(cx)
    du *= inv_a
    dv = v - f32(cy)
    dv *= inv_b
    if elongated:
        grad = du * inv_a
        grad *= grad
        grad_v = dv * inv_b
        grad_v *= grad_v
        grad += grad_v
        del grad_v
        np.sqrt(grad, out=grad)
        grad += 1e-6
    du *= du
    dv *= dv
    du += dv
    del dv
    k = np.sqrt(du, out=du)
    if not elongated:
        k -= 1.0
        k *= np.minimum(a, b)
        return k
    dist = k - 1.0
    dist *= k
    dist /= grad
    return dist


def triangle_wave(z):
    """Triangle wave in [0, 1] with period 1, in place (exact arithmetic, unlike sin)."""
    z -= np.floor(z)
    z *= 2.0
    z -= 1.0
    return np.abs(z, out=z)
