"""Tests for corrseg3d.losses: weighted MSE, PEA terms, gradients, overfitting a tiny volume."""

import numpy as np
import pytest
import torch

from corrseg3d.ccm import FlipRule, apply_flip, invert_flip
from corrseg3d.correlation import cross_correlation, self_correlation
from corrseg3d.losses import mean_embedding_penalty, pea_loss, weighted_mse
from corrseg3d.model import ModelOutput, ResidualUNet3D
from corrseg3d.targets import balance_weights, label_affinities, pyramid_targets
from emcore.conventions import PEA_OFFSETS

TINY = dict(filters=(4, 4, 4, 4, 4), embedding_dim=8)


def _three_objects(shape=(4, 32, 32)) -> np.ndarray:
    """Three objects filling the whole patch (no background, so zero loss is reachable)."""
    labels = np.ones(shape, dtype=np.int64)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    labels[:, (xx + yy) > shape[1] - 2] = 2
    labels[:, (xx > 20) & (yy < 12)] = 3
    return labels


def _targets(labels_batch: list[np.ndarray]) -> dict:
    """The target dict of pea_loss for a batch of label patches."""
    def stack(arrays):
        return torch.from_numpy(np.stack(arrays))
    full = [label_affinities(labels, PEA_OFFSETS) for labels in labels_batch]
    levels = [pyramid_targets(labels) for labels in labels_batch]
    return {
        "affinities": stack([a for a, _ in full]),
        "weights": stack([balance_weights(a, v) for a, v in full]),
        "valid": stack([v for _, v in full]),
        "pyramid": [{"affinities": stack([lv[i][0] for lv in levels]), "weights": stack([lv[i][1] for lv in levels]),
                     "valid": stack([lv[i][2] for lv in levels])} for i in range(4)],
    }


def test_weighted_mse_formula():
    pred = torch.tensor([0.5, 1.0, 0.0, 2.0]).reshape(1, 2, 1, 1, 2)
    target = torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 2, 1, 1, 2)
    weight = torch.tensor([2.0, 1.0, 3.0, 5.0]).reshape(1, 2, 1, 1, 2)
    valid = torch.tensor([True, True, True, False]).reshape(1, 2, 1, 1, 2)
    # channel 0: (2 * 0.25 + 0) / 2; channel 1: 3 * 1 / 1 (the invalid voxel is ignored)
    assert weighted_mse(pred, target, weight, valid).item() == pytest.approx(0.25 + 3.0)
    assert weighted_mse(pred, target, weight, torch.zeros_like(valid)).item() == 0
    with pytest.raises(ValueError):
        weighted_mse(pred, target[:, :1], weight, valid)


