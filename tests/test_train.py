"""End-to-end training on a tiny synthetic volume: outputs, checkpoints, bit-for-bit resume."""

import json
import os

import numpy as np
import pytest
import torch

from corrseg3d.checkpoint import export_weights, load_model, read_checkpoint, set_voxel_size
from corrseg3d.config import from_dict
from corrseg3d.typed_yaml import to_dict
from corrseg3d.inference import predict_volume, resolve_precision
from corrseg3d.model import build_model
from corrseg3d.correlation import self_correlation
from corrseg3d.train import initialise_from, learning_rate, load_teacher, main, teacher_affinities, teacher_flip, train
from emcore.conventions import PEA_OFFSETS
from emcore.store import create_volume, open_volume
from pipeline.predict import _flip_sets, _unflip_affinities
from pipeline.synth import generate


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth.zarr"
    raw, labels = generate((14, 64, 64), seed=0)
    create_volume(f"{root}/raw", raw.shape, raw.dtype, chunks=(8, 64, 64)).array[...] = raw
    create_volume(f"{root}/labels", labels.shape, labels.dtype, chunks=(8, 64, 64)).array[...] = labels
    return str(root)


def _config(volume, *, iterations, validate=True, workers=0, **sections):
    values = {
        "model": {"filters": [4, 4, 4, 4, 4], "embedding_dim": 4},
        "data": {"sources": [{"raw": f"{volume}/raw", "labels": f"{volume}/labels", "slices": [0, 10]}],
                 "patch": [4, 32, 32], "context": [0, 8, 8]},
        "augment": {"chain": 1.0, "missing_section": 0.5, "misalignment": 0.5, "misalignment_max_shift": 4},
        "train": {"iterations": iterations, "batch_size": 2, "num_workers": workers, "seed": 1,
                  "precision": "fp32", "log_every": 2, "checkpoint_every": 2, "threads": 1},
        "validation": {"every": 3, "block": [4, 32, 32], "halo": [2, 16, 16],
                       "volumes": [{"raw": f"{volume}/raw", "labels": f"{volume}/labels", "slices": [10, 14]}] if validate else []},
    }
    for section, updates in sections.items():
        values.setdefault(section, {}).update(updates)
    return from_dict(values)


def test_training_writes_logs_checkpoints_and_plot(volume, tmp_path):
    summary = train(_config(volume, iterations=4), tmp_path, progress=False)
    for name in ("last.pt", "best.pt", "train.jsonl", "loss.png", "config.yaml"):
        assert (tmp_path / name).stat().st_size > 0
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    valid_records = [r for r in records if r["kind"] == "valid"]
    assert [r["iteration"] for r in train_records] == [2, 4] and [r["iteration"] for r in valid_records] == [3, 4]
    assert set(train_records[0]["loss"]) == {"scm", "ccm", "epm", "total"} and train_records[0]["it_per_s"] > 0
    assert all(np.isfinite(r["voi"]) and 0 <= r["arand"] <= 1 for r in valid_records)
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["metrics"]["voi"] == min(r["voi"] for r in valid_records) and summary["best_voi"] == best["metrics"]["voi"]
    model, offsets, metadata = load_model(tmp_path / "last.pt")
    assert not model.training and offsets == PEA_OFFSETS and metadata["iteration"] == 4
    assert {"model_config", "model_sha256", "config", "code_version", "metrics"} <= set(metadata)
    affinities = predict_volume(model, np.random.default_rng(0).random((5, 40, 36), dtype=np.float32), offsets,
                                block=(4, 32, 32), halo=(2, 16, 16), device=torch.device("cpu"))
    assert affinities.shape == (12, 5, 40, 36) and 0 <= affinities.min() and affinities.max() <= 1


@pytest.mark.parametrize("overrides, terms", [
    ({"model": {"head": "affinity", "pyramid_heads": False}, "loss": {"epm": False}}, {"affinity", "epm", "total"}),
    ({"loss": {"ccm": False, "epm": False}}, {"scm", "ccm", "epm", "total"}),
    ({"train": {"precision": "bf16"}}, {"scm", "ccm", "epm", "total"}),
    ({"loss": {"ccm": False, "class_weight_cap": 1.0, "mean_embedding": 0.5}}, {"scm", "ccm", "epm", "collapse", "total"}),
])
def test_ablation_rows_and_precisions_train(volume, tmp_path, monkeypatch, overrides, terms):
    monkeypatch.setattr("corrseg3d.inference.cpu_has_native_bf16", lambda: True)  # bf16 runs, emulated or not
    summary = train(_config(volume, iterations=2, validate=False, **overrides), tmp_path, progress=False)
    assert set(summary["last_loss"]) == terms and np.isfinite(summary["last_loss"]["total"])
    assert all(summary["last_loss"][k] == 0 for k in ("ccm", "epm") if k in overrides.get("loss", {}))


