"""Tests for corrseg3d.model: the residual 3D U-Net with embedding / affinity heads."""

import json

import pytest
import torch

from corrseg3d.model import ModelOutput, ResidualUNet3D, build_model, model_config

TINY = dict(filters=(4, 4, 4, 4, 4), embedding_dim=8)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_reference_parameter_counts():
    assert _count(ResidualUNet3D()) == 1_481_748
    assert _count(ResidualUNet3D(pyramid_heads=False)) == 1_478_036
    # SuperHuman baseline: same trunk, 3 sigmoid affinities (docs/method.md §1).
    assert _count(ResidualUNet3D(head="affinity", n_affinities=3, pyramid_heads=False)) == 1_477_659


@pytest.mark.parametrize("shape", [(1, 48, 16), (5, 16, 80), (3, 32, 32)])
def test_output_shapes_odd_sizes(shape):
    model = ResidualUNet3D(**TINY)
    out = model(torch.rand(2, 1, *shape))
    assert isinstance(out, ModelOutput)
    assert out.output.shape == (2, 8, *shape)
    z, y, x = shape
    assert [p.shape for p in out.pyramid] == [(2, 8, z, y // s, x // s) for s in (16, 8, 4, 2)]


@pytest.mark.parametrize("y, x", [(40, 48), (48, 24), (8, 16)])
def test_xy_not_multiple_of_16_raises(y, x):
    assert ResidualUNet3D.xy_multiple == 16
    with pytest.raises(ValueError, match="multiples of 16"):
        ResidualUNet3D(**TINY)(torch.rand(1, 1, 3, y, x))


def test_affinity_head_and_no_pyramid():
    model = ResidualUNet3D(**TINY, head="affinity", pyramid_heads=False)
    out = model(torch.rand(1, 1, 3, 32, 32))
    assert out.output.shape == (1, 12, 3, 32, 32) and out.pyramid == ()
    assert out.output.min() > 0 and out.output.max() < 1


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
def test_norm_variants_run(norm):
    out = ResidualUNet3D(**TINY, norm=norm)(torch.rand(1, 1, 3, 16, 16))
    assert torch.isfinite(out.output).all()


def test_invalid_options_raise():
    for kwargs in (dict(norm="layer"), dict(head="mask"), dict(filters=(4, 4, 4, 4))):
        with pytest.raises(ValueError):
            ResidualUNet3D(**kwargs)


def test_init_kaiming_and_zero_bias():
    model = ResidualUNet3D()
    conv = model.encoder[2].residual[0]  # 3x3x3, 48 -> 48
    assert conv.weight.std().item() == pytest.approx((2 / (48 * 27)) ** 0.5, rel=0.05)
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m.bias is not None)
    assert all(m.momentum == 0.001 for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_config_roundtrip_rebuilds_identical_model():
    torch.manual_seed(0)
    model = ResidualUNet3D(**TINY, norm="group", head="affinity", n_affinities=5).eval()
    config = json.loads(json.dumps(model_config(model)))
    rebuilt = build_model(config).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, 1, 2, 16, 16)
    assert torch.equal(rebuilt(x).output, model(x).output)
    assert model_config(rebuilt) == config


def test_channels_last_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = ResidualUNet3D(**TINY).eval()
    x = torch.rand(1, 1, 4, 32, 32)
    with torch.inference_mode():
        reference = model(x).output
        fast_model = model.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = fast_model(x.to(memory_format=torch.channels_last_3d)).output.float()
    assert (fast - reference).norm() / reference.norm() < 0.05  # bf16 has an 8-bit mantissa
