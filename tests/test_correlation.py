"""Tests for corrseg3d.correlation: SCM / CCM affinities from embeddings."""

import numpy as np
import pytest
import torch

from corrseg3d.correlation import cross_correlation, embedding_to_affinities, self_correlation, valid_mask
from corrseg3d.targets import label_affinities
from emcore.conventions import PEA_OFFSETS


def _one_hot_embedding(labels: np.ndarray) -> torch.Tensor:
    """(1, K, z, y, x) one-hot embedding of labels 1..K; background is the zero vector."""
    n = int(labels.max())
    one_hot = np.stack([labels == k for k in range(1, n + 1)]).astype(np.float32)
    return torch.from_numpy(one_hot)[None]


def _labels(shape=(5, 40, 36), n=6, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, n + 1, size=(shape[0], shape[1] // 4, shape[2] // 4))
    labels = labels.repeat(4, axis=1).repeat(4, axis=2)
    labels[rng.random(labels.shape) < 0.05] = 0
    return labels


def test_one_hot_embedding_reproduces_label_affinities_on_valid_positions():
    labels = _labels()
    expected, valid = label_affinities(labels, PEA_OFFSETS)
    affinities = embedding_to_affinities(_one_hot_embedding(labels), PEA_OFFSETS)[0].numpy()
    np.testing.assert_array_equal(affinities[valid], expected[valid].astype(np.float32))


def test_self_correlation_matches_explicit_cosine_and_zero_outside():
    torch.manual_seed(0)
    embedding = torch.randn(2, 4, 5, 12, 10)
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, -3, 0), (0, -11, -9)]
    result = self_correlation(embedding, offsets)
    assert result.shape == (2, 5, 5, 12, 10)
    normed = embedding / embedding.norm(dim=1, keepdim=True)
    for channel, (dz, dy, dx) in enumerate(offsets):
        for z, y, x in [(4, 11, 9), (3, 11, 9), (2, 5, 0), (0, 0, 0)]:
            inside = z + dz >= 0 and y + dy >= 0 and x + dx >= 0
            expected = (normed[:, :, z, y, x] * normed[:, :, z + dz, y + dy, x + dx]).sum(1) if inside else torch.zeros(2)
            torch.testing.assert_close(result[:, channel, z, y, x], expected)
    mask = valid_mask((5, 12, 10), offsets)
    assert torch.all(result[:, ~mask] == 0)
    assert mask.sum().item() == 4 * 12 * 10 + 5 * 11 * 10 + 5 * 12 * 9 + 3 * 9 * 10 + 5 * 1 * 1


def test_offset_larger_than_patch_gives_all_zero_channel():
    embedding = torch.randn(1, 3, 2, 8, 8)
    result = self_correlation(embedding, [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-4, 0, 0), (0, -27, 0)])
    assert result.shape == (1, 5, 2, 8, 8)
    assert torch.all(result[:, 3:] == 0)


def test_cross_correlation_is_one_directional():
    torch.manual_seed(1)
    a, b = torch.randn(1, 3, 3, 8, 8), torch.randn(1, 3, 3, 8, 8)
    offsets = PEA_OFFSETS[:3]
    ab = cross_correlation(a, b, offsets)
    assert not torch.allclose(ab, cross_correlation(b, a, offsets))
    torch.testing.assert_close(cross_correlation(a, a, offsets), self_correlation(a, offsets))
    na, nb = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    torch.testing.assert_close(ab[0, 1, 2, 5, 4], (na[0, :, 2, 5, 4] * nb[0, :, 2, 4, 4]).sum())


def test_embedding_to_affinities_fills_nearest_border_only():
    torch.manual_seed(2)
    embedding = torch.randn(1, 4, 4, 32, 32)
    filled = embedding_to_affinities(embedding, PEA_OFFSETS)
    raw = torch.relu(self_correlation(embedding, PEA_OFFSETS))
    assert filled.min() >= 0 and filled.max() <= 1
    torch.testing.assert_close(filled[:, 0, 0], raw[:, 0, 1])
    torch.testing.assert_close(filled[:, 1, :, 0], raw[:, 1, :, 1])
    torch.testing.assert_close(filled[:, 2, :, :, 0], raw[:, 2, :, :, 1])
    torch.testing.assert_close(filled[:, :, 1:, 1:, 1:], raw[:, :, 1:, 1:, 1:])
    torch.testing.assert_close(filled[:, 3:], raw[:, 3:])
    torch.testing.assert_close(embedding_to_affinities(embedding, PEA_OFFSETS, fill_nearest_border=False), raw)


def test_wrong_shapes_raise():
    with pytest.raises(ValueError):
        cross_correlation(torch.randn(1, 3, 2, 8, 8), torch.randn(1, 3, 2, 8, 16), PEA_OFFSETS)
    with pytest.raises(ValueError):
        self_correlation(torch.randn(1, 3, 2, 8, 8), [(0, -1, 0), (-1, 0, 0), (0, 0, -1)])


def test_correlation_gradients_match_numerical():
    torch.manual_seed(3)
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, -1), (0, -3, 0)]
    a = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: self_correlation(x, offsets), (a,))
    assert torch.autograd.gradcheck(lambda x, y: cross_correlation(x, y, offsets), (a, b))
    detached = b.detach()
    cross_correlation(a, detached, offsets).sum().backward()
    assert a.grad is not None and detached.grad is None


def test_bf16_embedding_is_correlated_in_float32():
    torch.manual_seed(4)
    embedding = torch.randn(1, 16, 3, 16, 16)
    low = embedding.to(torch.bfloat16)
    result = embedding_to_affinities(low, PEA_OFFSETS)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, embedding_to_affinities(low.float(), PEA_OFFSETS))
