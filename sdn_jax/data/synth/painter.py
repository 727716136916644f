"""Paints a batch of synthetic faces from their traits: anti-aliased implicit shapes.

Each layer (background, hair, face, eyes, ...) is a function of the canvas and the
per-image trait dicts. Shapes give a signed distance d (face units, negative inside);
coverage = clip(0.5 - d / pixel, 0, 1) anti-aliases their edges.

Speed (the renderer feeds TFDS preparation and tests) comes from four choices:
- arrays are laid out (rgb, rows, cols, batch): a box of pixels is a few long
  contiguous runs and per-image values broadcast along the fast axis (an (N, 3)
  colour against a trailing rgb axis of 3 runs ~10x slower);
- each shape is evaluated only inside the batch's union bounding box;
- a layer that few images have (hat, glasses, mustache, ...) runs on that subset;
- the big layers use in-place operations: fresh multi-megabyte temporaries cost
  more in page faults than their arithmetic.
None of these changes a pixel: outside its box a shape's coverage is 0 anyway, so a
photo renders the same alone or in any batch.
"""

from collections.abc import Callable

import numpy as np

from sdn_jax.data.synth.canvas import Canvas, ellipse, f32, planar, triangle_wave

_WHITE = np.array([0.97, 0.97, 0.95], np.float32)
_TEETH = np.array([0.95, 0.95, 0.9], np.float32)
_MOUTH_INSIDE = np.array([0.25, 0.05, 0.06], np.float32)
_BLUSH = np.array([0.92, 0.35, 0.38], np.float32)
_GOLD = np.array([0.95, 0.8, 0.3], np.float32)


def _mouth_geometry(t, p):
    """Centre height, half width, bend and opening of the mouth."""
    my = t["face_cy"] + t["mouth_y"]
    half = t["mouth_w"] / 2 * np.where(p["smiling"], 1.12, 1.0)
    # Smiling lifts the corners by ~0.9 half-widths' worth of curvature.
    bend = np.where(p["smiling"], 0.9, -0.05) / half
    open_h = np.where(p["mouth_open"], 0.03, 0.0)
    return f32(my), f32(half), f32(bend), f32(open_h)


def _eye_geometry(t, p):
    eye_y = t["face_cy"] + t["eye_y"]
    eye_b = t["eye_b"] * np.where(p["smiling"], 0.82, 1.0)
    return f32(eye_y), f32(eye_b)


def background(c, t, p):
    """Two colours blended along a random direction."""
    ramp = 0.5 + p["bg_strength"] * (p["bg_dir"][:, 0] * c.x_img + p["bg_dir"][:, 1] * c.y_img)
    ramp = np.clip(ramp, 0.0, 1.0)
    bg0, bg1 = planar(p["bg0"]), planar(p["bg1"])
    np.multiply(bg1 - bg0, ramp, out=c.image)
    c.image += bg0


def long_hair(c, t, p):
    """Hair falling behind the head, below the jaw."""
    hcy = t["face_cy"] - 0.05 + 0.28 * t["hair_len"]
    ha = t["face_w"] * 1.22 + t["hair_vol"]
    hb = t["face_h"] + 0.08 + 0.32 * t["hair_len"]
    w = c.region(0, hcy, ha, hb)
    c.paint(w, c.cover(ellipse(*c.uv(w), 0, hcy, ha, hb)), t["hair_color"] * 0.85)


def neck_and_body(c, t, p):
    neck_y, neck_w = t["face_cy"] + t["face_h"] * 0.8, t["face_w"] * 0.42
    w = c.region(0, neck_y, neck_w, 0.35)
    c.paint(w, c.cover(ellipse(*c.uv(w), 0, neck_y, neck_w, 0.35, True)), t["skin"] * 0.82)
    body_y = t["face_cy"] + t["face_h"] + 0.5
    w = c.region(0, body_y, 0.8, 0.38)
    c.paint(w, c.cover(ellipse(*c.uv(w), 0, body_y, 0.8, 0.38, True)), p["cloth"])


def ears(c, t, p):
    for side in (-1.0, 1.0):
        ex = side * t["face_w"] * 0.97
        w = c.region(ex, t["ear_y"], 0.045, t["ear_h"])
        c.paint(w, c.cover(ellipse(*c.uv(w), ex, t["ear_y"], 0.045, t["ear_h"])), t["skin"] * 0.9)


