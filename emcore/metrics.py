"""Segmentation overlap metrics computed from a sparse contingency table.

Notation (all over *evaluated* voxels, see :mod:`emcore.contingency`): ``n_ij`` voxels carry
GT label *i* and segment label *j*; ``a_i = sum_j n_ij`` (GT object sizes), ``b_j = sum_i n_ij``
(segment sizes), ``N = sum_ij n_ij``, probabilities ``p = n / N``. Logarithms are base 2 (bits).

Conventions (those of the PEA reference evaluation, i.e. scikit-image with ``ignore_labels=(0,)``):
voxels whose GT label is 0 are ignored, the segment label 0 is an ordinary label, and
probabilities are normalised over the remaining voxels. With the same ignore rules,
:func:`segmentation_scores` equals ``skimage.metrics.variation_of_information(gt, seg,
ignore_labels=(0,))`` and ``skimage.metrics.adapted_rand_error(gt, seg, ignore_labels=(0,))[0]``.
Note the argument order here is (seg, gt), like elf, unlike scikit-image.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .contingency import ContingencyTable, EvaluationError, count_volumes

__all__ = [
    "variation_of_information",
    "rand_errors",
    "scores_from_table",
    "segmentation_scores",
    "split_contributions",
    "merge_contributions",
    "SCORE_KEYS",
]

SCORE_KEYS = ("voi_split", "voi_merge", "voi", "arand", "rand_split", "rand_merge", "cremi")


def _require_voxels(table: ContingencyTable) -> int:
    n = table.n_voxels
    if n == 0:
        raise EvaluationError("no voxel left to evaluate: every voxel is ignored (GT label in ignore_gt, "
                              "segment label in ignore_seg, or outside the mask/ROI); check the GT, "
                              "or pass --ignore-gt none")
    return n


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts / n
    return float(-(p * np.log2(p)).sum())


def _conditional_terms(table: ContingencyTable, by_gt: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, sizes and per-id terms ``-sum p_ij log2(n_ij / size)`` grouped by GT (or segment) id."""
    n = _require_voxels(table)
    ids, sizes = table.gt_sizes() if by_gt else table.seg_sizes()
    group = np.searchsorted(ids, table.gt if by_gt else table.seg)
    terms = -(table.counts / n) * np.log2(table.counts / sizes[group])
    return ids, sizes, np.bincount(group, weights=terms, minlength=ids.size)