def _weights(path):
    checkpoint = read_checkpoint(path)
    return checkpoint["model_state"], checkpoint["optimizer_state"]


def _assert_identical(a, b):
    (state_a, optim_a), (state_b, optim_b) = a, b
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    for slot_a, slot_b in zip(optim_a["state"].values(), optim_b["state"].values()):
        assert all(torch.equal(slot_a[k], slot_b[k]) for k in slot_a)


def test_resume_is_bit_for_bit(volume, tmp_path):
    train(_config(volume, iterations=4, validate=False), tmp_path / "straight", progress=False)
    train(_config(volume, iterations=2, validate=False), tmp_path / "split", progress=False)
    assert read_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 2
    # Validation settings may change on resume: they never touch the optimisation.
    changed_validation = {"halo": [1, 8, 8], "mws_strides": [1, 2, 2]}
    train(_config(volume, iterations=4, validate=False, validation=changed_validation), tmp_path / "split",
          resume=True, progress=False)
    straight = _weights(tmp_path / "straight" / "last.pt")
    _assert_identical(straight, _weights(tmp_path / "split" / "last.pt"))
    # Workers draw the same samples (seeded per sample), so a resume with workers matches too.
    train(_config(volume, iterations=2, validate=False, workers=2), tmp_path / "workers", progress=False)
    train(_config(volume, iterations=4, validate=False, workers=2), tmp_path / "workers", resume=True, progress=False)
    _assert_identical(straight, _weights(tmp_path / "workers" / "last.pt"))
    iterations = [json.loads(line)["iteration"] for line in (tmp_path / "split" / "train.jsonl").read_text().splitlines()]
    assert iterations == [2, 4]


def test_a_run_killed_between_log_records_resumes_to_the_same_log(volume, tmp_path, monkeypatch):
    """Killed after the checkpoint of iteration 4 (log every 3), the resumed run's record of
    iteration 6 averages iterations 4-6 as the straight run's does."""
    import corrseg3d.train as train_module

    config = _config(volume, iterations=6, validate=False, train={"log_every": 3})
    train(config, tmp_path / "straight", progress=False)
    real_step = train_module.train_step

    def killed_at_five(*args, **kwargs):
        if killed_at_five.calls == 4:
            raise KeyboardInterrupt("killed")
        killed_at_five.calls += 1
        return real_step(*args, **kwargs)

    killed_at_five.calls = 0
    monkeypatch.setattr(train_module, "train_step", killed_at_five)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", progress=False)
    monkeypatch.setattr(train_module, "train_step", real_step)
    train(config, tmp_path / "killed", resume=True, progress=False)

    def losses(folder):
        return [(r["iteration"], r["loss"]) for r in map(json.loads, (folder / "train.jsonl").read_text().splitlines())]

    assert [i for i, _ in losses(tmp_path / "straight")] == [3, 6]
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")


def test_validation_never_changes_the_optimisation(volume, tmp_path):
    """Validating after every iteration, every third or never leaves the same weights and optimizer state."""
    train(_config(volume, iterations=4, validate=False), tmp_path / "never", progress=False)
    never = _weights(tmp_path / "never" / "last.pt")
    for every, validations in ((1, 4), (3, 2)):
        train(_config(volume, iterations=4, validation={"every": every}), tmp_path / f"every{every}", progress=False)
        assert (tmp_path / f"every{every}" / "train.jsonl").read_text().count('"kind": "valid"') == validations
        _assert_identical(never, _weights(tmp_path / f"every{every}" / "last.pt"))


def test_resume_keeps_a_voxel_size_recorded_with_set_voxel_size(volume, tmp_path):
    train(_config(volume, iterations=1, validate=False), tmp_path, progress=False)
    set_voxel_size(tmp_path / "last.pt", (40, 8, 8), trained=[(50, 4, 4)])
    train(_config(volume, iterations=2, validate=False), tmp_path, resume=True, progress=False)
    resumed = read_checkpoint(tmp_path / "last.pt")
    assert resumed["iteration"] == 2
    assert (resumed["voxel_size"], resumed["trained_voxel_sizes"]) == ([40.0, 8.0, 8.0], [[40.0, 8.0, 8.0], [50.0, 4.0, 4.0]])