def earrings(c, t, p):
    for side in (-1.0, 1.0):
        ex, ey = side * t["face_w"] * 0.97, t["ear_y"] + t["ear_h"] + 0.012
        w = c.region(ex, ey, 0.026, 0.026)
        ring = np.abs(ellipse(*c.uv(w), ex, ey, 0.02, 0.02)) - 0.006
        c.paint(w, c.cover(ring), _GOLD)


def _face_region_and_coverage(c, t):
    """The face: an ellipse whose lower half narrows towards the chin (the jaw)."""
    cy, fw, fh = t["face_cy"], t["face_w"], t["face_h"]
    w = c.region(0, cy, fw, fh)
    u, v = c.uv(w)
    below = np.clip((v - cy) * (1.0 / fh), 0.0, 1.0)
    taper = 1.0 - t["jaw"] * below * below
    return w, c.cover(ellipse(u / taper, v, 0, cy, fw, fh))


def face(c, t, p):
    w, coverage = _face_region_and_coverage(c, t)
    c.paint(w, coverage, t["skin"])


def beard_shadow(c, t, p):
    """5 o'clock shadow: the face below the mouth darkened with the hair colour."""
    w, coverage = _face_region_and_coverage(c, t)
    lower = np.clip((c.uv(w)[1] - (t["face_cy"] + t["mouth_y"] - 0.12)) * 10.0, 0.0, 1.0)
    c.paint(w, coverage * lower, t["hair_color"], opacity=0.28)


def rosy_cheeks(c, t, p):
    for side in (-1.0, 1.0):
        rx, ry = side * (t["eye_dx"] + 0.04), t["face_cy"] + t["mouth_y"] - 0.08
        w = c.region(rx, ry, 0.065, 0.045, soft=4.0)
        c.paint(w, c.cover(ellipse(*c.uv(w), rx, ry, 0.065, 0.045), 4.0), _BLUSH, 0.45)


def eye_bags(c, t, p):
    eye_y, eye_b = _eye_geometry(t, p)
    for side in (-1.0, 1.0):
        ex, by = side * t["eye_dx"], eye_y + eye_b * 0.9
        w = c.region(ex, by, t["eye_a"] * 0.9, eye_b * 0.9, soft=2.0)
        u, v = c.uv(w)
        arc = np.abs(ellipse(u, v, ex, by, t["eye_a"] * 0.9, eye_b * 0.9, True)) - 0.006
        c.paint(w, c.cover(arc, 2.0) * (v > by) * t["bag_strength"], t["skin"] * 0.6)


def eyes(c, t, p):
    """White, iris (moved by the gaze), pupil and upper lid; smiling narrows the eye."""
    eye_y, eye_b = _eye_geometry(t, p)
    for side in (-1.0, 1.0):
        ex = side * t["eye_dx"]
        w = c.region(ex, eye_y, t["eye_a"], eye_b)
        u, v = c.uv(w)
        outline = ellipse(u, v, ex, eye_y, t["eye_a"], eye_b, True)
        white = c.cover(outline)
        c.paint(w, white, _WHITE)
        ix, r = ex + p["gaze"] * t["eye_a"] * 0.4, t["eye_b"] * 0.85
        c.paint(w, white * c.cover(ellipse(u, v, ix, eye_y, r, r)), t["iris"])
        c.paint(w, white * c.cover(ellipse(u, v, ix, eye_y, r * 0.45, r * 0.45)), t["iris"] * 0.15)
        c.paint(w, c.cover(np.abs(outline) - 0.005) * (v < eye_y), t["skin"] * 0.35, 0.8)


def brows(c, t, p):
    """Bent, tilted bars above the eyes."""
    eye_y, _ = _eye_geometry(t, p)
    reach = t["eye_a"] * 1.25
    arch, tilt = t["brow_arch"] * reach * reach, np.abs(t["brow_tilt"]) * reach
    for side in (-1.0, 1.0):
        bx, by = side * t["eye_dx"], eye_y - t["brow_h"]
        w = c.region(bx, by - arch / 2, reach, t["brow_t"] + arch / 2 + tilt)
        u, v = c.uv(w)
        du = u - bx
        bent = v + t["brow_arch"] * du * du - side * t["brow_tilt"] * du
        shape = ellipse(u, bent, bx, by, reach, t["brow_t"], True)
        c.paint(w, c.cover(shape), t["hair_color"] * 0.7)