def split_contributions(table: ContingencyTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each GT object's share of VOI split.

    Returns
    -------
    ids, sizes, contributions
        GT ids, their evaluated sizes ``a_i`` and ``-sum_j p_ij log2(n_ij / a_i)``; the
        contributions sum to ``H(S|G)``. A GT object cut into many segments scores high.
    """
    return _conditional_terms(table, by_gt=True)


def merge_contributions(table: ContingencyTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each segment's share of VOI merge: ids, sizes ``b_j``, ``-sum_i p_ij log2(n_ij / b_j)`` (sum = ``H(G|S)``)."""
    return _conditional_terms(table, by_gt=False)


def variation_of_information(table: ContingencyTable) -> tuple[float, float]:
    """VOI split and merge in bits.

    Returns
    -------
    split, merge
        ``H(S|G)`` and ``H(G|S)``; VOI is their sum.

    Notes
    -----
    ``H(S|G) = H(G,S) - H(G)`` and ``H(G|S) = H(G,S) - H(S)`` with
    ``H(X) = -sum p log2 p`` [1]_. Split grows when GT objects are cut into several segments,
    merge when a segment covers several GT objects.

    References
    ----------
    .. [1] Meila, M. (2007). Comparing clusterings -- an information based distance.
       J. Multivariate Analysis 98(5), 873-895. :DOI:`10.1016/j.jmva.2006.11.013`
    """
    n = _require_voxels(table)
    joint = _entropy(table.counts, n)
    h_gt = _entropy(table.gt_sizes()[1], n)
    h_seg = _entropy(table.seg_sizes()[1], n)
    return joint - h_gt, joint - h_seg


def _sum_of_squares(values: np.ndarray) -> int:
    """Exact ``sum(values**2)`` as a Python int (int64 when it cannot overflow)."""
    total = int(values.sum())
    if total <= math.isqrt(np.iinfo(np.int64).max):
        return int(np.dot(values, values))
    return int((values.astype(object) ** 2).sum())


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator`` with ``0 / 0 = 1`` (no pairs to get wrong)."""
    return 1.0 if denominator == 0 else numerator / denominator


def rand_errors(table: ContingencyTable) -> tuple[float, float, float]:
    """Adapted Rand error and its split and merge parts, counted over voxel pairs.

    Returns
    -------
    arand, rand_split, rand_merge
        ``1 - F``, ``1 - R`` and ``1 - P`` below; 0 is perfect.

    Notes
    -----
    With pair counts that exclude self-pairs (scikit-image, SNEMI3D [1]_, ``alpha = 0.5``)::

        X = sum n_ij**2 - N    (ordered pairs together in both)
        A = sum a_i**2 - N     (pairs together in the GT)
        B = sum b_j**2 - N     (pairs together in the segmentation)
        R = X / A              (Rand recall: GT pairs kept together; low = splits)
        P = X / B              (Rand precision: segment pairs truly together; low = merges)
        F = X / (A/2 + B/2) = 2PR / (P + R)

    ``0 / 0`` is taken as 1 (every object a single voxel: nothing to split or merge).
    scikit-image's ``adapted_rand_error`` returns ``(1 - F, R, P)`` under the names
    (error, precision, recall); here ``rand_split = 1 - R`` and ``rand_merge = 1 - P``.
    Sums are exact integers.

    References
    ----------
    .. [1] Arganda-Carreras, I. et al. (2015). Crowdsourcing the creation of image segmentation
       algorithms for connectomics. Front. Neuroanat. 9:142. :DOI:`10.3389/fnana.2015.00142`
    """
    n = _require_voxels(table)
    together = _sum_of_squares(table.counts) - n
    gt_pairs = _sum_of_squares(table.gt_sizes()[1]) - n
    seg_pairs = _sum_of_squares(table.seg_sizes()[1]) - n
    recall = _ratio(together, gt_pairs)
    precision = _ratio(together, seg_pairs)
    f_score = _ratio(2 * together, gt_pairs + seg_pairs)
    return 1.0 - f_score, 1.0 - recall, 1.0 - precision


def scores_from_table(table: ContingencyTable) -> dict[str, float]:
    """All scores of :data:`SCORE_KEYS` from one table.

    Notes
    -----
    ``voi = voi_split + voi_merge``; ``cremi = sqrt(arand * voi)`` (CREMI challenge score).

    Raises
    ------
    EvaluationError
        The table is empty (no evaluated voxel). An all-background GT therefore raises rather
        than returning NaN.
    """
    voi_split, voi_merge = variation_of_information(table)
    arand, rand_split, rand_merge = rand_errors(table)
    voi = voi_split + voi_merge
    return {"voi_split": voi_split, "voi_merge": voi_merge, "voi": voi, "arand": arand,
            "rand_split": rand_split, "rand_merge": rand_merge, "cremi": math.sqrt(max(arand * voi, 0.0))}


def segmentation_scores(
    seg: np.ndarray,
    gt: np.ndarray,
    *,
    ignore_gt: Sequence[int] = (0,),
    ignore_seg: Sequence[int] = (),
) -> dict[str, float]:
    """VOI, adapted Rand and CREMI scores of an in-memory segmentation against its GT.

    Parameters
    ----------
    seg, gt
        Integer label arrays of the same shape (any ndim; no negative values). Note the
        order: segmentation first.
    ignore_gt
        GT labels whose voxels are not evaluated (default: 0 = unlabelled). ``()`` keeps all.
    ignore_seg
        Segment labels whose voxels are not evaluated (default: none; segment 0 is ordinary).

    Returns
    -------
    dict
        ``voi_split, voi_merge, voi, arand, rand_split, rand_merge, cremi``; see
        :func:`variation_of_information`, :func:`rand_errors`, :func:`scores_from_table`.

    Raises
    ------
    EvaluationError
        Shapes differ, labels are not non-negative integers, or no voxel is left to evaluate.
    """
    seg, gt = np.asarray(seg), np.asarray(gt)
    counts = count_volumes(seg, gt, ignore_gt=ignore_gt, ignore_seg=ignore_seg, scheduler="threads")
    return scores_from_table(counts.table)