@pytest.mark.parametrize("validation, rewritten", [({}, False), ({"method": "mws"}, True)])
def test_resume_keeps_the_best_voi_only_under_the_same_validation(volume, tmp_path, validation, rewritten):
    """A best VOI measured one way is not compared with scores measured another way."""
    train(_config(volume, iterations=2), tmp_path, progress=False)
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    checkpoint["metrics"]["best_voi"] = -1.0  # unbeatable, if it still counts
    torch.save(checkpoint, tmp_path / "last.pt")
    best_before = read_checkpoint(tmp_path / "best.pt")["iteration"]
    train(_config(volume, iterations=4, validation=validation), tmp_path, resume=True, progress=False)
    best_after = read_checkpoint(tmp_path / "best.pt")["iteration"]
    assert best_before == 2 and (best_after >= 3 if rewritten else best_after == 2)


def test_cosine_schedule_runs_from_lr_to_lr_min(volume, tmp_path):
    cosine = {"lr": 1e-3, "lr_schedule": "cosine", "lr_min": 1e-5}
    config = _config(volume, iterations=5, validate=False, optim=cosine)
    rates = [learning_rate(i, config) for i in range(1, 6)]
    assert rates[0] == 1e-3 and rates[-1] == pytest.approx(1e-5) and rates[2] == pytest.approx((1e-3 + 1e-5) / 2)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    constant = _config(volume, iterations=5, validate=False)
    assert [learning_rate(i, constant) for i in (1, 3, 5)] == [constant.optim.lr] * 3
    train(config, tmp_path / "straight", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "straight" / "train.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["lr"]) for r in logged] == [(2, rates[1]), (4, rates[3]), (5, rates[4])]


def test_resume_refuses_a_changed_config(volume, tmp_path):
    train(_config(volume, iterations=2, validate=False), tmp_path, progress=False)
    with pytest.raises(ValueError, match="optim.lr"):
        train(_config(volume, iterations=4, validate=False, optim={"lr": 1e-3}), tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="train.iterations=1 is below the 2 iterations"):
        train(_config(volume, iterations=1, validate=False), tmp_path, resume=True, progress=False)
    export_weights(tmp_path / "last.pt", tmp_path / "weights.pt")
    os.replace(tmp_path / "weights.pt", tmp_path / "last.pt")
    with pytest.raises(ValueError, match="has no optimizer state .* train.init_from="):
        train(_config(volume, iterations=4, validate=False), tmp_path, resume=True, progress=False)


def test_cli_with_overrides(volume, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"data": {"sources": [{"raw": f"{volume}/raw", "labels": f"{volume}/labels"}],
                                           "patch": [4, 32, 32], "context": [0, 8, 8]}}))
    assert main(["-c", str(config), "--out", str(tmp_path / "run"), "--no-progress", "model.filters=[4,4,4,4,4]",
                 "model.embedding_dim=4", "train.iterations=1", "train.num_workers=0", "train.batch_size=1",
                 "train.precision=fp32"]) == 0
    assert read_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["iterations"] == 1


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_resolution(monkeypatch, native_bf16):
    monkeypatch.setattr("corrseg3d.inference.cpu_has_native_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if native_bf16 else None)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device; use fp32 or auto"):
        resolve_precision("fp16", cpu)


def test_bf16_is_refused_on_a_cpu_that_only_emulates_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("corrseg3d.inference.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr("corrseg3d.inference.cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"^precision bf16 is emulated on this CPU \(.* has no AVX512-BF16 or "
                                         r"AMX-BF16\), far slower than fp32: use fp32 or auto$"):
        resolve_precision("bf16", cpu)


