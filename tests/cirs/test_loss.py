"""CIRS: the straight-through argmax (forward and backward) and the loss against float64 loops."""

from __future__ import annotations

import pytest
import torch

from geoseg.cirs.argmax import argmax_in_place
from geoseg.cirs.loss import cirs_loss
from geoseg.cirs.model import CIRSArchitecture, CIRSNet
from geoseg.methods.cirs import turn


def test_argmax_in_place_forward_is_the_one_hot_of_the_argmax() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(2, 4, 3, 5, generator=g).softmax(1)
    hard = argmax_in_place(probs)
    for n in range(2):
        for i in range(3):
            for j in range(5):
                top = max(range(4), key=lambda k: probs[n, k, i, j].item())
                assert [hard[n, k, i, j].item() for k in range(4)] == [
                    1.0 if k == top else 0.0 for k in range(4)
                ]


def test_argmax_in_place_backward_is_the_softmax_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    (argmax_in_place(logits.softmax(1)) * upstream).sum().backward()
    assert logits.grad is not None
    # reference: the softmax's Jacobian diag(p) - p p^T applied to the upstream gradient
    p = logits.detach().softmax(1)
    expected = torch.zeros_like(p)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                for a in range(3):
                    expected[n, a, i, j] = sum(
                        upstream[n, b, i, j] * p[n, b, i, j] * ((1.0 if a == b else 0.0) - p[n, a, i, j])
                        for b in range(3)
                    )
    assert torch.allclose(logits.grad, expected, atol=1e-12)


def _reference(features: torch.Tensor, present: torch.Tensor, a1: float, a2: float) -> float:
    n_img, k_dim, d_dim = features.shape
    f = features.double().tolist()
    means, variances = {}, {}
    for k in range(k_dim):
        members = [f[n][k] for n in range(n_img) if present[n, k]]
        if not members:
            continue
        mean = [sum(m[d] for m in members) / len(members) for d in range(d_dim)]
        means[k] = mean
        variances[k] = sum(sum((m[d] - mean[d]) ** 2 for d in range(d_dim)) for m in members) / len(members)
    within = sum(variances.values()) / len(variances)
    grand = [sum(m[d] for m in means.values()) / len(means) for d in range(d_dim)]
    between = sum(sum((m[d] - grand[d]) ** 2 for d in range(d_dim)) for m in means.values()) / len(means)
    return a1 * within - a2 * between


@pytest.mark.parametrize(("a1", "a2"), [(1.0, 1.0), (0.5, 2.0)])
def test_loss_matches_the_loop_reference(a1: float, a2: float) -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    present = torch.rand(5, 4, generator=g) > 0.4
    present[:, 3] = False  # a cluster absent from the whole batch takes no part
    present[0, :3] = True
    got = cirs_loss(features, present, a1, a2).item()
    assert got == pytest.approx(_reference(features, present, a1, a2), rel=1e-10)


def test_tight_separated_clusters_score_lower_than_mixed_ones() -> None:
    centres = torch.eye(3, dtype=torch.float64) * 2
    tight = centres[None].repeat(6, 1, 1) + 0.01 * torch.randn(6, 3, 3, dtype=torch.float64)
    # the same vectors with the cluster ids rotated from image to image
    mixed = torch.stack([tight[n, torch.roll(torch.arange(3), n)] for n in range(6)])
    present = torch.ones(6, 3, dtype=torch.bool)
    assert cirs_loss(tight, present, 1.0, 1.0) < cirs_loss(mixed, present, 1.0, 1.0)


def test_imbalanced_schedule_trains_g_many_batches_for_few_of_s() -> None:
    turns = [turn(step, 100, 5) for step in range(210)]
    assert turns[:100] == ["g"] * 100 and turns[100:105] == ["s"] * 5 and turns[105:205] == ["g"] * 100
    assert turn(7, 0, 5) == "both"