def nose(c, t, p):
    """Bridge shadow, tip and nostrils."""
    eye_y, _ = _eye_geometry(t, p)
    length, width = t["nose_len"], t["nose_w"]
    ny = eye_y + length
    w = c.region(0, ny - length / 2, width, length / 2 + width, soft=2.0)
    u, v = c.uv(w)
    bridge = ellipse(u, v, 0.3 * width, ny - length * 0.45, 0.012, length * 0.45, True)
    c.paint(w, c.cover(bridge, 2.0), t["skin"] * 0.7, 0.5)
    c.paint(w, c.cover(ellipse(u, v, 0, ny, width, width * 0.6), 2.0), t["skin"] * 0.82, 0.7)
    for side in (-1.0, 1.0):
        nostril = ellipse(u, v, side * width * 0.5, ny + width * 0.25, width * 0.28, width * 0.18)
        c.paint(w, c.cover(nostril), t["skin"] * 0.35, 0.8)


def _mouth_region(c, t, p):
    my, half, bend, open_h = _mouth_geometry(t, p)
    lift = np.abs(bend) * half * half
    w = c.region(0, my - np.sign(bend) * lift / 2, half, t["lip_t"] + open_h + lift / 2)
    u, v = c.uv(w)
    return w, u, v + bend * u * u, (my, half, open_h)


def mouth(c, t, p):
    """Lips, bent up at the corners when smiling, with the seam of a closed mouth."""
    w, u, bent, (my, half, open_h) = _mouth_region(c, t, p)
    lips = c.cover(ellipse(u, bent, 0, my, half, t["lip_t"] + open_h, True))
    lip_color = np.where(p["lipstick"][:, None], p["lipstick_color"], t["lip_color"])
    c.paint(w, lips, lip_color)
    closed = open_h == 0
    seam = c.cover(np.abs(bent - my) - 0.004) * closed
    c.paint(w, lips * seam, lip_color * 0.5, 0.8)
    # A closed smile shows a strip of teeth (an open one shows them in `open_mouth`).
    teeth = c.cover(ellipse(u, bent, 0, my, half * 0.72, t["lip_t"] * 0.45, True))
    c.paint(w, lips * teeth * (closed & p["smiling"]), _TEETH)


def open_mouth(c, t, p):
    """A dark opening inside the lips, showing teeth when smiling."""
    w, u, bent, (my, half, open_h) = _mouth_region(c, t, p)
    open_h = np.maximum(open_h, 1e-3)  # Masked-out closed mouths must stay finite.
    inner = c.cover(ellipse(u, bent, 0, my, half * 0.82, open_h, True))
    c.paint(w, inner, _MOUTH_INSIDE)
    teeth = c.cover(ellipse(u, bent, 0, my - open_h * 0.7, half * 0.7, open_h * 0.45, True))
    c.paint(w, inner * teeth * p["smiling"], _TEETH)


def mustache(c, t, p):
    my, half, _, open_h = _mouth_geometry(t, p)
    top = my - t["lip_t"] - open_h - 0.026
    reach = half * 1.2
    w = c.region(0, top + reach * reach * 1.25, reach, 0.03 + reach * reach * 1.25)
    u, v = c.uv(w)
    shape = ellipse(u, v - 2.5 * u * u, 0, top, reach, 0.038, True)
    # Darker than the hair: a blond mustache must still show at 64px.
    c.paint(w, c.cover(shape), t["hair_color"] * 0.45)


def goatee(c, t, p):
    gy = t["face_cy"] + t["face_h"] * 0.86
    w = c.region(0, gy, 0.075, 0.06)
    c.paint(w, c.cover(ellipse(*c.uv(w), 0, gy, 0.075, 0.06)), t["hair_color"] * 0.8)


def hair(c, t, p):
    """Hair on top: inside a cap, above a hairline (parted, receding or with bangs).

    The largest layer, so written with in-place operations (see `ellipse`).
    """
    cy, fw, fh = t["face_cy"], t["face_w"], t["face_h"]
    eye_y, _ = _eye_geometry(t, p)
    hcy, ha, hb = cy - fh * 0.25, fw * 1.08 + t["hair_vol"] * 0.6, fh * 0.85 + t["hair_vol"]
    w = c.region(0, hcy, ha, hb)
    u, v = c.uv(w)
    coverage = c.cover(ellipse(u, v, 0, hcy, ha, hb))
    # The hairline: a parabola from the parting, or a jagged fringe (bangs).
    line = u - t["part"] * fw
    line *= line
    line *= 0.5
    line += cy - fh * 0.62 + t["hairline"]
    if p["bangs"].any():
        fringe = triangle_wave(u * 9.0)
        fringe *= -0.03
        fringe += eye_y - t["brow_h"] - 0.05
        np.copyto(line, fringe, where=p["bangs"])
        del fringe
    sides = np.abs(u)  # The hairline drops down the temples (less when receding).
    sides *= 1.0 / fw
    sides -= 0.82
    sides *= 6.0
    np.clip(sides, 0.0, 1.0, out=sides)
    sides *= f32(np.where(t["receding"], 0.18, 0.45))
    line += sides
    del sides
    np.subtract(v, line, out=line)
    coverage *= c.cover(line)
    del line
    texture = u * 40.0  # Fine strands, or waves for wavy hair.
    triangle_wave(texture)
    texture *= 0.35
    if t["wavy"].any():
        waves = u * t["wave_freq"]
        waves += 3.0 * v
        np.copyto(texture, triangle_wave(waves), where=t["wavy"])
        del waves
    texture *= -0.18
    texture += 1.0
    c.paint(w, coverage, planar(t["hair_color"]) * texture)


