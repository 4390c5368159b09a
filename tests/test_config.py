"""Training configuration: schema validation, error messages, overrides, shipped configs."""

from pathlib import Path

import pytest

from corrseg3d.config import Config, ConfigError, from_dict, load_config
from corrseg3d.typed_yaml import apply_overrides, to_dict
from emcore.conventions import PEA_OFFSETS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_paper_settings():
    config = Config()
    assert config.data.patch == (18, 160, 160)
    assert config.train.batch_size == 2 and config.train.iterations == 200_000
    assert (config.optim.lr, config.optim.eps, config.optim.weight_decay, config.optim.amsgrad) == (1e-4, 0.01, 1e-6, True)
    assert tuple(config.loss.offsets) == PEA_OFFSETS
    assert config.augment.chain * config.augment.flip == 0.25  # effective per-op probability, docs/method.md §8


def test_unknown_key_names_path_and_closest_key():
    with pytest.raises(ConfigError, match=r"unknown key 'train.iteratons'; did you mean 'train.iterations'"):
        from_dict({"train": {"iteratons": 5}})
    with pytest.raises(ConfigError, match=r"unknown key 'modle'; did you mean 'model'"):
        from_dict({"modle": {}})
    with pytest.raises(ConfigError, match=r"unknown key 'data.sources.0.weigth'; did you mean 'data.sources.0.weight'"):
        from_dict({"data": {"sources": [{"raw": "a.zarr/raw", "labels": "a.zarr/labels", "weigth": 2}]}})