def test_pea_loss_terms_match_definitions_and_channel_mask():
    torch.manual_seed(0)
    labels = [_three_objects(), np.roll(_three_objects(), 5, axis=2)]
    targets = _targets(labels)
    embedding = torch.randn(2, 8, 4, 32, 32)
    view = torch.randn(2, 8, 4, 32, 32)
    pyramid = tuple(torch.randn(2, 8, 4, 32 // s, 32 // s) for s in (16, 8, 4, 2))
    output = ModelOutput(embedding, pyramid)
    terms = pea_loss(output, targets, offsets=PEA_OFFSETS, view_output=view)
    full = (targets["affinities"], targets["weights"], targets["valid"])
    torch.testing.assert_close(terms["scm"], weighted_mse(self_correlation(embedding, PEA_OFFSETS), *full))
    torch.testing.assert_close(terms["ccm"], weighted_mse(cross_correlation(embedding, view, PEA_OFFSETS), *full))
    torch.testing.assert_close(terms["total"], terms["scm"] + terms["ccm"] + terms["epm"])
    only_scm = pea_loss(output, targets, offsets=PEA_OFFSETS, use_ccm=False, use_epm=False)
    assert only_scm["ccm"] == 0 and only_scm["epm"] == 0 and only_scm["total"] == terms["scm"]

    # Channel mask: masking the z channels (0, 3, 6, 9) equals dropping them from the sums.
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 0::3] = False
    masked = pea_loss(output, dict(targets, channel_mask=mask), offsets=PEA_OFFSETS, view_output=view)
    keep = [k for k in range(12) if k % 3]
    per_channel = [weighted_mse(self_correlation(embedding, PEA_OFFSETS)[:, k:k + 1], *(t[:, k:k + 1] for t in full)) for k in keep]
    torch.testing.assert_close(masked["scm"], sum(per_channel))
    assert masked["epm"] < terms["epm"]


def test_mean_embedding_penalty_formula_and_extremes():
    torch.manual_seed(1)
    one_direction = torch.randn(2, 8, 1, 1, 1).expand(2, 8, 3, 4, 5) * torch.rand(2, 1, 3, 4, 5).add(0.5)
    assert mean_embedding_penalty(one_direction).item() == pytest.approx(1.0, abs=1e-6)
    opposite = torch.randn(1, 8, 1, 1, 1).expand(1, 8, 2, 4, 4).clone()
    opposite[:, :, 1] *= -3.0
    assert mean_embedding_penalty(opposite).item() == pytest.approx(0.0, abs=1e-6)
    embedding = torch.randn(3, 8, 2, 6, 6)
    unit = embedding / embedding.norm(dim=1, keepdim=True)
    expected = np.mean([float((unit[b].mean(dim=(1, 2, 3)) ** 2).sum()) for b in range(3)])
    assert mean_embedding_penalty(embedding).item() == pytest.approx(expected, rel=1e-5)


def test_pea_loss_collapse_term_is_weighted_penalty_and_part_of_total():
    torch.manual_seed(2)
    targets = _targets([_three_objects()])
    embedding = torch.randn(1, 8, 4, 32, 32, requires_grad=True)
    pyramid = tuple(torch.randn(1, 8, 4, 32 // s, 32 // s) for s in (16, 8, 4, 2))
    output = ModelOutput(embedding, pyramid)
    plain = pea_loss(output, targets, offsets=PEA_OFFSETS, use_ccm=False)
    terms = pea_loss(output, targets, offsets=PEA_OFFSETS, use_ccm=False, mean_embedding=0.5)
    assert "collapse" not in plain
    assert terms["collapse"].item() == pytest.approx(0.5 * mean_embedding_penalty(embedding).item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx(plain["total"].item() + terms["collapse"].item(), rel=1e-6)
    terms["collapse"].backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


def test_pea_loss_distill_term_is_unweighted_mse_to_the_teacher_over_valid_pairs():
    torch.manual_seed(3)
    targets = _targets([_three_objects((6, 32, 32))])
    targets["channel_mask"] = torch.tensor([[False] + [True] * 11])
    embedding = torch.randn(1, 8, 6, 32, 32, requires_grad=True)
    teacher = torch.rand(1, 12, 6, 32, 32)
    output = ModelOutput(embedding, ())
    plain = pea_loss(output, targets, offsets=PEA_OFFSETS, use_ccm=False, use_epm=False)
    terms = pea_loss(output, targets, offsets=PEA_OFFSETS, use_ccm=False, use_epm=False,
                     teacher_affinities=teacher, flip_distill=0.25)
    valid = targets["valid"].bool() & targets["channel_mask"][:, :, None, None, None]
    affinities = self_correlation(embedding, PEA_OFFSETS)
    expected = sum(((affinities[:, k] - teacher[:, k])[valid[:, k]] ** 2).mean() for k in range(1, 12))
    assert "distill" not in plain and terms["distill"].item() == pytest.approx(0.25 * expected.item(), rel=1e-5)
    assert terms["total"].item() == pytest.approx(plain["total"].item() + terms["distill"].item(), rel=1e-6)
    exact = pea_loss(output, targets, offsets=PEA_OFFSETS, use_ccm=False, use_epm=False,
                     teacher_affinities=affinities.detach(), flip_distill=1.0)
    assert exact["distill"].item() == 0
    with pytest.raises(ValueError, match="teacher_affinities"):
        pea_loss(output, targets, offsets=PEA_OFFSETS, use_ccm=False, use_epm=False, flip_distill=1.0)
    with pytest.raises(ValueError, match="detached"):
        pea_loss(output, targets, offsets=PEA_OFFSETS, use_ccm=False, use_epm=False,
                 teacher_affinities=affinities, flip_distill=1.0)


def test_pea_loss_rejects_missing_or_attached_view_and_missing_pyramid():
    targets = _targets([_three_objects()])
    embedding = torch.randn(1, 8, 4, 32, 32, requires_grad=True)
    with pytest.raises(ValueError, match="detached"):
        pea_loss(ModelOutput(embedding, ()), targets, offsets=PEA_OFFSETS, use_epm=False, view_output=embedding * 2)
    with pytest.raises(ValueError, match="view_output"):
        pea_loss(ModelOutput(embedding, ()), targets, offsets=PEA_OFFSETS, use_epm=False)
    with pytest.raises(ValueError, match="pyramid"):
        pea_loss(ModelOutput(embedding, ()), targets, offsets=PEA_OFFSETS, use_ccm=False)


def test_affinity_head_loss():
    targets = _targets([_three_objects()])
    affinities = torch.rand(1, 12, 4, 32, 32)
    terms = pea_loss(ModelOutput(affinities, ()), targets, offsets=PEA_OFFSETS, head="affinity", use_epm=False)
    assert set(terms) == {"affinity", "epm", "total"}
    torch.testing.assert_close(terms["affinity"], weighted_mse(affinities, targets["affinities"], targets["weights"], targets["valid"]))


def _view_embedding(model: ResidualUNet3D, image: torch.Tensor, rule: FlipRule) -> torch.Tensor:
    """Second-view embedding mapped back and detached, as the training step does."""
    with torch.no_grad():
        return invert_flip(model(apply_flip(image, rule)).output, rule)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_gradient_reaches_every_parameter(norm):
    torch.manual_seed(0)
    model = ResidualUNet3D(**TINY, norm=norm)
    labels = _three_objects()
    image = torch.from_numpy(labels / 3.0).float()[None, None]
    view = _view_embedding(model, image, FlipRule(True, False, True, True))
    terms = pea_loss(model(image), _targets([labels]), offsets=PEA_OFFSETS, view_output=view)
    terms["total"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        if norm == "batch" and name.startswith("decoder.") and name.endswith("up.1.bias"):
            # Documented: train-mode BatchNorm after the skip addition cancels this bias.
            assert parameter.grad.abs().max() < 1e-4, name
        else:
            assert parameter.grad.abs().max() > 0, name


def test_ccm_term_does_not_backpropagate_into_view():
    torch.manual_seed(0)
    model = ResidualUNet3D(**TINY, pyramid_heads=False)
    labels = _three_objects()
    image = torch.from_numpy(labels / 3.0).float()[None, None]
    view = _view_embedding(model, image, FlipRule(False, True, False, False))
    terms = pea_loss(model(image), _targets([labels]), offsets=PEA_OFFSETS, view_output=view, use_scm=False, use_epm=False)
    terms["total"].backward()
    assert not view.requires_grad and terms["ccm"] > 0
    assert model.out.weight.grad.abs().max() > 0


@pytest.fixture
def one_thread():
    """Run single-threaded: on a shared, loaded 2-core machine this is faster than oversubscribing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_model_overfits_tiny_volume(one_thread):
    torch.manual_seed(0)
    labels = _three_objects()
    rng = np.random.default_rng(0)
    image = torch.from_numpy((labels * 0.25 + 0.05 * rng.standard_normal(labels.shape)).astype(np.float32))[None, None]
    targets = _targets([labels])
    model = ResidualUNet3D(**TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for _ in range(250):
        terms = pea_loss(model(image), targets, offsets=PEA_OFFSETS, use_ccm=False)
        first = first if first is not None else terms["total"].item()
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        if terms["total"].item() < 0.03:
            break
    assert terms["total"].item() < 0.03 < first / 100  # near zero: below 0.15 % of the start
    with torch.no_grad():
        predicted = self_correlation(model(image).output, PEA_OFFSETS) > 0.5
    valid = targets["valid"]
    accuracy = (predicted[valid] == targets["affinities"].bool()[valid]).float().mean()
    assert accuracy > 0.995