def hat(c, t, p):
    """A crown and a brim over the hair."""
    fw, brim_y = t["face_w"], t["face_cy"] - t["face_h"] * 0.55
    w = c.region(0, brim_y - 0.2, fw * 1.45, 0.45)
    u, v = c.uv(w)
    crown = c.cover(ellipse(u, v, 0, brim_y, fw * 1.05, t["face_h"] * 0.7)) * (v < brim_y)
    brim = c.cover(ellipse(u, v, 0, brim_y, fw * 1.4, 0.05, True))
    c.paint(w, np.maximum(crown, brim), p["hat_color"])


def glasses(c, t, p):
    """Two tinted lenses in ~2px frames and a bridge: as plain at 64px as CelebA's."""
    eye_y, _ = _eye_geometry(t, p)
    dx, r = t["eye_dx"], t["eye_a"] * 1.35
    w = c.region(0, eye_y, dx + t["eye_a"] * 1.6 + 0.02, t["eye_a"] * 1.4 + 0.02)
    u, v = c.uv(w)
    frame = c.cover(ellipse(u, v, 0, eye_y - 0.01, dx - r, 0.014, True))
    lenses = np.zeros_like(frame)
    for side in (-1.0, 1.0):
        lens = ellipse(u, v, side * dx, eye_y, r, r * 0.8)
        lenses = np.maximum(lenses, c.cover(lens))
        frame = np.maximum(frame, c.cover(np.abs(lens) - 0.016))
    c.paint(w, lenses, p["frame_color"], 0.3)
    c.paint(w, frame, p["frame_color"])


def lighting(c, t, p):
    """A linear light gradient across the image, then exposure."""
    light = p["exposure"] * (1.0 + p["light_x"] * c.x_img + p["light_y"] * c.y_img)
    c.image *= light


# (layer, which images have it: None for all). Order is paint order.
LAYERS: tuple[tuple[Callable, Callable | None], ...] = (
    (background, None),
    (long_hair, lambda t, p: t["hair_len"] > 0),
    (neck_and_body, None),
    (ears, None),
    (face, None),
    (beard_shadow, lambda t, p: p["shadow"]),
    (rosy_cheeks, lambda t, p: p["rosy"]),
    (eye_bags, lambda t, p: t["bag_strength"] > 0),
    (eyes, None),
    (brows, None),
    (nose, None),
    (mouth, None),
    (open_mouth, lambda t, p: p["mouth_open"]),
    (mustache, lambda t, p: p["mustache"]),
    (goatee, lambda t, p: p["goatee"]),
    (hair, lambda t, p: ~t["bald"]),
    (earrings, lambda t, p: p["earrings"]),  # After the hair, which often hides the ears.
    (hat, lambda t, p: p["hat"]),
    (glasses, lambda t, p: p["glasses"]),
    (lighting, None),
)


def _take(values: dict, index: np.ndarray) -> dict:
    return {k: v[index] for k, v in values.items()}


def paint_faces(size: int, traits: dict, photo: dict) -> np.ndarray:
    """Renders the batch as float32 (3, size, size, N) in about [0, 1] (before noise)."""
    canvas = Canvas(size, photo["angle"], photo["scale"], photo["tx"], photo["ty"])
    for layer, selects in LAYERS:
        if selects is None:
            layer(canvas, traits, photo)
            continue
        selected = selects(traits, photo)
        if selected.mean() > 0.5:  # Masking is exact too: alpha 0 leaves a pixel as it was.
            layer(canvas.masked(selected), traits, photo)
        elif selected.any():
            index = np.flatnonzero(selected)
            layer(canvas.subset(index), _take(traits, index), _take(photo, index))
    return canvas.image
