"""The residual 3D U-Net trunk of PEA (the "superhuman" / PNI network, docs/method.md §1).

Topology for ``filters = (f0, f1, f2, f3, f4)`` (reference: 28, 36, 48, 64, 80), z is never
pooled, every pooling / upsampling is (1, 2, 2) in (z, y, x)::

    embed_in   conv 1x5x5 (bias) -> ELU                     1  -> f0
    conv0..3   residual block, then max-pool (1, 2, 2)      f0 -> f0, f1, f2, f3
    center     residual block                               f3 -> f4          (1/16 in xy)
    conv4..7   up(x) + skip -> norm -> ELU -> residual block  f4 -> f3, f2, f1, f0
    embed_out  conv 1x5x5 (bias) -> ELU                     f0 -> f0
    out        conv 1x1x1 (bias), linear                    f0 -> D (embedding)
    pyramid    conv 1x1x1 (bias) on center, conv4, conv5, conv6  -> D at 1/16, 1/8, 1/4, 1/2

``up`` = trilinear upsampling (1, 2, 2) followed by a 1x1x1 conv (bias); the reference samples
with ``align_corners=True`` (``upsample_align_corners``, see Decisions). Residual block ``in -> out``: ``r = ELU(N(conv1x3x3(x)))``, ``f = conv3(ELU(N(conv3(r))))``
with 3x3x3 convs, output ``ELU(N(r + f))``; convs followed by a norm have no bias. All padding is
"same" (zeros). Weights: ``kaiming_normal_`` (fan_in, gain sqrt(2)), biases 0. The reference
config has 1,481,748 trainable parameters (1,478,036 without the pyramid heads).

Decisions:

* The bias of each ``up`` 1x1x1 conv is kept for parameter parity with the reference, although
  the training-mode BatchNorm that follows the skip addition cancels any per-channel constant,
  so its gradient is exactly zero with ``norm="batch"`` (and ``"instance"``).
* ``upsample_align_corners=True`` is the reference's upsampling. It samples the coarse map at
  ``i (n - 1) / (2 n - 1)`` for output index ``i`` of a level with ``n`` coarse voxels, a grid that
  depends on the input size, so the network is not shift-equivariant: a block predicted with any
  amount of context differs from a whole-volume pass of another size. ``False`` samples at
  ``(i + 0.5) / 2 - 0.5``, independent of the size, so the network is equivariant to y/x shifts
  that are multiples of :attr:`ResidualUNet3D.xy_multiple` (every block origin of
  ``pipeline.predict``) and blockwise prediction can equal a whole-volume pass.
* ``norm="none"`` gives the convs that would be followed by a norm a bias instead.
* ``norm="group"`` uses ``gcd(channels, 8)`` groups.
* ``head="affinity"`` is the paper's affinity-learning baseline: the ``out`` conv maps to
  ``n_affinities`` channels followed by a sigmoid. The pyramid heads, if enabled, still output
  ``embedding_dim``-D embeddings (EPM on top of the baseline); the plain baseline is
  ``head="affinity", pyramid_heads=False``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from .config import check_unet_filters

NORMS = ("batch", "group", "instance", "none")
HEADS = ("embedding", "affinity")


class ModelOutput(NamedTuple):
    """What :class:`ResidualUNet3D` returns.

    Attributes
    ----------
    output
        (B, D, z, y, x) linear embedding, or (B, n_affinities, z, y, x) sigmoid affinities for
        ``head="affinity"``.
    pyramid
        The four pyramid embeddings coarse to fine (xy scale 1/16, 1/8, 1/4, 1/2), or ``()``.
    """

    output: torch.Tensor
    pyramid: tuple[torch.Tensor, ...]


def _norm(kind: str, channels: int, momentum: float) -> nn.Module:
    """The normalisation layer of the given kind for ``channels`` channels."""
    if kind == "batch":
        return nn.BatchNorm3d(channels, momentum=momentum)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.Identity()


class _ResidualBlock(nn.Module):
    """``ELU(N(r + conv3(ELU(N(conv3(r))))))`` with ``r = ELU(N(conv1x3x3(x)))``."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, bn_momentum: float) -> None:
        super().__init__()
        bias = norm == "none"
        self.project = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, (1, 3, 3), padding=(0, 1, 1), bias=bias),
            _norm(norm, out_channels, bn_momentum), nn.ELU())
        self.residual = nn.Sequential(
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels, bn_momentum), nn.ELU(),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=bias))
        self.merge = nn.Sequential(_norm(norm, out_channels, bn_momentum), nn.ELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.project(x)
        residual = self.residual(r)
        residual += r  # in place: one full-size map less at the peak (the conv's output is not kept for backward)
        return self.merge(residual)


class _DecoderLevel(nn.Module):
    """Upsample (1, 2, 2) + 1x1x1 conv, add the skip, norm, ELU, residual block."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, bn_momentum: float,
                 align_corners: bool) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=align_corners),
            nn.Conv3d(in_channels, out_channels, 1))
        self.merge = nn.Sequential(_norm(norm, out_channels, bn_momentum), nn.ELU())
        self.block = _ResidualBlock(out_channels, out_channels, norm=norm, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        up += skip  # in place, as above
        return self.block(self.merge(up))


class ResidualUNet3D(nn.Module):
    """PEA's residual 3D U-Net with an embedding (or affinity) head and optional pyramid heads.

    Parameters
    ----------
    in_channels
        Input channels (1: grey values in [0, 1]).
    filters
        Five widths, encoder levels 0-3 and the centre (reference ``(28, 36, 48, 64, 80)``).
    embedding_dim
        Width D of the embedding head and of the pyramid heads (reference 16).
    pyramid_heads
        Add the four 1x1x1 EPM heads on center, conv4, conv5, conv6.
    norm
        ``"batch"`` (reference), ``"group"``, ``"instance"`` or ``"none"``.
    bn_momentum
        BatchNorm momentum (reference 0.001: running statistics average about 1000 steps).
    head
        ``"embedding"`` (linear D-channel output) or ``"affinity"`` (sigmoid, ``n_affinities``).
    n_affinities
        Output channels of the affinity head.
    upsample_align_corners
        ``align_corners`` of the decoder's trilinear upsampling (reference ``True``; ``False``
        makes the network shift-equivariant, see the module docstring).

    Notes
    -----
    Input y and x must be multiples of :attr:`xy_multiple` (four 2x poolings); z is free.
    """

    #: Input y and x must be multiples of this (2 ** number of xy poolings).
    xy_multiple = 16

    def __init__(
        self,
        *,
        in_channels: int = 1,
        filters: Sequence[int] = (28, 36, 48, 64, 80),
        embedding_dim: int = 16,
        pyramid_heads: bool = True,
        norm: str = "batch",
        bn_momentum: float = 0.001,
        head: str = "embedding",
        n_affinities: int = 12,
        upsample_align_corners: bool = True,
    ) -> None:
        super().__init__()
        try:
            filters = check_unet_filters(filters)
        except ValueError as error:
            raise ValueError(f"filters {error}") from None
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self._config: dict[str, Any] = dict(
            in_channels=in_channels, filters=list(filters), embedding_dim=embedding_dim,
            pyramid_heads=pyramid_heads, norm=norm, bn_momentum=bn_momentum, head=head,
            n_affinities=n_affinities, upsample_align_corners=upsample_align_corners)
        options = dict(norm=norm, bn_momentum=bn_momentum)
        self.embed_in = nn.Sequential(nn.Conv3d(in_channels, filters[0], (1, 5, 5), padding=(0, 2, 2)), nn.ELU())
        widths = (filters[0],) + filters
        self.encoder = nn.ModuleList(_ResidualBlock(widths[i], widths[i + 1], **options) for i in range(4))
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.center = _ResidualBlock(filters[3], filters[4], **options)
        self.decoder = nn.ModuleList(_DecoderLevel(filters[4 - i], filters[3 - i], align_corners=upsample_align_corners,
                                                   **options) for i in range(4))
        self.embed_out = nn.Sequential(nn.Conv3d(filters[0], filters[0], (1, 5, 5), padding=(0, 2, 2)), nn.ELU())
        out_channels = embedding_dim if head == "embedding" else n_affinities
        self.out = nn.Conv3d(filters[0], out_channels, 1)
        self.activation = nn.Sigmoid() if head == "affinity" else nn.Identity()
        # Heads on center (1/16), conv4 (1/8), conv5 (1/4), conv6 (1/2): coarse to fine.
        self.pyramid = nn.ModuleList(nn.Conv3d(filters[4 - i], embedding_dim, 1) for i in range(4)) if pyramid_heads else nn.ModuleList()
        self._initialise()

    def _initialise(self) -> None:
        """kaiming-normal conv weights (fan_in, ReLU gain), zero conv biases; norms keep 1 / 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Run the network on a (B, in_channels, z, y, x) batch; output has the input's size."""
        if x.ndim != 5 or x.shape[-1] % self.xy_multiple or x.shape[-2] % self.xy_multiple:
            raise ValueError(f"input must be (B, C, z, y, x) with y and x multiples of {self.xy_multiple}, got shape {tuple(x.shape)}")
        skips = []
        x = self.embed_in(x)
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.center(x)
        features = [x]
        for level, skip in zip(self.decoder, reversed(skips)):
            x = level(x, skip)
            features.append(x)
        output = self.activation(self.out(self.embed_out(x)))
        pyramid = tuple(head(feature) for head, feature in zip(self.pyramid, features))
        return ModelOutput(output, pyramid)


def model_config(model: ResidualUNet3D) -> dict[str, Any]:
    """The constructor keywords of ``model`` as a JSON-serialisable dict (for checkpoints)."""
    return dict(model._config, filters=list(model._config["filters"]))


def build_model(config: dict[str, Any]) -> ResidualUNet3D:
    """Rebuild a model from :func:`model_config` output (missing keys take the defaults)."""
    return ResidualUNet3D(**config)
