"""Training patches: random crops from zarr volumes -> augmentation -> targets -> CCM view.

This module belongs to the training *application*: it opens volumes through
:func:`emcore.store.open_volume` (the one import of ``pipeline`` allowed in ``corrseg3d``,
besides :mod:`corrseg3d.train`; lead's decision). The model library never imports it.

Per sample (docs/method.md §8):

1. choose a source with probability proportional to its ``weight``;
2. crop ``patch + 2 * context`` uniformly inside the source's slice range ``[start, stop)``
   (image uint8 -> float32 / 255);
3. :func:`corrseg3d.augment.augment` (image and labels together), then crop the context off;
4. widen label borders and build targets *per patch after augmentation*:
   :func:`~corrseg3d.targets.widen_borders`, :func:`~corrseg3d.targets.label_affinities`,
   :func:`~corrseg3d.targets.balance_weights`, :func:`~corrseg3d.targets.pyramid_targets`;
5. the CCM view :func:`corrseg3d.ccm.make_view` (docs/method.md §4), unless no loss needs it.

Sources whose labels are only consistent within a slice (``labels_2d``, e.g. the ISBI 2012
slices) supervise only the in-plane channels: ``channel_mask`` is False for offsets with a z
component (:func:`corrseg3d.losses.pea_loss` applies it, also to the pyramid z channel).

Randomness (docs/method.md §8: the reference shared one numpy stream between its
DataLoader workers): every sample draws from its own generator seeded with
``(seed, sample_index)``, where ``sample_index = iteration * batch_size + position``. The data
of an iteration therefore depends neither on the number of workers nor on how the run was
split by ``--resume``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from emcore.conventions import check_raw, raw_to_float, validate_offsets
from emcore.store import Volume, open_volume
from emcore.writing import check_whole

from .augment import augment
from .ccm import make_view
from .config import AugmentConfig, SourceConfig, source_probabilities
from .preflight import check_slices
from .targets import balance_weights, label_affinities, pyramid_targets, widen_borders

__all__ = ["sample_rng", "volume_is_2d", "z_channel_mask", "TrainingPatches", "collate", "make_loader"]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of training sample ``index`` (independent of workers and resumes)."""
    return np.random.default_rng([int(seed), int(index)])


def volume_is_2d(labels: Volume, declared: bool | None) -> bool:
    """``declared`` if given, else the labels' ``labels_2d`` attribute (default False)."""
    return bool(labels.attrs.get("labels_2d", False)) if declared is None else bool(declared)


def z_channel_mask(offsets: Sequence[Sequence[int]], labels_2d: bool) -> np.ndarray:
    """(C,) bool: True for supervised channels (all, or only in-plane ones for 2D labels)."""
    return np.array([not (labels_2d and o[0] != 0) for o in offsets], dtype=bool)


@dataclass
class _Source:
    raw: Volume
    labels: Volume
    start: int
    stop: int
    labels_2d: bool


