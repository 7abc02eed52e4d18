"""The IIC network: the paper's trunk, two heads, probability maps at input size, no border ring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geoseg.errors import ConfigError
from geoseg.iic.model import Architecture, IICNet, for_inference


def _convs(model: IICNet) -> list[nn.Conv2d]:
    return [m for m in model.trunk if isinstance(m, nn.Conv2d)]


def test_iic_preset_is_the_papers_trunk() -> None:
    model = IICNet(Architecture(in_channels=4, k_a=24, k_b=3, subheads=5, preset="iic"))
    convs = _convs(model)
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512]
    assert [c.dilation[0] for c in convs] == [1, 1, 1, 1, 2, 2]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert convs[0].in_channels == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.trunk) == 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.trunk) == 6
    assert len(model.head_a) == 5 and len(model.head_b) == 5
    assert all(h.kernel_size == (1, 1) and h.padding == (0, 0) for h in [*model.head_a, *model.head_b])
    assert model.head_a[0].out_channels == 24 and model.head_b[0].out_channels == 3


def test_small_preset_is_narrower() -> None:
    small = IICNet(Architecture(in_channels=3, k_a=12, k_b=4, preset="small"))
    assert [c.out_channels for c in _convs(small)] == [16, 32, 64, 64, 128, 128]


@pytest.mark.parametrize("size", [(33, 47), (64, 64)])
def test_forward_gives_probability_maps_at_input_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = IICNet(Architecture(in_channels=5, k_a=10, k_b=4, subheads=2)).eval()
    out = model(torch.rand(2, 5, *size) * 255)
    assert set(out) == {"a", "b"} and len(out["a"]) == 2 and len(out["b"]) == 2
    for maps, k in ((out["a"], 10), (out["b"], 4)):
        for p in maps:
            assert p.shape == (2, k, *size)
            assert (p >= 0).all()
            assert torch.allclose(p.sum(1), torch.ones(2, *size), atol=1e-5)
    assert set(model(torch.rand(1, 5, 16, 16), heads="b")) == {"b"}


def test_no_constant_border_ring() -> None:
    """The original's padded 1x1 head made the outermost ring a constant (bias only) prediction."""
    torch.manual_seed(1)
    model = IICNet(Architecture(in_channels=3, k_a=6, k_b=3)).eval()
    p = model(torch.rand(4, 3, 32, 32) * 255)["b"][0]
    ring = torch.cat([p[..., 0, :], p[..., -1, :], p[..., :, 0], p[..., :, -1]], -1)
    assert ring.std(-1).min() > 1e-4


def test_normalisation_is_part_of_the_model() -> None:
    model = IICNet(Architecture(in_channels=2, k_a=4, k_b=2)).eval()
    model.set_normalisation([100.0, 10.0], [5.0, 0.0])
    assert torch.equal(model.input_mean, torch.tensor([100.0, 10.0]))
    assert model.input_std[1] > 0  # a constant band does not divide by zero
    x = torch.tensor([100.0, 10.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    assert torch.equal(model.normalise(x), torch.zeros(1, 2, 4, 4))
    assert {"input_mean", "input_std"} <= set(model.state_dict())


def test_architecture_round_trip_and_errors() -> None:
    arch = Architecture(in_channels=4, k_a=24, k_b=3, subheads=2, preset="iic")
    assert Architecture.from_dict(arch.to_dict()) == arch
    with pytest.raises(ConfigError, match="unknown preset"):
        IICNet(Architecture(in_channels=3, k_a=4, k_b=2, preset="huge"))
    with pytest.raises(ConfigError, match="expects 3 bands, got 1"):
        IICNet(Architecture(in_channels=3, k_a=4, k_b=2))(torch.zeros(1, 1, 8, 8))


def test_inference_copy_folds_batchnorm_and_predicts_the_same() -> None:
    torch.manual_seed(3)
    model = IICNet(Architecture(in_channels=4, k_a=12, k_b=4))
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # trained-like statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    model.set_normalisation([100.0] * 4, [40.0] * 4)
    model.eval()
    fast = for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original is untouched"
    x = torch.rand(2, 4, 40, 48) * 255
    with torch.inference_mode():
        expected = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    for head in ("a", "b"):
        assert torch.allclose(got[head][0], expected[head][0], atol=1e-5)