def _train_with(volume, tmp_path, override: str) -> int:
    """Exit status of ``python -m corrseg3d.train`` on a one-iteration config with ``override`` (key=value)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(to_dict(_config(volume, iterations=1))))
    return main(["-c", str(config), "--out", str(tmp_path / "run"), "--no-progress", override])


def test_training_in_bf16_on_a_cpu_without_it_is_one_error_line(volume, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("corrseg3d.inference.cpu_has_native_bf16", lambda: False)
    assert _train_with(volume, tmp_path, "train.precision=bf16") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: precision bf16 is emulated") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def float_raw(volume, tmp_path_factory):
    """``volume``'s raw as float32 grey values in [0, 1] with one NaN: data predict refuses."""
    raw = open_volume(f"{volume}/raw")[:].astype(np.float32) / 255
    raw[0, 0, 0] = np.nan
    location = f"{tmp_path_factory.mktemp('float')}/float.zarr/rawf"
    create_volume(location, raw.shape, raw.dtype, chunks=(8, 64, 64)).array[...] = raw
    return location


@pytest.mark.parametrize("key", ["data.sources.0.raw", "validation.volumes.0.raw"])
@pytest.mark.parametrize("dataset", ["float", "labels"])
def test_raw_that_predict_refuses_stops_training_before_it_starts(volume, float_raw, tmp_path, capsys, dataset, key):
    location, dtype = (float_raw, "float32") if dataset == "float" else (f"{volume}/labels", "uint64")
    assert _train_with(volume, tmp_path, f"{key}={location}") == 2
    err = capsys.readouterr().err
    assert err == (f"error: {location} is {dtype}: training reads uint8 grey values; convert with "
                   "`python -m pipeline.data convert` (rescales to uint8)\n")
    assert not (tmp_path / "run").exists()


