"""sdn_jax/models in PyTorch: the six networks with the same layers, widths and parameter
counts, for the PyTorch reference step (torch_reference.py).

Tensors are NCHW. Each module names its submodules as flax names them (`Conv_0`,
`GroupNorm_1`, `ResBlock_0`, ...), so `copy_flax_params` walks the two parameter trees
together and the tests can compare outputs on the same weights. Initialisation is
torch's own (a step's cost does not depend on it), except for the decoder's fixed
Fourier key map and its small output layer, which shape what it computes.
"""

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdn_jax.data import attributes as attr_lib
from sdn_jax.settings import Model

NETWORKS = ("encoder", "decoder", "key_predictor", "discriminator", "classifier", "club")
_NORM_EPS = 1e-6  # flax's GroupNorm epsilon (torch's default is 1e-5)
_INPUT_SQUASH = 0.98  # decoder.py: inputs pulled inside (-1, 1) before arctanh


def conv(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """A conv with flax's default 'SAME' padding. XLA pads kernel - stride pixels in all on
    a size divisible by the stride, the odd one at the end: symmetric for every conv here
    (3x3 and 1x1 at stride 1, 4x4 at stride 2)."""
    if (kernel - stride) % 2:
        raise ValueError(f"'SAME' padding of a {kernel}x{kernel} conv at stride {stride} is uneven")
    return nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - stride) // 2, bias=bias)


