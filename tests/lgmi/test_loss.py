"""LGMI's loss and assignments against a slow float64 loop over images, positions and clusters."""

from __future__ import annotations

import math

import pytest
import torch

from geoseg.lgmi.loss import lgmi_loss
from geoseg.lgmi.model import LGMIArchitecture, LGMINet


def _softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def _reference(local: torch.Tensor, glob: torch.Tensor, tau: float, mask: torch.Tensor):
    """-I_JS and p' written out of the source's equations 4.9-4.14, one number at a time."""
    n_img, p_dim, u_dim, v_dim = local.shape
    k_dim = glob.shape[1]
    L, H = local.double().tolist(), glob.double().tolist()

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    probs = [[[[0.0] * v_dim for _ in range(u_dim)] for _ in range(k_dim)] for _ in range(n_img)]
    soft = [[[[0.0] * p_dim for _ in range(v_dim)] for _ in range(u_dim)] for _ in range(n_img)]
    for n in range(n_img):
        for i in range(u_dim):
            for j in range(v_dim):
                lij = [L[n][p][i][j] for p in range(p_dim)]
                scores = [tau * dot(lij, H[n][k]) for k in range(k_dim)]
                top = max(scores)
                e = [math.exp(s - top) for s in scores]
                for k in range(k_dim):
                    probs[n][k][i][j] = e[k] / sum(e)
                for p in range(p_dim):
                    soft[n][i][j][p] = sum(probs[n][k][i][j] * H[n][k][p] for k in range(k_dim))
    total, count = 0.0, 0
    for n in range(n_img):
        other = (n - 1) % n_img  # S' from another image of the batch
        for i in range(u_dim):
            for j in range(v_dim):
                if not mask[n, i, j]:
                    continue
                lij = [L[n][p][i][j] for p in range(p_dim)]
                joint = dot(lij, soft[n][i][j])
                marginal = dot(lij, soft[other][i][j])
                total += _softplus(-joint) + _softplus(marginal)  # -( -sp(-T_J) - sp(T_M) )
                count += 1
    return total / count, torch.tensor(probs, dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_loss_and_assignments_match_the_loop_reference(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    local = torch.randn(3, 5, 4, 3, generator=g, dtype=torch.float64)
    glob = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 4, 3, generator=g) > 0.3
    loss, probs = lgmi_loss(local, glob, tau, mask)
    ref_loss, ref_probs = _reference(local, glob, tau, mask)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10)
    assert torch.allclose(probs, ref_probs, atol=1e-12)


def test_marginal_pairs_come_from_another_image() -> None:
    # two identical images: S' of the other image equals S, so the loss is sp(-T) + sp(T)
    g = torch.Generator().manual_seed(1)
    local = torch.randn(1, 6, 3, 3, generator=g, dtype=torch.float64).repeat(2, 1, 1, 1)
    glob = torch.randn(1, 3, 6, generator=g, dtype=torch.float64).repeat(2, 1, 1)
    loss, _ = lgmi_loss(local, glob, 0.5)
    s = torch.einsum("nkuv,nkp->npuv", torch.einsum("npuv,nkp->nkuv", local, glob).mul(0.5).softmax(1), glob)
    t = (local * s).sum(1)
    assert loss.item() == pytest.approx(
        (torch.nn.functional.softplus(-t) + torch.nn.functional.softplus(t)).mean().item()
    )
    with pytest.raises(ValueError, match="two images"):
        lgmi_loss(local[:1], glob[:1], 0.5)


def test_gradient_reaches_local_and_global_features() -> None:
    local = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    glob = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: lgmi_loss(a, b, 0.7)[0], (local, glob))


def test_network_prediction_is_p_prime_upsampled_bilinearly() -> None:
    torch.manual_seed(0)
    net = LGMINet(LGMIArchitecture(in_channels=3, k_b=4, local_dim=16)).eval()
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        out = net(x, heads="lhb")
        local, glob, probs = out["l"][0], out["h"][0], out["b"][0]
        p_prime = torch.einsum("npuv,nkp->nkuv", local, glob).mul(1 / 4).softmax(1)  # tau = 1/sqrt(16)
        expected = torch.nn.functional.interpolate(
            p_prime, size=(32, 32), mode="bilinear", align_corners=False
        )
    assert local.shape == (2, 16, 16, 16) and glob.shape == (2, 4, 16)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2, 32, 32), atol=1e-5)


def test_permuted_clusters_permute_the_probabilities() -> None:
    torch.manual_seed(0)
    net = LGMINet(LGMIArchitecture(in_channels=3, k_b=3, local_dim=8)).eval()
    x = torch.rand(2, 3, 16, 16) * 255
    with torch.no_grad():
        before = net(x, heads="b")["b"][0]
        net.permute_clusters([2, 0, 1])
        after = net(x, heads="b")["b"][0]
    assert torch.allclose(after[:, [2, 0, 1]], before, atol=1e-6)