@pytest.mark.parametrize("values, message", [
    ({"train": {"iterations": "many"}}, r"train.iterations: expected int, got 'many'"),
    ({"train": {"iterations": 1.5}}, r"train.iterations: expected int"),
    ({"loss": {"ccm": 1}}, r"loss.ccm: expected bool, got 1"),
    ({"optim": {"lr": True}}, r"optim.lr: expected a number"),
    ({"data": {"patch": [18, 160]}}, r"data.patch: expected 3 values"),
    ({"model": {"head": "sigmoid"}}, r"model.head: expected one of \['embedding', 'affinity'\]"),
    ({"train": {"precision": "fp64"}}, r"train.precision: expected one of"),
    ({"data": {"patch": [18, 150, 160]}}, r"data.patch must be a multiple of 16"),
    ({"loss": {"offsets": [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]}}, r"loss.offsets: the first three offsets"),
    ({"model": {"pyramid_heads": False}}, r"loss.epm needs model.pyramid_heads"),
    ({"train": []}, r"train: expected a mapping"),
    ({"validation": {"method": "waterz"}}, r"validation.method: expected one of \['multicut', 'mws'\]"),
    ({"validation": {"beta": 1.0}}, r"validation.beta must be in \(0, 1\)"),
    ({"validation": {"supervoxels": {"threshold": 0.0}}}, r"validation.supervoxels.threshold must be in \(0, 1\)"),
    ({"validation": {"supervoxels": {"seed_sigma": -1.0}}}, r"validation.supervoxels.seed_sigma must be a finite "
     r"number >= 0"),
    ({"validation": {"supervoxels": {"weight_sigma": float("inf")}}}, r"validation.supervoxels.weight_sigma must be a "
     r"finite number >= 0 \(pixels; 0 = off\), got inf"),
    ({"validation": {"supervoxels": {"size": 10}}}, r"unknown key 'validation.supervoxels.size'"),
    ({"validation": {"min_size": -1}}, r"validation.min_size must be >= 0"),
    ({"loss": {"mean_embedding": -0.5}}, r"loss.mean_embedding must be >= 0"),
    ({"loss": {"flip_distill": 1.0}}, r"loss.flip_distill .* needs model.head: embedding and train.init_from"),
    ({"loss": {"flip_distill": 1.0}, "train": {"init_from": "a.pt"}, "model": {"head": "affinity"}},
     r"loss.flip_distill .* needs model.head: embedding"),
])
def test_wrong_types_and_values_are_reported(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(values)


def test_numbers_follow_yaml_1_2_in_overrides_and_files(tmp_path):
    values: dict = {}
    apply_overrides(values, ["optim.lr=1e-4", "optim.eps=-2E+3", "train.iterations=010", "train.log_every=0x10"])
    config = from_dict(values)
    assert (config.optim.lr, config.optim.eps, config.train.iterations, config.train.log_every) == (1e-4, -2e3, 10, 16)
    for override, message in [("train.iterations=1:00", "train.iterations: expected int, got '1:00'"),
                              ("train.iterations=1_000", "train.iterations: expected int, got '1_000'"),
                              ("optim.lr=fast", "optim.lr: expected a number, got 'fast'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 5e-5\ntrain:\n  iterations: 0100\n")
    config = load_config(path)
    assert config.optim.lr == 5e-5 and isinstance(config.optim.lr, float) and config.train.iterations == 100
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got '1e-4'"):
        from_dict({"optim": {"lr": "1e-4"}})


def test_overrides_parse_yaml_scalars_and_index_lists():
    values = {"data": {"sources": [{"raw": "a.zarr/raw", "labels": "a.zarr/labels"}]}}
    apply_overrides(values, ["train.iterations=10", "loss.ccm=false", "model.filters=[4,4,8,8,8]",
                             "data.sources.0.weight=2.5", "optim.lr=3.0e-4", "train.device=cpu"])
    config = from_dict(values)
    assert config.train.iterations == 10 and config.loss.ccm is False
    assert config.model.filters == (4, 4, 8, 8, 8)
    assert config.data.sources[0].weight == 2.5 and config.optim.lr == 3e-4 and config.train.device == "cpu"
    assert load_config(None, ["data.patch=8,96,96", "model.filters=4,4,8,8,8"]).data.patch == (8, 96, 96)
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides({}, ["train.iterations"])
    with pytest.raises(ConfigError, match="is not an index"):
        apply_overrides({"data": {"sources": []}}, ["data.sources.3.weight=1"])
    with pytest.raises(ConfigError, match="unknown key 'train.iters'"):
        load_config(None, ["train.iters=3"])


def test_to_dict_round_trips():
    config = load_config(None, ["model.head=affinity", "model.pyramid_heads=false", "loss.epm=false"])
    assert from_dict(to_dict(config)) == config


@pytest.mark.parametrize("name", ["ac3ac4", "synthetic", "synthetic-isbi", "em-mixed", "em-mixed-gpu"])
def test_shipped_configs_validate(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.data.sources and config.validation.volumes


def test_ac3ac4_config_matches_the_paper():
    config = load_config(CONFIGS / "ac3ac4.yaml")
    assert config.data.patch == (18, 160, 160) and config.train.batch_size == 2
    assert config.train.iterations == 200_000
    assert config.data.sources[0].slices == (0, 80) and config.validation.volumes[0].slices == (0, 20)
    assert config.optim == Config().optim
    assert config.loss == Config().loss  # levers at the paper's behaviour
    assert (config.loss.class_weight_cap, config.loss.mean_embedding, config.loss.flip_distill) == (None, 0.0, 0.0)


@pytest.mark.parametrize("overrides, head, terms", [
    (["model.head=affinity", "model.pyramid_heads=false", "loss.epm=false"], "affinity", (True, False)),  # CCM unused by this head
    (["loss.ccm=false", "loss.epm=false"], "embedding", (False, False)),
    (["loss.epm=false"], "embedding", (True, False)),
    ([], "embedding", (True, True)),
])
def test_ablation_rows_are_overrides(overrides, head, terms):
    config = load_config(CONFIGS / "synthetic.yaml", overrides)
    assert config.model.head == head and (config.loss.ccm, config.loss.epm) == terms