def group_norm(channels: int, groups: int | None = None) -> nn.GroupNorm:
    """layers.group_norm's groups (up to 8, of at least 4 channels) unless given."""
    if groups is None:
        groups = max(1, min(8, channels // 4))
        while channels % groups:
            groups -= 1
    return nn.GroupNorm(groups, channels, eps=_NORM_EPS)


def leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def film(x: torch.Tensor, scale_shift: torch.Tensor) -> torch.Tensor:
    """Per-example scale and shift of NCHW maps: (batch, 2 * channels) -> x * (1 + s) + t."""
    scale, shift = scale_shift.chunk(2, dim=-1)
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, features: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.Conv_0 = conv(cin, features, kernel, stride, bias=False)
        self.GroupNorm_0 = group_norm(features)

    def forward(self, x):
        return leaky(self.GroupNorm_0(self.Conv_0(x)))


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and optional FiLM: (batch, 2, 2 * features)."""

    def __init__(self, cin: int, features: int):
        super().__init__()
        self.project = cin != features  # flax's Conv_0 is then the 1x1 shortcut
        if self.project:
            self.Conv_0 = conv(cin, features, 1, bias=False)
        first = int(self.project)
        self.convs = [f"Conv_{first}", f"Conv_{first + 1}"]
        setattr(self, self.convs[0], conv(cin, features, 3, bias=False))
        setattr(self, self.convs[1], conv(features, features, 3, bias=False))
        self.GroupNorm_0, self.GroupNorm_1 = group_norm(features), group_norm(features)

    def forward(self, x, films=None):
        residual = self.Conv_0(x) if self.project else x
        for i in range(2):
            x = getattr(self, f"GroupNorm_{i}")(getattr(self, self.convs[i])(x))
            if films is not None:
                x = film(x, films[:, i])
            x = leaky(x) if i == 0 else x
        return leaky(residual + x)


class FiLMConv(nn.Module):
    def __init__(self, cin: int, features: int):
        super().__init__()
        self.Conv_0 = conv(cin, features, 3, bias=False)
        self.GroupNorm_0 = group_norm(features)

    def forward(self, x, scale_shift):
        return leaky(film(self.GroupNorm_0(self.Conv_0(x)), scale_shift))


class Latent(NamedTuple):
    features: torch.Tensor  # (B, widths[-1], H/8, W/8)
    skips: tuple[torch.Tensor, ...]  # finest first
    vector: torch.Tensor  # (B, latent_dim)


class Encoder(nn.Module):
    def __init__(self, widths, num_res_blocks: int, latent_dim: int):
        super().__init__()
        self.num_levels, self.num_res_blocks = len(widths), num_res_blocks
        self.ConvNormAct_0 = ConvNormAct(3, widths[0])
        for i in range(1, len(widths)):
            setattr(self, f"ConvNormAct_{i}", ConvNormAct(widths[i - 1], widths[i], 4, 2))
        for i in range(num_res_blocks):
            setattr(self, f"ResBlock_{i}", ResBlock(widths[-1], widths[-1]))
        self.Dense_0 = nn.Linear(widths[-1], latent_dim)

    def forward(self, images) -> Latent:
        h = self.ConvNormAct_0(images)
        skips = [h]
        for i in range(1, self.num_levels):
            h = getattr(self, f"ConvNormAct_{i}")(h)
            skips.append(h)
        skips.pop()  # the deepest level is the latent map itself
        for i in range(self.num_res_blocks):
            h = getattr(self, f"ResBlock_{i}")(h)
        return Latent(h, tuple(skips), self.Dense_0(h.mean(dim=(2, 3))))


class Decoder(nn.Module):
    """decoder.Decoder: FiLM from an MLP of (key, z), optional Fourier key map, residual
    output, and `recovery="inverse"` (the change subtracted to recover)."""

    def __init__(self, model: Model):
        super().__init__()
        widths, hidden = model.widths, model.condition_hidden
        self.model = model
        self.num_attributes = len(model.key_attributes)
        key_size = model.password_bits + self.num_attributes
        if model.key_features:
            # Drawn once, never trained: flax keeps it as a param (it counts), torch too.
            projection = torch.randn(key_size, model.key_features // 2) * model.key_frequency
            self.key_projection = nn.Parameter(projection, requires_grad=False)
            key_size = model.key_features + self.num_attributes
        inputs = key_size + model.latent_dim + (model.recovery == "conditioned")
        self.Dense_0, self.Dense_1 = nn.Linear(inputs, hidden), nn.Linear(hidden, hidden)
        dense = 2
        for i in range(model.decoder_res_blocks):
            setattr(self, f"Dense_{dense + i}", nn.Linear(hidden, 4 * widths[-1]))
            setattr(self, f"ResBlock_{i}", ResBlock(widths[-1], widths[-1]))
        dense += model.decoder_res_blocks
        cin = widths[-1]
        for n, level in enumerate(reversed(range(len(widths) - 1))):
            width = widths[level]
            skip = width if model.use_skips[level] else 0
            setattr(self, f"Conv_{n}", conv(cin, width, 1))
            setattr(self, f"Dense_{dense + n}", nn.Linear(hidden, 2 * width))
            setattr(self, f"FiLMConv_{n}", FiLMConv(width + skip, width))
            cin = width
        out = conv(widths[0], 3, 3)
        setattr(self, f"Conv_{len(widths) - 1}", out)
        # flax: variance_scaling(output_init_scale = 0.1, fan_in, truncated normal).
        std = math.sqrt(0.1 / (widths[0] * 9)) / 0.87962566
        nn.init.trunc_normal_(out.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(out.bias)

    def forward(self, latent: Latent, condition, inputs):
        m, widths = self.model, self.model.widths
        direction, key = condition[:, :1], condition[:, 1:]
        if m.key_features:
            attributes = key[:, key.shape[-1] - self.num_attributes :]
            phase = key @ self.key_projection
            key = torch.cat([phase.sin(), phase.cos(), attributes], dim=-1)
        parts = [key, latent.vector]
        if m.recovery == "conditioned":
            parts.insert(0, direction)
        embedding = leaky(self.Dense_0(torch.cat(parts, dim=-1)))
        embedding = leaky(self.Dense_1(embedding))
        h = latent.features
        for i in range(m.decoder_res_blocks):
            films = getattr(self, f"Dense_{2 + i}")(embedding).reshape(-1, 2, 2 * widths[-1])
            h = getattr(self, f"ResBlock_{i}")(h, films)
        dense = 2 + m.decoder_res_blocks
        for n, level in enumerate(reversed(range(len(widths) - 1))):
            h = F.interpolate(getattr(self, f"Conv_{n}")(h), scale_factor=2, mode="nearest")
            if m.use_skips[level]:
                h = torch.cat([h, latent.skips[level]], dim=1)
            h = getattr(self, f"FiLMConv_{n}")(h, getattr(self, f"Dense_{dense + n}")(embedding))
        out = getattr(self, f"Conv_{len(widths) - 1}")(h)
        if m.recovery == "inverse":  # ANONYMIZE (+0.5) adds the change, RECOVER subtracts it
            out = torch.where(direction[:, :, None, None] > 0, out, -out)
        if m.residual_output:
            out = out + torch.atanh(_INPUT_SQUASH * inputs)
        return torch.tanh(out)


class PatchDiscriminator(nn.Module):
    def __init__(self, widths):
        super().__init__()
        cin = 3
        for i, width in enumerate(widths):
            setattr(self, f"Conv_{i}", conv(cin, width, 4, 2))
            if i:
                setattr(self, f"GroupNorm_{i - 1}", group_norm(width, min(8, width // 4)))
            cin = width
        setattr(self, f"Conv_{len(widths)}", conv(cin, 1, 3))
        self.num_layers = len(widths)

    def forward(self, x):
        for i in range(self.num_layers):
            x = getattr(self, f"Conv_{i}")(x)
            x = getattr(self, f"GroupNorm_{i - 1}")(x) if i else x
            x = leaky(x)
        return getattr(self, f"Conv_{self.num_layers}")(x)[:, 0]


class Discriminator(nn.Module):
    """One PatchGAN per scale, each scale at half the previous resolution."""

    def __init__(self, widths, num_scales: int):
        super().__init__()
        self.num_scales = num_scales
        for scale in range(num_scales):
            setattr(self, f"scale_{scale}", PatchDiscriminator(widths))

    def forward(self, images) -> list[torch.Tensor]:
        scores = []
        for scale in range(self.num_scales):
            images = F.avg_pool2d(images, 2) if scale else images
            scores.append(getattr(self, f"scale_{scale}")(images))
        return scores


class ClassifierOutput(NamedTuple):
    attribute_logits: torch.Tensor  # (B, 40)
    embedding: torch.Tensor  # (B, embedding_dim), unit norm


class Classifier(nn.Module):
    def __init__(self, widths, embedding_dim: int, flatten: bool, image_size: int):
        super().__init__()
        self.flatten, self.num_stages = flatten, len(widths) - 1
        self.ConvNormAct_0 = ConvNormAct(3, widths[0], 4, 2)
        for j, width in enumerate(widths[1:]):
            setattr(self, f"ConvNormAct_{j + 1}", ConvNormAct(widths[j], width, 4, 2))
            setattr(self, f"ResBlock_{j}", ResBlock(width, width))
        side = image_size // 2 ** len(widths)
        features = side * side * widths[-1] if flatten else 2 * widths[-1]
        self.Dense_0 = nn.Linear(features, embedding_dim)
        self.Dense_1 = nn.Linear(2 * widths[-1], attr_lib.NUM_ATTRIBUTES)

    def forward(self, images) -> ClassifierOutput:
        h = self.ConvNormAct_0(images)
        for j in range(self.num_stages):
            h = getattr(self, f"ResBlock_{j}")(getattr(self, f"ConvNormAct_{j + 1}")(h))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=-1)
        # flax flattens NHWC maps: (H, W, C) order, so that copied weights read the same.
        features = h.permute(0, 2, 3, 1).flatten(1) if self.flatten else pooled
        embedding = self.Dense_0(features)
        embedding = embedding / (embedding.norm(dim=-1, keepdim=True) + 1e-6)
        return ClassifierOutput(self.Dense_1(pooled), embedding)


class KeyPredictor(nn.Module):
    def __init__(self, num_bits: int, widths):
        super().__init__()
        self.num_layers = len(widths)
        for i, width in enumerate(widths):
            setattr(self, f"ConvNormAct_{i}", ConvNormAct(widths[i - 1] if i else 6, width, 4, 2))
        self.Dense_0 = nn.Linear(widths[-1], num_bits)

    def forward(self, inputs, outputs):
        h = torch.cat([inputs, outputs], dim=1)
        for i in range(self.num_layers):
            h = getattr(self, f"ConvNormAct_{i}")(h)
        return self.Dense_0(h.mean(dim=(2, 3)))


class ClubNetwork(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.Dense_0 = nn.Linear(dim, hidden)
        self.Dense_1, self.Dense_2 = nn.Linear(hidden, dim), nn.Linear(hidden, dim)

    def forward(self, x):
        h = F.relu(self.Dense_0(x))
        return self.Dense_1(h), torch.tanh(self.Dense_2(h)) * 4.0


def build_networks(model: Model, image_size: int) -> nn.ModuleDict:
    """The six networks of sdn.build_networks, keyed as its params dict."""
    return nn.ModuleDict(
        {
            "encoder": Encoder(model.widths, model.encoder_res_blocks, model.latent_dim),
            "decoder": Decoder(model),
            "key_predictor": KeyPredictor(model.password_bits, model.key_predictor_widths),
            "discriminator": Discriminator(model.discriminator_widths, model.discriminator_scales),
            "classifier": Classifier(
                model.classifier_widths,
                model.embedding_dim,
                model.classifier_embedding_head == "flatten",
                image_size,
            ),
            "club": ClubNetwork(model.embedding_dim, model.club_hidden),
        }
    )


def parameter_counts(networks: nn.ModuleDict) -> dict[str, int]:
    """As state.parameter_counts: every parameter, the fixed key map included."""
    return {name: sum(p.numel() for p in net.parameters()) for name, net in networks.items()}


def copy_flax_params(networks: nn.ModuleDict, params: Mapping) -> None:
    """Loads sdn-jax's params (a dict of numpy or jax arrays, keyed as sdn.NETWORKS) into
    the torch networks in place. Every torch parameter must be set exactly once."""
    loaded = []
    with torch.no_grad():
        for name, tree in params.items():
            _copy_tree(networks[name], tree, loaded)
    missing = {id(p) for p in networks.parameters()} - {id(p) for p in loaded}
    if missing or len(loaded) != len({id(p) for p in loaded}):
        raise ValueError(f"{len(missing)} torch parameters not loaded, or some loaded twice")


def _copy_tree(module: nn.Module, tree: Mapping, loaded: list) -> None:
    for name, value in tree.items():
        if isinstance(value, Mapping):
            _copy_tree(getattr(module, name), value, loaded)
            continue
        array = torch.from_numpy(np.array(value, dtype=np.float32))
        target = _torch_parameter(module, name)
        if isinstance(module, nn.Conv2d) and name == "kernel":
            array = array.permute(3, 2, 0, 1)  # HWIO -> OIHW
        elif isinstance(module, nn.Linear) and name == "kernel":
            array = array.T  # (in, out) -> (out, in)
        if array.shape != target.shape:
            raise ValueError(f"{name}: flax {tuple(array.shape)} vs torch {tuple(target.shape)}")
        target.copy_(array)
        loaded.append(target)


def _torch_parameter(module: nn.Module, name: str) -> nn.Parameter:
    """flax's kernel / scale / bias of a Conv, Dense or GroupNorm, or a module's own param."""
    if name in ("kernel", "scale"):
        return module.weight
    return getattr(module, name)