class TrainingPatches(Dataset):
    """Map-style dataset: item ``i`` is training sample ``i`` (see module docstring).

    Parameters
    ----------
    sources
        Training volumes with weights and slice ranges.
    patch, context
        (z, y, x) patch size and the context read on each side for augmentation.
    offsets
        Affinity offsets of the targets.
    augment_config
        Augmentation probabilities (also the CCM view switches).
    seed
        Base seed of :func:`sample_rng`.
    with_view
        Build the CCM view (only needed when the CCM loss is on).
    class_weight_cap
        Upper bound of the class-balancing weights (``loss.class_weight_cap``; None = the paper's).

    Items are dicts of numpy arrays: ``image`` and ``view`` (1, z, y, x) float32, ``rule`` (the
    CCM flip rule), ``affinities`` (C, z, y, x) uint8, ``weights`` float32, ``valid`` bool,
    ``channel_mask`` (C,) bool and ``pyramid``: a list, coarse to fine, of dicts with the same
    three target keys for the nearest-neighbour offsets.
    """

    def __init__(self, sources: Sequence[SourceConfig], *, patch: Sequence[int], context: Sequence[int],
                 offsets: Sequence[Sequence[int]], augment_config: AugmentConfig, seed: int,
                 with_view: bool = True, class_weight_cap: float | None = None) -> None:
        if not sources:
            raise ValueError("data.sources is empty: configure at least one training volume")
        self.configs = list(sources)
        self.patch = tuple(int(p) for p in patch)
        self.context = tuple(int(c) for c in context)
        self.offsets = validate_offsets(offsets)
        self.augment_config = augment_config
        self.seed = int(seed)
        self.with_view = with_view
        self.class_weight_cap = class_weight_cap
        try:
            self.probabilities = np.array(source_probabilities([s.weight for s in self.configs]))
        except ValueError as error:
            raise ValueError(f"data.sources: {error}") from None
        self._sources: list[_Source] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Volumes are reopened lazily in each worker process.
        return dict(self.__dict__, _sources=None)

    @property
    def sources(self) -> list[_Source]:
        if self._sources is None:
            self._sources = [self._open(index, config) for index, config in enumerate(self.configs)]
        return self._sources

    def _open(self, index: int, config: SourceConfig) -> _Source:
        raw = open_volume(config.raw)
        check_raw(raw.location, raw.shape, raw.dtype, "training")
        labels = open_volume(config.labels)
        for volume in (raw, labels):
            check_whole(volume.location)
        if raw.spatial_shape != labels.spatial_shape:
            raise ValueError(f"{config.raw} {raw.spatial_shape} and {config.labels} {labels.spatial_shape} differ in shape")
        _, _, start, stop = check_slices(f"data.sources.{index}.slices", config.raw, config.slices, raw.spatial_shape[0])
        extent = (stop - start,) + raw.spatial_shape[1:]
        needed = tuple(p + 2 * c for p, c in zip(self.patch, self.context))
        if any(n > e for n, e in zip(needed, extent)):
            raise ValueError(f"{config.raw} slices [{start}, {stop}) give {extent}, smaller than patch + 2 * context = {needed}")
        return _Source(raw, labels, start, stop, volume_is_2d(labels, config.labels_2d))

    def __len__(self) -> int:
        return np.iinfo(np.int64).max

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = sample_rng(self.seed, index)
        source = self.sources[int(rng.choice(len(self.sources), p=self.probabilities))]
        image, labels = self._crop(source, rng)
        image, labels = augment(image, labels, rng, self.augment_config)
        inner = tuple(slice(c, c + p) for c, p in zip(self.context, self.patch))
        return self._targets(image[inner], labels[inner], source.labels_2d, rng)

    def _crop(self, source: _Source, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        size = tuple(p + 2 * c for p, c in zip(self.patch, self.context))
        lower = (source.start, 0, 0)
        upper = (source.stop, *source.raw.spatial_shape[1:])
        corner = [int(rng.integers(lo, hi - s + 1)) for lo, hi, s in zip(lower, upper, size)]
        box = tuple(slice(c, c + s) for c, s in zip(corner, size))
        return raw_to_float(source.raw[box]), source.labels[box]

    def _targets(self, image: np.ndarray, labels: np.ndarray, labels_2d: bool,
                 rng: np.random.Generator) -> dict[str, Any]:
        widened = widen_borders(labels)
        affinities, valid = label_affinities(widened, self.offsets)
        pyramid = [dict(affinities=a, weights=w, valid=v) for a, w, v in pyramid_targets(widened, cap=self.class_weight_cap)]
        sample = dict(image=image[None], affinities=affinities, weights=balance_weights(affinities, valid, cap=self.class_weight_cap),
                      valid=valid, channel_mask=z_channel_mask(self.offsets, labels_2d), pyramid=pyramid)
        if self.with_view:
            view, rule = make_view(image, rng, intensity=self.augment_config.ccm_intensity,
                                   cutout=self.augment_config.ccm_cutout, flip=self.augment_config.ccm_flip)
            sample.update(view=np.ascontiguousarray(view)[None], rule=rule)
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch of tensors; ``rule`` stays a list (one flip rule per sample)."""
    def stack(key: str, items: list[dict[str, Any]]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.ascontiguousarray(item[key]) for item in items]))

    batch: dict[str, Any] = {key: stack(key, samples) for key in samples[0] if key not in ("pyramid", "rule")}
    batch["pyramid"] = [{key: stack(key, [s["pyramid"][level] for s in samples]) for key in level_dict}
                        for level, level_dict in enumerate(samples[0]["pyramid"])]
    if "rule" in samples[0]:
        batch["rule"] = [s["rule"] for s in samples]
    return batch


class _IterationSampler(Sampler[int]):
    """Sample indices ``start * batch_size ... stop * batch_size - 1`` in order."""

    def __init__(self, start: int, stop: int, batch_size: int) -> None:
        self.first, self.last = start * batch_size, stop * batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last))

    def __len__(self) -> int:
        return self.last - self.first


def make_loader(dataset: TrainingPatches, *, batch_size: int, start_iteration: int, stop_iteration: int,
                num_workers: int) -> DataLoader:
    """Batches for iterations ``start_iteration .. stop_iteration - 1`` (in order, any workers)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_IterationSampler(start_iteration, stop_iteration, batch_size),
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(dataset.seed),
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )
