"""Affinities from a trained network: one patch, or a whole in-memory volume in blocks with halos.

This is the one inference path of the project: training-time validation and the blockwise
``pipeline.predict`` both call :func:`predict_patch` on a context-padded block and crop its centre.

Conventions
-----------
* Images are (z, y, x) float32 grey values in [0, 1] (uint8 / 255).
* Affinities are (C, z, y, x) float32 in [0, 1], channel k linking p and p + offsets[k]
  (non-positive offsets), 1 = same object. The embedding head gives ``max(0, cos)``
  (:func:`corrseg3d.correlation.embedding_to_affinities`); the baseline head its sigmoid output.
* Context: a block is processed together with ``halo`` voxels on each side; where the halo
  leaves the volume the image is reflect-padded (``numpy.pad(mode="reflect")``), so blockwise
  and whole-volume results agree wherever the network's effective context is within the halo.
"""

from __future__ import annotations

import contextlib
import copy
import platform
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from emcore.blocks import BlockGrid
from emcore.conventions import UINT8_SCALE

from .correlation import embedding_to_affinities
from .model import ResidualUNet3D, model_config

__all__ = [
    "resolve_device",
    "cpu_has_native_bf16",
    "cpu_model_name",
    "resolve_precision",
    "autocast",
    "model_affinities",
    "pad_context",
    "quantize_affinities",
    "predict_patch",
    "predict_volume",
]

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` = the first CUDA device if there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N``.

    Raises
    ------
    ValueError
        An unknown device name, or a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            found = f"{count} CUDA device(s)" if count else "no CUDA GPU (or a torch without CUDA)"
            raise ValueError(f"device {name!r} is not available: this machine has {found}; use cpu or auto")
    return device


def cpu_has_native_bf16() -> bool:
    """True if the CPU advertises AVX512-BF16 or AMX-BF16 (Linux ``/proc/cpuinfo``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_model_name() -> str:
    """The CPU's ``model name`` (Linux ``/proc/cpuinfo``), else the machine type (e.g. ``x86_64``)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name on ``device`` (None = fp32, no autocast).

    ``auto``: bf16 on a CPU with native bf16 (about 2x faster there, docs/conventions.md §4;
    emulated bf16 on other CPUs is far slower than fp32), bf16 on a GPU that supports it, else
    fp16 on a GPU and fp32 on a CPU. fp16 is refused on the CPU, and so is bf16 on a CPU without
    native bf16 (:func:`cpu_has_native_bf16`).

    Raises
    ------
    ValueError
        An unknown precision name, or one ``device`` lacks.
    """
    if precision not in ("auto", *_PRECISIONS):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use fp32 or auto on the CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise ValueError(f"precision bf16 is emulated on this CPU ({cpu_model_name()} has no AVX512-BF16 or AMX-BF16), "
                         "far slower than fp32: use fp32 or auto")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    return _PRECISIONS[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def fold_batch_norm(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> nn.Conv3d:
    """One conv equal to ``norm(conv(x))`` with the norm's running statistics (eval mode).

    ``BN(c) = (c - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``, so the fused conv has
    weights ``w * s`` (per output channel) and bias ``(b - mean) * s + beta`` (``b = 0`` without a
    bias). Equal up to float rounding; on ``conv``'s device and in its dtype (a model validated
    on the GPU during training is folded where it lives).
    """
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    fused = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1, 1))
        fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return fused


def inference_model(model: ResidualUNet3D) -> ResidualUNet3D:
    """An eval-mode copy of ``model`` for prediction: same affinities, less work and memory.

    * every BatchNorm that directly follows a conv is folded into it (:func:`fold_batch_norm`;
      the norms after a residual sum stay);
    * the pyramid heads, which only training uses, are dropped;
    * ELUs work in place (their input is never read again).

    The output equals ``model``'s up to float rounding (about 1e-6 relative in float32).
    """
    fused = copy.deepcopy(model).eval()
    for sequence in [m for m in fused.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequence)
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.Conv3d) and isinstance(layers[i + 1], nn.BatchNorm3d):
                sequence[i], sequence[i + 1] = fold_batch_norm(layers[i], layers[i + 1]), nn.Identity()
    fused.pyramid = nn.ModuleList()
    for module in fused.modules():
        if isinstance(module, nn.ELU):
            module.inplace = True
    return fused


def model_affinities(model: ResidualUNet3D, batch: torch.Tensor, offsets: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, C, z, y, x) float32 affinities in [0, 1] from either head of ``model``.

    The embedding goes to the correlation head in the dtype the network produced it (bf16 under
    autocast); the head upcasts it once, while normalising, so no separate float32 copy is made.
    """
    output = model(batch).output
    if model_config(model)["head"] == "affinity":
        return output.float()
    return embedding_to_affinities(output, offsets)


def pad_context(image: np.ndarray, begin: Sequence[int], end: Sequence[int], halo: Sequence[int],
                read: Callable[[tuple[slice, ...]], np.ndarray] | None = None) -> np.ndarray:
    """The box ``[begin - halo, end + halo)`` of ``image``, reflect-padded where it leaves the volume.

    Parameters
    ----------
    image
        (z, y, x) array or array-like (only its ``shape`` is used when ``read`` is given).
    begin, end, halo
        Inner box and context per axis (z, y, x).
    read
        Optional ``read(slices) -> ndarray`` to fetch the clipped box (e.g. from zarr); defaults to
        indexing ``image``.
    """
    shape = image.shape[-3:]
    lo = [max(b - h, 0) for b, h in zip(begin, halo)]
    hi = [min(e + h, n) for e, h, n in zip(end, halo, shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    data = np.asarray(read(box) if read is not None else image[box])
    pad = [(a - (b - h), (e + h) - c) for a, b, h, e, c in zip(lo, begin, halo, end, hi)]
    if any(p != (0, 0) for p in pad):
        data = np.pad(data, pad, mode="reflect")
    return data


def network_batch(images: np.ndarray, *, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """The network's (N, 1, z, y', x') float32 input on ``device`` for (N, z, y, x) images.

    y and x are reflect-padded at their far end to a multiple of ``ResidualUNet3D.xy_multiple``;
    on CUDA the host copy is page-locked and sent asynchronously.
    """
    multiple = ResidualUNet3D.xy_multiple
    pad = [(0, 0), (0, 0)] + [(0, -n % multiple) for n in images.shape[2:]]
    padded = np.pad(images, pad, mode="reflect") if any(p[1] for p in pad) else images
    batch = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[:, None]
    if device.type == "cuda":  # page-locked host memory: the copy to the GPU runs asynchronously
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last_3d)
    return batch


def quantize_affinities(affinities: torch.Tensor) -> torch.Tensor:
    """uint8 ``round(255 clip(a, 0, 1))`` on the tensor's device, ties to even.

    The stored format of :func:`emcore.conventions.affinities_as_uint8`, computed where the
    affinities are (on a GPU, a quarter of the float32 bytes then cross to the host).
    """
    return affinities.float().clamp(0.0, 1.0).mul_(UINT8_SCALE).round_().to(torch.uint8)  # in place after the clamp


@torch.no_grad()
def predict_patch(model: ResidualUNet3D, image: np.ndarray, offsets: Sequence[Sequence[int]], *,
                  device: torch.device, autocast_dtype: torch.dtype | None = None,
                  channels_last: bool = False, crop: Sequence[slice] | None = None,
                  quantize: bool = False) -> np.ndarray:
    """Affinities of one (z, y, x) float32 patch, or of a batch (N, z, y, x) of equal patches.

    The model runs in eval mode. y and x are reflect-padded at their far end to a multiple of
    ``model.xy_multiple`` and the result cropped back, so any patch size is accepted.

    Parameters
    ----------
    model, image, offsets
        The network, the (z, y, x) or (N, z, y, x) input in [0, 1], and the affinity offsets.
    device, autocast_dtype, channels_last
        Where and how the network runs (``autocast_dtype`` None = fp32).
    crop
        (z, y, x) slices of the patch to keep (e.g. a block without its halo); None keeps it all.
    quantize
        Return :func:`quantize_affinities` uint8 instead of float32.

    Returns
    -------
    (C, z', y', x') affinities, or (N, C, z', y', x') for a batch, where (z', y', x') is the
    ``crop``'s shape (the patch's without one); float32, or uint8 with ``quantize``. Crop and
    quantisation happen on ``device``, before the copy to the host.
    """
    batched = image.ndim == 4
    images = image if batched else image[None]
    batch = network_batch(images, device=device, channels_last=channels_last)
    was_training = model.training
    model.eval()
    try:
        with autocast(device, autocast_dtype):
            affinities = model_affinities(model, batch, offsets)
    finally:
        model.train(was_training)
    z, y, x = images.shape[1:]
    affinities = affinities[:, :, :z, :y, :x]
    if crop is not None:
        affinities = affinities[(slice(None), slice(None)) + tuple(crop)]
    result = (quantize_affinities(affinities) if quantize else affinities.float()).cpu().numpy()
    return result if batched else result[0]


def predict_volume(model: ResidualUNet3D, image: np.ndarray, offsets: Sequence[Sequence[int]], *,
                   block: Sequence[int], halo: Sequence[int], device: torch.device,
                   autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> np.ndarray:
    """Affinities of a whole in-memory (z, y, x) float32 image, block by block with a halo.

    Each block of ``block`` voxels (clipped at the upper border) is predicted from the block plus
    ``halo`` context (reflect-padded at the volume border) and its centre kept. A block at least
    as large as the image gives the single whole-volume pass. The network runs as
    :func:`inference_model` of ``model``, like ``pipeline.predict``.
    """
    model = inference_model(model)
    out = np.empty((len(offsets),) + image.shape, np.float32)
    grid = BlockGrid(image.shape, tuple(block))
    for index in range(grid.n_blocks):
        begin, end = grid.block(index).begin, grid.block(index).end
        context = pad_context(image, begin, end, halo)
        inner = tuple(slice(h, h + e - b) for h, b, e in zip(halo, begin, end))
        out[(slice(None),) + tuple(slice(b, e) for b, e in zip(begin, end))] = predict_patch(
            model, context, offsets, device=device, autocast_dtype=autocast_dtype, channels_last=channels_last,
            crop=inner)
    return out