def test_segmenter_gives_distributions_at_the_input_size_and_permutes() -> None:
    torch.manual_seed(0)
    net = CIRSNet(CIRSArchitecture(in_channels=3, k_b=3, g_dim=8)).eval()
    x = torch.rand(2, 3, 30, 22) * 255  # not multiples of 4: padded, cropped back
    with torch.no_grad():
        probs = net(x, heads="b")["b"][0]
        masks = argmax_in_place(probs)
        feats = net.represent(x, masks)
        net.permute_clusters([1, 2, 0])
        after = net(x, heads="b")["b"][0]
        feats_after = net.represent(x, argmax_in_place(after))
    assert probs.shape == (2, 3, 30, 22)
    assert torch.allclose(probs.sum(1), torch.ones(2, 30, 22), atol=1e-5)
    assert torch.allclose(after[:, [1, 2, 0]], probs, atol=1e-6)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 3), atol=1e-5)
    assert torch.allclose(feats_after[:, [1, 2, 0]], feats, atol=1e-5)  # g follows its segment ids


def test_turns_train_only_their_subnetwork() -> None:
    from geoseg.config import TrainConfig
    from geoseg.iic.loss import Reduce
    from geoseg.iic.transforms import PairedTransform
    from geoseg.methods.cirs import CIRS

    config = TrainConfig(method="cirs", k=3, g_steps=2, s_steps=1, g_dim=8)
    net = CIRS.build_network(config, 3)
    x = torch.rand(4, 3, 32, 32) * 255
    valid = torch.ones(4, 32, 32, dtype=torch.bool)
    transform = PairedTransform(rgb=(0, 1, 2))
    reduce: Reduce = lambda t: t  # noqa: E731
    for step, trained, frozen in ((0, net.g, net.trunk), (2, net.trunk, net.g)):
        net.zero_grad(set_to_none=True)
        out = CIRS.training_step(
            net, x, valid, transform, torch.Generator().manual_seed(step), config, step, reduce
        )
        out.total.backward()
        assert all(p.grad is None for p in frozen.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
        assert all(p.requires_grad for p in net.parameters())  # g is trainable again after S's turn


def test_without_the_segment_number_g_tells_segments_apart_by_content_only() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16) * 255
    same = torch.ones(1, 3, 16, 16)  # every segment the whole image: only the number differs
    numbered = CIRSNet(CIRSArchitecture(in_channels=3, k_b=3, g_dim=8)).eval()
    blind = CIRSNet(CIRSArchitecture(in_channels=3, k_b=3, g_dim=8, segment_number=False)).eval()
    with torch.no_grad():
        f_numbered, f_blind = numbered.represent(x, same)[0], blind.represent(x, same)[0]
        blind.permute_clusters([2, 0, 1])  # S's channels only: g has no numbers to permute
        probs = blind(x, heads="b")["b"][0]
    assert (f_numbered[0] - f_numbered[1]).abs().max() > 1e-3  # the one-hot alone separates them
    assert torch.allclose(f_blind[0], f_blind[1]) and torch.allclose(f_blind[1], f_blind[2])
    assert torch.allclose(probs.sum(1), torch.ones(1, 16, 16), atol=1e-5)


def test_the_segment_number_setting_is_recorded_and_rebuilt_for_retraining() -> None:
    from geoseg.config import TrainConfig
    from geoseg.errors import ConfigError
    from geoseg.methods.cirs import CIRS

    assert TrainConfig(method="cirs").g_segment_number is False  # the Dubai folds' choice
    for number in (False, True):
        config = TrainConfig(method="cirs", k=3, g_dim=8, g_segment_number=number)
        net = CIRS.build_network(config, 3)
        assert net.arch.segment_number is number
        assert CIRS.loss_settings(config)["g_segment_number"] is number
        rebuilt = TrainConfig(**CIRS.warm_start_settings(net.arch.to_dict()), k=3).validate()
        assert rebuilt.g_segment_number is number
    assert CIRSArchitecture.from_dict({"in_channels": 3, "k_b": 3}).segment_number  # older bundles
    with pytest.raises(ConfigError, match="g_segment_number is a setting of method 'cirs'"):
        TrainConfig(method="iic", g_segment_number=True).validate()