def test_fine_tuning_starts_from_the_given_weights(volume, tmp_path):
    train(_config(volume, iterations=2, validate=False), tmp_path / "base", progress=False)
    base = str(tmp_path / "base" / "last.pt")
    # Same seed, same first batch: the first loss differs only because the starting weights differ.
    tuned = train(_config(volume, iterations=1, validate=False, train={"init_from": base, "seed": 9}),
                  tmp_path / "tuned", progress=False)
    fresh = train(_config(volume, iterations=1, validate=False, train={"seed": 9}), tmp_path / "fresh", progress=False)
    assert tuned["last_loss"]["total"] != fresh["last_loss"]["total"]
    assert read_checkpoint(tmp_path / "tuned" / "last.pt")["iteration"] == 1
    # A setting that changes no tensor (the upsampling grid) may differ from the checkpoint's.
    model = build_model(dict(filters=[4, 4, 4, 4, 4], embedding_dim=4, upsample_align_corners=False))
    initialise_from(model, base, PEA_OFFSETS)
    state = read_checkpoint(base)["model_state"]
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="do not fit the configured model"):
        initialise_from(build_model(dict(filters=[4, 4, 4, 4, 8], embedding_dim=4)), base, PEA_OFFSETS)
    with pytest.raises(ValueError, match="differ from loss.offsets"):
        initialise_from(model, base, PEA_OFFSETS[:6])


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_batchnorm_keeps_its_statistics_while_the_weights_train(volume, tmp_path, frozen):
    train(_config(volume, iterations=1, validate=False), tmp_path / "base", progress=False)
    base = read_checkpoint(tmp_path / "base" / "last.pt")["model_state"]
    # Three iterations with a validation between them: validating must not unfreeze the layers.
    train(_config(volume, iterations=3, validate=True, validation={"every": 1},
                  train={"init_from": str(tmp_path / "base" / "last.pt"), "freeze_batchnorm": frozen}),
          tmp_path / "tuned", progress=False)
    tuned = read_checkpoint(tmp_path / "tuned" / "last.pt")["model_state"]
    statistics = [k for k in base if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    affine = [k.replace("running_mean", "weight") for k in statistics if k.endswith("running_mean")]
    assert statistics and all(torch.equal(base[k], tuned[k]) == frozen for k in statistics)
    assert affine and not any(torch.equal(base[k], tuned[k]) for k in affine)


def test_only_the_trainable_layers_change_and_their_run_resumes_bit_for_bit(volume, tmp_path):
    train(_config(volume, iterations=1, validate=False), tmp_path / "base", progress=False)
    base = read_checkpoint(tmp_path / "base" / "last.pt")["model_state"]
    tuned_config = dict(iterations=4, validate=False,
                        train={"init_from": str(tmp_path / "base" / "last.pt"), "trainable": "decoder.3,out"})
    train(_config(volume, **tuned_config), tmp_path / "straight", progress=False)
    tuned = read_checkpoint(tmp_path / "straight" / "last.pt")["model_state"]
    trains = [k for k in base if k.startswith(("decoder.3.", "out.")) and "running" not in k and "batches" not in k]
    # "out" names the output convolution only, not embed_out; decoder.3's BatchNorm statistics train too
    assert trains and all(not torch.equal(base[k], tuned[k]) for k in trains)
    assert all(torch.equal(base[k], tuned[k]) for k in base if not k.startswith(("decoder.3.", "out.")))
    train(_config(volume, **dict(tuned_config, iterations=2)), tmp_path / "resumed", progress=False)
    train(_config(volume, **tuned_config), tmp_path / "resumed", resume=True, progress=False)
    resumed = read_checkpoint(tmp_path / "resumed" / "last.pt")["model_state"]
    assert all(torch.equal(tuned[k], resumed[k]) for k in tuned)


def test_a_trainable_prefix_that_names_no_parameter_is_refused_before_the_run_starts(volume, tmp_path):
    with pytest.raises(ValueError, match=r"train.trainable: 'decoder.9' names no parameter.*embed_out"):
        train(_config(volume, iterations=1, validate=False, train={"trainable": ["out", "decoder.9"]}),
              tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_of_a_checkpoint_older_than_a_config_key(volume, tmp_path):
    train(_config(volume, iterations=2, validate=False), tmp_path, progress=False)
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    del checkpoint["config"]["model"]["upsample_align_corners"]  # written before the key existed
    torch.save(checkpoint, tmp_path / "last.pt")
    train(_config(volume, iterations=3, validate=False), tmp_path, resume=True, progress=False)
    assert read_checkpoint(tmp_path / "last.pt")["iteration"] == 3


def test_teacher_is_the_init_checkpoint_and_its_flips_are_predict_tta(volume, tmp_path):
    train(_config(volume, iterations=1, validate=False), tmp_path / "base", progress=False)
    base = tmp_path / "base" / "last.pt"
    config = _config(volume, iterations=1, validate=False, loss={"flip_distill": 1.0}, train={"init_from": str(base)})
    teacher = load_teacher(config, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    model, offsets, _ = load_model(base)
    image = torch.from_numpy(np.random.default_rng(2).random((1, 1, 6, 48, 48), dtype=np.float32))
    with torch.no_grad():
        reference = self_correlation(model(image).output, offsets).clamp(0, 1)
    assert torch.allclose(teacher_affinities(teacher, image, offsets, []), reference, atol=5e-4)  # BatchNorm folded
    # Each flip set gives what pipeline.predict --tta adds for it (away from the border it zeroes).
    inner = (slice(None), slice(4, None), slice(27, None), slice(27, None))
    for axes in _flip_sets("zyx")[1:]:
        with torch.no_grad():
            flipped = self_correlation(model(image.flip([a + 2 for a in axes])).output, offsets).clamp(0, 1)
        expected = _unflip_affinities(flipped[0].numpy(), axes, offsets)
        ours = teacher_affinities(teacher, image, offsets, axes)[0].numpy()
        np.testing.assert_allclose(ours[inner], expected[inner], atol=5e-4)
    # The teacher's flip is a pure function of (seed, iteration) and covers all 8 flip sets.
    draws = [tuple(teacher_flip(1, iteration)) for iteration in range(1, 81)]
    assert draws == [tuple(teacher_flip(1, iteration)) for iteration in range(1, 81)]
    assert set(draws) == set(_flip_sets("zyx")) and draws != [tuple(teacher_flip(2, i)) for i in range(1, 81)]


def test_flip_distillation_trains_and_resumes_bit_for_bit(volume, tmp_path):
    train(_config(volume, iterations=1, validate=False), tmp_path / "base", progress=False)
    distill = dict(loss={"ccm": False, "flip_distill": 2.0},
                   train={"init_from": str(tmp_path / "base" / "last.pt"), "checkpoint_every": 2})
    summary = train(_config(volume, iterations=4, validate=False, **distill), tmp_path / "full", progress=False)
    assert summary["last_loss"]["distill"] > 0 and np.isfinite(summary["last_loss"]["total"])
    train(_config(volume, iterations=2, validate=False, **distill), tmp_path / "cut", progress=False)
    train(_config(volume, iterations=4, validate=False, **distill), tmp_path / "cut", resume=True, progress=False)
    full, cut = _weights(tmp_path / "full" / "last.pt")[0], _weights(tmp_path / "cut" / "last.pt")[0]
    assert all(torch.equal(full[k], cut[k]) for k in full)
