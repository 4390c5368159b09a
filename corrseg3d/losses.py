"""PEA training losses: weighted MSE on SCM, CCM and EPM affinities (docs/method.md §7).

Total loss (every weight 1, as in the paper)::

    L = sum_k L_k(self) + sum_k L_k(cross) + sum_levels sum_{k<3} L_{level,k}(self)

with the per-channel weighted MSE of :func:`weighted_mse`. Targets are one dict per batch:

* ``affinities`` (B, C, z, y, x) in {0, 1}, ``weights`` (B, C, z, y, x) float,
  ``valid`` (B, C, z, y, x) bool (True where ``p + o`` is inside the patch);
* ``pyramid``: list of dicts with the same three keys, (B, 3, z, y/s, x/s), coarse to fine as
  the model's pyramid outputs (see :func:`corrseg3d.targets.pyramid_targets`);
* optional ``channel_mask`` (B, C) bool: channels that are False are left out of the loss,
  e.g. the z channels of data labelled slice by slice. The pyramid levels use its first three
  columns (their offsets are the nearest neighbours, the first three of any offset list).

Fine-tuning may add a flip-distillation term (``loss.flip_distill``, off in the paper): the
unweighted MSE between the SCM affinities and a frozen teacher's affinities on a randomly
flipped copy of the patch, mapped back (:func:`corrseg3d.train.teacher_affinities`). Its
minimiser over the random flip is the teacher's mean over flips, i.e. what
``pipeline.predict --tta`` computes, so the term distils test-time augmentation into one pass.

All correlations and losses are computed in float32, also when the network ran under bf16
autocast.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from emcore.conventions import NEAREST_OFFSETS, validate_offsets

from .correlation import cross_correlation, normalize_embedding, self_correlation
from .model import ModelOutput


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Weighted MSE, averaged per channel over batch and valid voxels, summed over channels.

    ``L = sum_k (1 / |Omega_k|) sum_{(b, p) in Omega_k} w_k(b, p) (pred_k(b, p) - target_k(b, p))^2``

    where ``Omega_k`` are the valid (b, p) of channel k (``B |Omega_k|`` in the reference, whose
    valid region is the same for every sample). Weights are not renormalised. A channel with no
    valid voxel contributes 0.

    Parameters
    ----------
    pred, target, weight
        (B, C, z, y, x) tensors (target and weight are cast to ``pred``'s dtype).
    valid
        (B, C, z, y, x) bool mask.

    Returns
    -------
    Scalar tensor.
    """
    if not pred.shape == target.shape == weight.shape == valid.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)}, weight {tuple(weight.shape)} and valid {tuple(valid.shape)} must have the same shape")
    mask = valid.to(pred.dtype)
    squared = weight.to(pred.dtype) * mask * (pred - target.to(pred.dtype)) ** 2
    reduce = [0] + list(range(2, pred.ndim))
    per_channel = squared.sum(dim=reduce) / mask.sum(dim=reduce).clamp(min=1)
    return per_channel.sum()


def mean_embedding_penalty(embedding: torch.Tensor) -> torch.Tensor:
    """Anti-collapse term: squared norm of the patch-mean unit embedding, averaged over the batch.

    ``P = (1 / B) sum_b || (1 / N) sum_p e_b(p) / ||e_b(p)|| ||^2``, in [0, 1]. It is 1 when all N
    voxels of a patch share one direction (every cosine affinity is 1) and small when the
    embeddings of the patch's objects spread over the sphere; the class-balanced SCM loss alone
    lets the embedding drift toward one shared direction on a small training budget.

    Parameters
    ----------
    embedding
        (B, D, z, y, x) network embedding (normalised as in the correlation heads).
    """
    normed = normalize_embedding(embedding)
    return normed.mean(dim=(2, 3, 4)).pow(2).sum(dim=1).mean()


