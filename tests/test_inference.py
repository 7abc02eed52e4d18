"""geoseg.inference: forward passes on a CPU are bounded in pixels, and give the same maps."""

from __future__ import annotations

import torch

from geoseg.iic.model import Architecture, IICNet, for_inference
from geoseg.inference import CPU_FORWARD_PIXELS, predict_probabilities


def _model() -> IICNet:
    torch.manual_seed(0)
    return for_inference(IICNet(Architecture(in_channels=3, k_a=6, k_b=4, preset="small")))


def test_cpu_batches_run_in_passes_of_bounded_pixels_with_the_same_maps() -> None:
    model = _model()
    side = 300  # two windows per pass fit CPU_FORWARD_PIXELS, three do not
    assert 2 * side * side <= CPU_FORWARD_PIXELS < 3 * side * side
    batch = torch.rand(5, 3, side, side) * 255
    passes: list[int] = []
    model.trunk.register_forward_pre_hook(lambda _m, args: passes.append(args[0].shape[0]))
    probs = predict_probabilities(model, batch)
    assert passes == [2, 2, 1]
    with torch.inference_mode():
        whole = model(batch.contiguous(memory_format=torch.channels_last), heads="b")["b"][0]
    assert probs.shape == (5, 4, side, side)
    torch.testing.assert_close(probs, whole, rtol=0, atol=1e-5)


def test_small_patches_share_a_pass() -> None:
    model = _model()
    passes: list[int] = []
    model.trunk.register_forward_pre_hook(lambda _m, args: passes.append(args[0].shape[0]))
    predict_probabilities(model, torch.rand(40, 3, 64, 64) * 255)
    assert passes == [40]
