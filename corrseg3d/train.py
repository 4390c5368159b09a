"""Train a PEA model: ``python -m corrseg3d.train -c configs/NAME.yaml [key=value ...] [--resume] [--out DIR]``.

This is the training *application*. Unlike the model library it imports ``pipeline``:
:mod:`emcore.store` (through :mod:`corrseg3d.sampler`) to read volumes, and
:mod:`emcore.regiongraph`, :mod:`emcore.mws` and :mod:`emcore.metrics` because validation runs
the real post-processing (lead's decision; no other ``corrseg3d`` module may do so, except
:mod:`corrseg3d.config`, which takes the segmentation defaults of ``validation`` from
:mod:`emcore.regiongraph`).

One iteration (docs/method.md §4, §7, §9): forward the batch, forward the CCM view
(train mode, so BatchNorm running statistics also see the masked, jittered view, as in the reference;
under ``no_grad`` because its embedding is detached anyway), map the view's
embedding back with :func:`corrseg3d.ccm.invert_flips`, with ``loss.flip_distill`` the frozen
teacher's affinities on a random z/y/x flip of the batch (:func:`teacher_affinities`),
:func:`corrseg3d.losses.pea_loss`, backward, Adam step. The network runs under autocast
(``train.precision``) and in ``channels_last_3d`` memory format; losses are computed in float32.

Output directory (``--out``, default ``runs/<config name>``):

``config.yaml``  the resolved configuration;
``train.jsonl``  one JSON record per log step (``kind: "train"``: mean losses, ``it_per_s``) and
                 per validation (``kind: "valid"``: VOI split/merge, VOI, ARAND per volume and mean);
``last.pt``      the latest checkpoint (every ``train.checkpoint_every`` iterations and at the end;
                 every checkpoint records the training voxel size, :func:`training_voxel_size`);
``best.pt``      the checkpoint with the lowest mean validation VOI (needs validation volumes);
``loss.png``     loss and validation curves.

Validation (every ``validation.every`` iterations and at the end) scores the model on whole
volumes as the pipeline would segment them (:mod:`corrseg3d.validation`); ``best.pt`` is the
checkpoint with the lowest mean VOI.

A folder that already holds a run is never overwritten by accident: without ``--resume`` or
``--overwrite`` a non-empty ``--out`` is refused before anything is written (like every other
check: device, precision, checkpoints, volumes and slice ranges; :mod:`corrseg3d.preflight`).

``--resume`` continues from ``last.pt`` bit for bit: the checkpoint restores model, optimizer,
iteration and torch RNG, and every training sample is seeded by its index (see
:mod:`corrseg3d.sampler`). Only ``train.iterations`` and settings that do not change the
results (:data:`RESUMABLE_CHANGES`) may differ from the checkpoint's configuration. A resumed
run whose validation settings differ from the checkpoint's (other volumes, tiling or segmentation)
forgets the earlier best VOI, so its first validation writes ``best.pt`` again: scores of two
settings do not compare.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from tqdm import tqdm

from emcore.contingency import check_label_dtype

from .ccm import invert_flips
from .checkpoint import read_checkpoint, save_checkpoint
from .cli import ArgumentParser, entry_point
from .config import Config, ConfigError, from_dict, load_config
from .typed_yaml import to_dict
from .correlation import self_correlation
from .inference import autocast, inference_model, resolve_device, resolve_precision
from .losses import pea_loss
from .model import ResidualUNet3D, build_model
from .preflight import check_disjoint, check_out, discard_run
from .sampler import TrainingPatches, make_loader
from .validation import load_validation_volumes, validate

__all__ = ["RESUMABLE_CHANGES", "training_voxel_size", "source_voxel_sizes", "RunLog", "build_optimizer",
           "freeze_parameters", "set_training_mode", "load_teacher", "teacher_flip", "teacher_affinities",
           "train_step", "train", "main"]

#: Config keys (``fnmatch`` patterns) that may differ between a checkpoint and a ``--resume`` run: none of
#: them changes the optimisation trajectory (validation only reads the model and picks ``best.pt``).
RESUMABLE_CHANGES = ("train.iterations", "train.num_workers", "train.threads", "train.log_every",
                     "train.checkpoint_every", "validation.*")

def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def _check_sources(config: Config, dataset: TrainingPatches, valid_volumes: Sequence[dict[str, Any]]) -> None:
    """Open the training sources here, in the main process, so a bad source is one error before any
    DataLoader worker starts; check their slice ranges against the volumes and the validation ranges."""
    ranges = []
    for index, (spec, source) in enumerate(zip(config.data.sources, dataset.sources)):
        check_label_dtype(source.labels.dtype, f"data.sources.{index}.labels {spec.labels}")
        ranges.append((f"data.sources.{index}.slices", spec.raw, source.start, source.stop))
    check_disjoint(ranges, [volume["slices"] for volume in valid_volumes],
                   allowed=config.data.allow_validation_overlap)


def _source_voxel_size(config: Config, dataset: TrainingPatches, index: int) -> tuple[float, ...] | None:
    """Source ``index``'s voxel size: its ``voxel_size`` setting, else its raw volume's stated one (None)."""
    spec, raw = config.data.sources[index], dataset.sources[index].raw
    if spec.voxel_size is not None:
        return tuple(spec.voxel_size)
    return tuple(raw.voxel_size) if raw.voxel_size_stated else None


def training_voxel_size(config: Config, dataset: TrainingPatches) -> tuple[float, float, float]:
    """The (z, y, x) voxel size in nm the model is trained at, recorded in its checkpoints.

    ``data.voxel_size`` if given, else the voxel size with the highest summed weight over the
    sources (the first seen of equals), so one geometry split over several sources counts once
    with their total weight. A source's voxel size is its ``voxel_size`` setting, else its raw
    volume's stated voxel size; a source with neither counts on its own.

    Raises
    ------
    ConfigError
        The winning weight belongs to a source whose raw volume states no voxel size and the
        config gives none.
    """
    if config.data.voxel_size is not None:
        return config.data.voxel_size
    totals: dict[tuple[float, ...] | int, float] = {}  # keyed by voxel size, or by index where unknown
    for index, spec in enumerate(config.data.sources):
        size = _source_voxel_size(config, dataset, index)
        key = index if size is None else size
        totals[key] = totals.get(key, 0.0) + spec.weight
    winner = max(totals, key=totals.__getitem__)  # dicts keep insertion order: the first seen of equals
    if isinstance(winner, int):
        raise ConfigError(f"data.sources.{winner}: {config.data.sources[winner].raw} has no voxel size (its weight sets "
                          f"the model's): set data.sources.{winner}.voxel_size or data.voxel_size to [z, y, x] in nm")
    return winner  # type: ignore[return-value]


def source_voxel_sizes(config: Config, dataset: TrainingPatches) -> list[tuple[float, ...]]:
    """The voxel sizes (z, y, x, nm) of the training sources that state one, highest weight first.

    Recorded (repeats dropped) as the checkpoint's ``trained_voxel_sizes``: prediction does not
    resample an input near any of them (:func:`pipeline.predict.predict`). Sources with
    ``predict_natively: false`` are left out.
    """
    order = sorted((i for i, source in enumerate(config.data.sources) if source.predict_natively),
                   key=lambda i: -config.data.sources[i].weight)
    sizes = (_source_voxel_size(config, dataset, index) for index in order)
    return [size for size in sizes if size is not None]


class RunLog:
    """Append-only ``train.jsonl`` plus the ``loss.png`` plot drawn from it."""

    def __init__(self, directory: Path, *, resume_from: int | None) -> None:
        self.path = directory / "train.jsonl"
        self.plot_path = directory / "loss.png"
        records = self.records() if resume_from is not None else []
        # Records written after the checkpoint we resume from would be duplicated: drop them.
        kept = [r for r in records if r["iteration"] <= (resume_from or 0)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        """Loss terms (log scale) and validation VOI/ARAND against iterations (matplotlib Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.records()
        train_records = [r for r in records if r["kind"] == "train"]
        valid_records = [r for r in records if r["kind"] == "valid"]
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for term in (train_records[0]["loss"] if train_records else {}):
            values = [(r["iteration"], r["loss"][term]) for r in train_records if r["loss"][term] > 0]
            if values:
                left.plot(*zip(*values), label=term)
        left.set(xlabel="iteration", ylabel="loss", yscale="log", title="training loss")
        for metric in ("voi", "arand"):
            if valid_records:
                right.plot([r["iteration"] for r in valid_records], [r[metric] for r in valid_records],
                           marker="o", label=metric)
        right.set(xlabel="iteration", title="validation (mean of the volumes)")
        for axis in (left, right):
            if axis.get_legend_handles_labels()[0]:
                axis.legend()
        figure.tight_layout()
        figure.savefig(self.plot_path, dpi=100)
        plt.close(figure)


def _scored_alike(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a checkpoint's validation VOI compares with this run's: the same ``validation`` settings
    but ``every`` (a config saved before a setting existed did not score with today's default)."""
    def scoring(config: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in config.get("validation", {}).items() if k != "every"}, sort_keys=True)
    return scoring(saved) == scoring(current)


def _check_resumable(checkpoint: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume ``path`` with the settings ``current``: no optimizer state, fewer iterations
    than it has done, or a changed setting outside :data:`RESUMABLE_CHANGES`."""
    if "optimizer_state" not in checkpoint:
        raise ValueError(f"cannot resume: {path} has no optimizer state (an exported or averaged file); start a "
                         f"new run from it with train.init_from={path} and another --out")
    done, wanted = checkpoint["iteration"], current["train"]["iterations"]
    if wanted < done:
        raise ValueError(f"cannot resume: train.iterations={wanted} is below the {done} iterations {path} has done; "
                         f"pass train.iterations={done} or more")
    saved = checkpoint["config"]

    def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        flat = {}
        for key, value in values.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    old, new = flatten(to_dict(from_dict(saved))), flatten(current)  # keys newer than the checkpoint: defaults
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and not any(fnmatch(k, p) for p in RESUMABLE_CHANGES))
    if changed:
        raise ValueError(f"cannot resume: the configuration differs from the checkpoint's in {', '.join(changed)} "
                         f"(only {', '.join(RESUMABLE_CHANGES)} may change)")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    targets = {k: batch[k].to(device) for k in ("affinities", "weights", "valid", "channel_mask")}
    targets["affinities"] = targets["affinities"].float()
    targets["pyramid"] = [{k: v.to(device) for k, v in level.items()} for level in batch["pyramid"]]
    return targets


def freeze_parameters(model: torch.nn.Module, trainable: Sequence[str]) -> None:
    """Let only the parameters whose names start with one of ``trainable`` train (all if empty).

    A prefix matches a whole name component: ``out`` matches ``out.weight``, not
    ``embed_out.0.weight``. A prefix that matches no parameter raises ``ValueError`` naming the
    model's top-level modules.
    """
    if not trainable:
        return

    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    names = [name for name, _ in model.named_parameters()]
    for prefix in trainable:
        if not any(within(name, prefix) for name in names):
            modules = sorted({name.split(".")[0] for name in names})
            raise ValueError(f"train.trainable: {prefix!r} names no parameter of the model; use prefixes of "
                             f"parameter names such as {', '.join(modules)} or decoder.3")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(within(name, prefix) for prefix in trainable))


def set_training_mode(model: torch.nn.Module, *, freeze_batchnorm: bool) -> None:
    """Put ``model`` in train mode; frozen BatchNorm layers stay in eval mode.

    A BatchNorm layer is frozen with ``freeze_batchnorm`` or when its own scale and shift do not
    train (:func:`freeze_parameters`). A frozen BatchNorm normalises with its running mean and
    variance, ``(x - mean) / sqrt(var + eps)`` times its scale plus shift, and leaves them
    unchanged, so a fine-tuning batch of one patch neither normalises by its own statistics nor
    overwrites the statistics of the weights it started from.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            if freeze_batchnorm or not any(p.requires_grad for p in module.parameters()):
                module.eval()


def load_teacher(config: Config, device: torch.device) -> ResidualUNet3D:
    """The frozen teacher of ``loss.flip_distill``: ``train.init_from``'s network for inference.

    Its BatchNorms are folded with their running statistics (:func:`corrseg3d.inference.inference_model`)
    and its weights never train, so a resumed run distils from the same teacher as the first.
    """
    teacher = build_model(to_dict(config.model))
    initialise_from(teacher, config.train.init_from, config.loss.offsets)
    teacher = inference_model(teacher).to(device, memory_format=_memory_format(config.train.channels_last))
    return teacher.requires_grad_(False)


def teacher_flip(seed: int, iteration: int) -> list[int]:
    """The axes (z, y, x = 0, 1, 2) flipped for the teacher at ``iteration``: three fair coins.

    Drawn from a generator seeded by ``(seed, iteration, 1)`` (the samples' are seeded by
    ``(seed, index)``, :func:`corrseg3d.sampler.sample_rng`), so a resumed run draws the same flips.
    """
    coins = np.random.default_rng([int(seed), int(iteration), 1]).integers(2, size=3)
    return [axis for axis in range(3) if coins[axis]]


@torch.no_grad()
def teacher_affinities(teacher: ResidualUNet3D, image: torch.Tensor, offsets: Sequence[Sequence[int]],
                       flip_axes: Sequence[int]) -> torch.Tensor:
    """Affinities of ``teacher`` on ``image`` flipped along ``flip_axes``, in ``image``'s frame.

    ``a_o(p) = clip(<e(p), e(p + o)>, 0, 1)`` with ``e = F^-1 T(F x)``: the embedding of the flipped
    batch ``F x`` (``flip_axes`` index z, y, x = 0, 1, 2 of the (B, 1, z, y, x) batch) flipped back,
    so the offsets keep their meaning. The mean over all 8 flip sets is ``pipeline.predict --tta``'s
    prediction (away from the border, where that one is 0).

    Returns
    -------
    (B, C, z, y, x) float32 tensor in [0, 1].
    """
    dims = [axis + 2 for axis in flip_axes]
    embedding = teacher(image.flip(dims) if dims else image).output.float()
    return self_correlation(embedding.flip(dims) if dims else embedding, offsets).clamp_(0.0, 1.0)


def train_step(model: ResidualUNet3D, optimizer: torch.optim.Optimizer, batch: dict[str, Any], config: Config, *,
               device: torch.device, autocast_dtype: torch.dtype | None,
               scaler: torch.amp.GradScaler, teacher: ResidualUNet3D | None = None,
               flip_axes: Sequence[int] = ()) -> dict[str, float]:
    """One optimisation step on a collated batch (``model`` in the mode :func:`set_training_mode`
    set); returns the loss terms as floats. ``teacher`` (:func:`load_teacher`) is needed when
    ``loss.flip_distill > 0``; it sees the batch flipped along ``flip_axes`` (:func:`teacher_flip`)."""
    memory_format = _memory_format(config.train.channels_last)
    image = batch["image"].to(device).contiguous(memory_format=memory_format)
    with autocast(device, autocast_dtype):
        output = model(image)
        view_output = target = None
        if "view" in batch:
            with torch.no_grad():
                view = model(batch["view"].to(device).contiguous(memory_format=memory_format)).output
            view_output = invert_flips(view.float(), batch["rule"])
        if config.loss.flip_distill > 0:
            if teacher is None:
                raise ValueError("loss.flip_distill needs the teacher network (load_teacher)")
            target = teacher_affinities(teacher, image, config.loss.offsets, flip_axes)
    losses = pea_loss(output, _to_device(batch, device), offsets=config.loss.offsets, view_output=view_output,
                      use_scm=config.loss.scm, use_ccm=config.loss.ccm, use_epm=config.loss.epm,
                      head=config.model.head, mean_embedding=config.loss.mean_embedding,
                      teacher_affinities=target, flip_distill=config.loss.flip_distill)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {k: float(v.detach()) for k, v in losses.items()}


def initialise_from(model: ResidualUNet3D, path: str | Path, offsets: Sequence[Sequence[int]]) -> None:
    """Load the weights of checkpoint ``path`` into ``model`` (``train.init_from``, fine-tuning).

    Raises ``ValueError`` when the checkpoint was trained for other offsets or its tensors do not
    fit the model (another width, depth, head or embedding size). Settings that do not change a
    tensor's shape, such as ``model.upsample_align_corners`` or ``model.bn_momentum``, may differ.
    """
    checkpoint = read_checkpoint(path)
    if [list(o) for o in checkpoint["offsets"]] != [list(o) for o in offsets]:
        raise ValueError(f"train.init_from={path}: its offsets {checkpoint['offsets']} differ from loss.offsets {list(offsets)}")
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ValueError(f"train.init_from={path}: its weights do not fit the configured model ({first}); "
                         f"use the model settings it was trained with") from None


def build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Adam:
    """Adam over the parameters that train, with the configured (paper: eps 0.01, amsgrad, coupled
    L2 decay) settings."""
    o = config.optim
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=o.betas, eps=o.eps,
                            weight_decay=o.weight_decay, amsgrad=o.amsgrad)


def learning_rate(iteration: int, config: Config) -> float:
    """Learning rate of 1-based ``iteration`` under ``optim.lr_schedule``.

    ``constant``: ``lr``. ``cosine``: ``lr_min + (lr - lr_min) (1 + cos(pi t)) / 2`` with
    ``t = (iteration - 1) / (train.iterations - 1)``, so ``lr`` at the first iteration and
    ``lr_min`` at the last. A pure function of the iteration, so a resumed run continues the
    schedule where it stopped.
    """
    o = config.optim
    if o.lr_schedule == "constant":
        return o.lr
    t = (iteration - 1) / max(config.train.iterations - 1, 1)
    return o.lr_min + (o.lr - o.lr_min) * (1.0 + math.cos(math.pi * t)) / 2.0


def train(config: Config, out: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training; returns a summary (iterations, it/s, last losses, best VOI).

    Everything is checked before ``out`` is touched: the output folder (a folder holding a run
    needs ``resume`` or ``overwrite``; :func:`corrseg3d.preflight.check_out`), device and
    precision, the checkpoint to resume or start from, and every training and validation volume
    with its slice range. ``overwrite`` deletes the earlier run's files first.
    """
    out = Path(out)
    settings = to_dict(config)
    check_out(out, resume=resume, overwrite=overwrite)
    device = resolve_device(config.train.device)
    autocast_dtype = resolve_precision(config.train.precision, device)
    checkpoint = read_checkpoint(out / "last.pt") if resume else None
    if checkpoint is not None:
        _check_resumable(checkpoint, settings, out / "last.pt")
    use_view = config.model.head == "embedding" and config.loss.ccm
    dataset = TrainingPatches(config.data.sources, patch=config.data.patch, context=config.data.context,
                              offsets=config.loss.offsets, augment_config=config.augment, seed=config.train.seed,
                              with_view=use_view, class_weight_cap=config.loss.class_weight_cap)
    valid_volumes = load_validation_volumes(config.validation)
    _check_sources(config, dataset, valid_volumes)
    voxel_size = training_voxel_size(config, dataset)
    trained_voxel_sizes = source_voxel_sizes(config, dataset)
    if checkpoint is not None and checkpoint.get("voxel_size"):  # as recorded, also by `checkpoint set-voxel-size`
        voxel_size, trained_voxel_sizes = checkpoint["voxel_size"], checkpoint.get("trained_voxel_sizes", [])
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.train.seed)
    model = build_model(settings["model"]).to(device, memory_format=_memory_format(config.train.channels_last))
    freeze_parameters(model, config.train.trainable)
    optimizer = build_optimizer(model, config)
    start, best_voi = 0, math.inf
    if config.train.init_from and not resume:
        initialise_from(model, config.train.init_from, config.loss.offsets)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        torch.set_rng_state(checkpoint["rng_state"])
        start = checkpoint["iteration"]
        if _scored_alike(checkpoint["config"], settings):
            best_voi = checkpoint["metrics"].get("best_voi", math.inf)
    teacher = load_teacher(config, device) if config.loss.flip_distill > 0 else None
    set_training_mode(model, freeze_batchnorm=config.train.freeze_batchnorm)  # validation works on a copy
    if overwrite:
        discard_run(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    log = RunLog(out, resume_from=start if resume else None)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    loader = make_loader(dataset, batch_size=config.train.batch_size, start_iteration=start,
                         stop_iteration=config.train.iterations, num_workers=config.train.num_workers)
    total = config.train.iterations
    # The loss window not yet logged travels in last.pt, so a resumed run logs what a straight one does.
    window = checkpoint["metrics"].get("loss_window", {}) if checkpoint is not None else {}
    sums: dict[str, float] = dict(window.get("sums", {}))
    steps = int(window.get("steps", 0))
    window_start, run_start, last_losses = time.perf_counter(), time.perf_counter(), {}
    bar = tqdm(total=total, initial=start, disable=not progress, desc="train", dynamic_ncols=True)

    def save(path: Path, iteration: int, metrics: dict[str, Any]) -> None:
        save_checkpoint(path, model=model, optimizer=optimizer, iteration=iteration, offsets=config.loss.offsets,
                        config=settings, voxel_size=voxel_size, trained_voxel_sizes=trained_voxel_sizes,
                        metrics=dict(metrics, best_voi=best_voi, loss_window=dict(sums=sums, steps=steps)))

    for iteration, batch in enumerate(loader, start=start + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(iteration, config)
        last_losses = train_step(model, optimizer, batch, config, device=device, autocast_dtype=autocast_dtype,
                                 scaler=scaler, teacher=teacher,
                                 flip_axes=teacher_flip(config.train.seed, iteration) if teacher else ())
        for key, value in last_losses.items():
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{last_losses['total']:.4f}")
        done = iteration == total
        if iteration % config.train.log_every == 0 or done:
            now = time.perf_counter()
            log.write(dict(kind="train", iteration=iteration, loss={k: v / steps for k, v in sums.items()},
                           it_per_s=steps / (now - window_start), lr=optimizer.param_groups[0]["lr"]))
            sums, steps, window_start = {}, 0, now
        paused, metrics = time.perf_counter(), {}
        if valid_volumes and (iteration % config.validation.every == 0 or done):
            metrics = validate(model, valid_volumes, config.validation, offsets=config.loss.offsets, device=device,
                               autocast_dtype=autocast_dtype, channels_last=config.train.channels_last)
            log.write(dict(kind="valid", iteration=iteration, **metrics))
            if metrics["voi"] < best_voi:
                best_voi = metrics["voi"]
                save(out / "best.pt", iteration, metrics)
        if iteration % config.train.checkpoint_every == 0 or done:
            save(out / "last.pt", iteration, metrics)
            log.plot()
        window_start += time.perf_counter() - paused  # it/s measures training only
    bar.close()
    elapsed = time.perf_counter() - run_start
    return dict(iterations=total, trained=total - start, seconds=elapsed,
                it_per_s=(total - start) / elapsed if elapsed > 0 else 0.0,
                last_loss=last_losses, best_voi=best_voi, device=str(device),
                precision=str(autocast_dtype or "fp32"))


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m corrseg3d.train", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="YAML configuration (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="configuration overrides (YAML values)")
    parser.add_argument("--out", help="output directory (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in OUT (without it, or --resume, a non-empty OUT is refused)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``corrseg3d.train`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    summary = train(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