def _masked(targets: Mapping[str, Any], channel_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(affinities, weights, valid)`` with the channels outside ``channel_mask`` made invalid."""
    valid = targets["valid"].bool()
    if channel_mask is not None:
        valid = valid & channel_mask.bool()[:, : valid.shape[1], None, None, None]
    return targets["affinities"], targets["weights"], valid


def _epm_loss(pyramid: Sequence[torch.Tensor], levels: Sequence[Mapping[str, Any]], channel_mask: torch.Tensor | None) -> torch.Tensor:
    """Sum over pyramid levels of the 3-channel nearest-neighbour self-correlation loss."""
    if not pyramid:
        raise ValueError("use_epm needs a model with pyramid heads")
    if len(pyramid) != len(levels):
        raise ValueError(f"{len(pyramid)} pyramid outputs but {len(levels)} pyramid target levels")
    return sum(weighted_mse(self_correlation(embedding.float(), NEAREST_OFFSETS), *_masked(level, channel_mask))
               for embedding, level in zip(pyramid, levels))


def pea_loss(
    model_output: ModelOutput,
    targets: Mapping[str, Any],
    *,
    offsets: Sequence[Sequence[int]],
    view_output: torch.Tensor | None = None,
    use_scm: bool = True,
    use_ccm: bool = True,
    use_epm: bool = True,
    head: str = "embedding",
    mean_embedding: float = 0.0,
    teacher_affinities: torch.Tensor | None = None,
    flip_distill: float = 0.0,
) -> dict[str, torch.Tensor]:
    """PEA loss terms and their sum.

    Parameters
    ----------
    model_output
        The network output for the original view.
    targets
        Target dict described in the module docstring (C = ``len(offsets)`` channels).
    offsets
        The C offsets of ``targets``.
    view_output
        (B, D, z, y, x) embedding of the second (CCM) view, already mapped back to the original
        geometry with :func:`corrseg3d.ccm.invert_flip` and **detached** by the caller: the
        stop-gradient (docs/method.md §4) is an explicit step of training, so a tensor that still
        requires grad is rejected. Needed when ``use_ccm``.
    use_scm, use_ccm, use_epm
        Switch the self-, cross-correlation and pyramid terms (the reference always uses all
        three; the switches serve the module ablations). A switched-off term is returned as 0.
    head
        ``"embedding"`` (PEA) or ``"affinity"``: the baseline whose output already is sigmoid
        affinities; its term ``affinity`` is the weighted MSE of that output against the same
        targets and replaces ``scm`` and ``ccm`` (then ``use_scm`` and ``use_ccm`` are ignored).
    mean_embedding
        Weight of :func:`mean_embedding_penalty` (0 = off).
    teacher_affinities, flip_distill
        (B, C, z, y, x) detached affinities of a frozen teacher and the weight of the
        flip-distillation term ``flip_distill * weighted_mse(a_self, teacher, 1, valid)`` (module
        docstring; embedding head only; 0 = off, then ``teacher_affinities`` is not needed).

    Returns
    -------
    ``{"scm", "ccm", "epm", "total"}`` for the embedding head (plus ``"collapse"`` when
    ``mean_embedding > 0`` and ``"distill"`` when ``flip_distill > 0``), ``{"affinity", "epm", "total"}``
    for the affinity head; scalar float32 tensors, ``total`` is the sum of the others.
    """
    offsets = validate_offsets(offsets)
    channel_mask = targets.get("channel_mask")
    full = _masked(targets, channel_mask)
    output = model_output.output.float()
    if output.shape[2:] != full[0].shape[2:] or full[0].shape[1] != len(offsets):
        raise ValueError(f"targets {tuple(full[0].shape)} do not match output {tuple(output.shape)} and {len(offsets)} offsets")
    zero = output.new_zeros(())
    terms: dict[str, torch.Tensor] = {}
    if head == "affinity":
        terms["affinity"] = weighted_mse(output, *full)
    elif head == "embedding":
        affinities = self_correlation(output, offsets) if use_scm or flip_distill > 0 else None
        terms["scm"] = weighted_mse(affinities, *full) if use_scm else zero
        if use_ccm:
            if view_output is None or view_output.requires_grad:
                raise ValueError("use_ccm needs view_output: the second view's inverse-flipped, detached embedding")
            terms["ccm"] = weighted_mse(cross_correlation(output, view_output.float(), offsets), *full)
        else:
            terms["ccm"] = zero
        if mean_embedding > 0:
            terms["collapse"] = mean_embedding * mean_embedding_penalty(output)
        if flip_distill > 0:
            if teacher_affinities is None or teacher_affinities.requires_grad:
                raise ValueError("flip_distill needs teacher_affinities: the frozen teacher's detached affinities")
            terms["distill"] = flip_distill * weighted_mse(affinities, teacher_affinities.float(),
                                                           torch.ones_like(affinities), full[2])
    else:
        raise ValueError(f"head must be 'embedding' or 'affinity', got {head!r}")
    terms["epm"] = _epm_loss(model_output.pyramid, targets["pyramid"], channel_mask) if use_epm else zero
    terms["total"] = sum(terms.values())
    return terms
