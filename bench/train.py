"""Training speed of geoseg's methods: pairs/s against the device's FLOP-based limit.

    python bench/train.py [--methods iic,picie,lgmi,cirs] [--settings small,potsdam] [--device cpu|cuda]
                          [--steps N] [--potsdam-batch B] [--json OUT]

Every method is timed on the same setting, batch and images, one after the other in the
same run, through its own ``training_step`` (what ``geoseg train`` runs); the PiCIE /
IIC ratio of pairs/s is printed per setting. PiCIE uses its defaults (K1 = k of the
setting, K2 = 100, IIC trunk unless ``--picie-trunk``); the FLOP limit and the loss
comparison are IIC's (PiCIE's line gives its network FLOPs only).

Two settings:

- ``small``: the CPU preset (width 1/4), 3 RGB bands, 128 px, batch 8, k_A 24, k 6, T 5.
- ``potsdam``: the paper's Potsdam settings: the ``iic`` preset, 4 bands, 200 px,
  k_A 24, k 3, T 10, batch 75 on a GPU (bf16 autocast, channels_last); on the CPU a
  batch of 75 would take many minutes per step, so ``--potsdam-batch`` (default 2 on CPU)
  replaces it, and the script says so.

A training step is exactly what ``geoseg.train`` does: second view on the device, one
forward of both views, warp back, both heads' losses, backward, Adam. Images are real
Dubai crops (``../shared/data``; a derived 4th band for the 4-band setting).

The limit: FLOPs per pair = 3 x (forward FLOPs of the network on 2 views: every
convolution, 2 x MACs) + 3 x (the loss's joints as geoseg computes them: for T >= 2 the
FFT cross-correlation, 2.5 M log2 M per real FFT plus the per-frequency k x k products;
the definition's 2 k^2 H W (2T+1)^2 per head is printed beside it); BatchNorm, ReLU, softmax, upsampling and the transforms are left out (they are
memory-bound, a few percent of the FLOPs). The device peak is *measured*: the best fp32
(CPU) or bf16 (CUDA) matmul GFLOP/s of this run, not a datasheet figure.

The loss ratio times forward+backward of geoseg's loss against the same per-displacement
loss written the way the original IIC code writes it (in-place masked EPS assignment,
the normaliser read through a host float), on the same maps, in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from geoseg.config import TrainConfig
from geoseg.iic.loss import iic_segmentation_loss, reference_loss_original_style
from geoseg.iic.transforms import PairedTransform
from geoseg.methods import get_method
from geoseg.train import build_network

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dubai"


@dataclass
class Setting:
    name: str
    preset: str
    bands: int
    size: int
    batch: int
    k_a: int
    k: int
    half_t: int


def real_batch(n: int, bands: int, size: int) -> torch.Tensor:
    """n real Dubai crops of size x size (raw 0..255), a derived extra band if bands == 4."""
    images = sorted(DATA.glob("tile*/images/*.jpg"))
    crops = []
    i = 0
    while len(crops) < n:
        img = np.asarray(Image.open(images[i % len(images)]).convert("RGB"))
        h, w, _ = img.shape
        r, c = (i * 97) % (h - size), (i * 131) % (w - size)
        crops.append(img[r : r + size, c : c + size].transpose(2, 0, 1))
        i += 1
    x = torch.from_numpy(np.stack(crops)).float()
    if bands == 4:
        x = torch.cat([x, x.mean(1, keepdim=True) * 0.8], 1)
    return x


def matmul_peak(device: torch.device, seconds: float = 2.0) -> float:
    """Best measured GFLOP/s of a square matmul (fp32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        _sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def network_forward_flops(model: nn.Module, bands: int, size: int) -> float:
    """2 x MACs of every convolution for one image, counted with forward hooks."""
    total = 0.0

    def hook(module: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        cin = module.in_channels // module.groups
        kh, kw = module.kernel_size
        total += 2.0 * cin * kh * kw * out.shape[1] * out.shape[2] * out.shape[3]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, bands, size, size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


def loss_flops(k: int, batch: int, size: int, half_t: int) -> float:
    """Forward FLOPs per pair of one head's joints as geoseg computes them (conv or FFT)."""
    window = (2 * half_t + 1) ** 2
    if half_t <= 1:  # one conv2d: 2 k^2 H W per displacement
        return 2.0 * k * k * size * size * window
    padded = (size + half_t) ** 2
    fft = 2.5 * padded * math.log2(padded)  # a real 2-D FFT of one map
    bins = (size + half_t) * ((size + half_t) // 2 + 1)
    # rfft2 of 2k maps + the complex k x k product per bin (8 FLOPs per MAC) per pair,
    # and the inverse FFT of the k^2 summed maps, shared by the batch
    return 2 * k * fft + 8.0 * k * k * bins + k * k * fft / batch


def flops_per_pair(model: nn.Module, s: Setting) -> tuple[float, float, float]:
    """(network, loss as computed, loss by definition) training FLOPs per pair (x3: fwd + bwd)."""
    net = 3 * 2 * network_forward_flops(model, s.bands, s.size)
    window = (2 * s.half_t + 1) ** 2
    loss = 3 * sum(loss_flops(k, s.batch, s.size, s.half_t) for k in (s.k_a, s.k))
    direct = 3 * sum(2.0 * k * k * s.size * s.size * window for k in (s.k_a, s.k))
    return net, loss, direct


def method_config(s: Setting, method: str, trunk: str = "iic") -> TrainConfig:
    """``method``'s config on setting ``s``; ``iic/5`` is IIC with 5 sub-heads."""
    method, _, subheads = method.partition("/")
    if method == "iic":
        return TrainConfig(
            k=s.k,
            k_a=s.k_a,
            half_t=s.half_t,
            preset=s.preset,  # type: ignore[arg-type]
            batch_size=s.batch,
            subheads=int(subheads or 1),
        )
    return TrainConfig(method=method, k=s.k, preset=s.preset, batch_size=s.batch, trunk=trunk)  # type: ignore[arg-type]


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


def time_training(s: Setting, device: torch.device, steps: int, config: TrainConfig) -> float:
    """Seconds per training step (median of ``steps`` after one warm-up step)."""
    method = get_method(config.method)
    model = build_network(config, s.bands).to(device)
    x = real_batch(s.batch, s.bands, s.size)
    model.set_normalisation(x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist())
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    x = x.to(device)
    valid = torch.ones(s.batch, s.size, s.size, dtype=torch.bool, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    transform = PairedTransform(rgb=(0, 1, 2), jitter=0.4, flip=True)
    times = []
    for step in range(steps + 1):
        _sync(device)
        t = time.perf_counter()
        g = torch.Generator(device=device).manual_seed(step)
        out = method.training_step(model, x, valid, transform, g, config, step, _no_reduce)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        _sync(device)
        if step:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def time_loss(s: Setting, device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """(geoseg, original-style) seconds for forward + backward of both heads' losses."""
    g = torch.Generator(device=device).manual_seed(0)
    maps = {
        k: [
            torch.randn(s.batch, k, s.size, s.size, generator=g, device=device).softmax(1).requires_grad_()
            for _ in range(2)
        ]
        for k in (s.k_a, s.k)
    }

    def run(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            total = sum(fn(p1, p2, s.half_t, 1.0) for p1, p2 in maps.values())
            total.backward()
            _sync(device)
            best = min(best, time.perf_counter() - t)
        return best

    return run(iic_segmentation_loss), run(reference_loss_original_style)


def time_method(s: Setting, device: torch.device, steps: int, config: TrainConfig, peak: float) -> dict:
    """One method on one setting: pairs/s, and for IIC the FLOP limit and the loss comparison."""
    model = build_network(config, s.bands)
    sec = time_training(s, device, steps, config)
    pairs = s.batch / sec
    row: dict = {
        "method": config.method,
        "subheads": config.subheads,
        "setting": s.name,
        "preset": s.preset,
        "bands": s.bands,
    }
    row.update({"patch": s.size, "batch": s.batch, "k": s.k, "pairs_per_s": pairs})
    name = config.method if config.subheads == 1 else f"{config.method}/{config.subheads}"
    head = (
        f"{name:5s} {s.name:8s} {s.preset:5s} {s.bands}b {s.size}px batch {s.batch:3d}: {pairs:8.2f} pairs/s"
    )
    if config.method != "iic":
        net = 3 * 2 * network_forward_flops(model, s.bands, s.size)
        if config.method != "picie":  # LGMI, CIRS: no K2 or trunk setting to report
            row["gflop_per_pair_network"] = net / 1e9
            print(f"{head} | network {net / 1e9:.2f} GFLOP/pair")
            return row
        row.update({"k2": config.k2, "trunk": config.trunk, "gflop_per_pair_network": net / 1e9})
        print(f"{head} | network {net / 1e9:.2f} GFLOP/pair (K2 {config.k2}, trunk {config.trunk})")
        return row
    net, loss, direct = flops_per_pair(model, s)
    limit = peak * 1e9 / (net + loss)
    ours, orig = time_loss(s, device)
    row.update(
        {
            "k_a": s.k_a,
            "half_t": s.half_t,
            "gflop_per_pair_network": net / 1e9,
            "gflop_per_pair_loss": loss / 1e9,
            "gflop_per_pair_loss_by_definition": direct / 1e9,
            "limit_pairs_per_s": limit,
            "fraction_of_limit": pairs / limit,
            "loss_seconds_geoseg": ours,
            "loss_seconds_original_style": orig,
            "loss_speedup": orig / ours,
        }
    )
    print(
        f"{head} | limit {limit:8.2f} pairs/s ({net / 1e9:.2f} + {loss / 1e9:.2f} GFLOP/pair) "
        f"= {100 * pairs / limit:.0f}% [loss by definition {direct / 1e9:.2f} GFLOP/pair] | loss fwd+bwd "
        f"{ours * 1e3:.0f} ms vs original-style {orig * 1e3:.0f} ms: x{orig / ours:.2f}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--potsdam-batch", type=int, default=None, help="default: 75 on CUDA, 2 on CPU")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--methods",
        default="iic",
        help="comma-separated methods, e.g. iic,picie; iic/5: IIC with 5 sub-heads",
    )
    parser.add_argument("--settings", default="small,potsdam", help="comma-separated: small, potsdam")
    parser.add_argument("--picie-trunk", choices=("iic", "resnet18-fpn"), default="iic")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m.partition("/")[0])  # an unknown name is refused before any timing
    device = torch.device(args.device)
    pb = args.potsdam_batch or (75 if device.type == "cuda" else 2)
    settings = [
        s
        for s in (
            Setting("small", "small", 3, 128, 8, 24, 6, 5),
            Setting("potsdam", "iic", 4, 200, pb, 24, 3, 10),
        )
        if s.name in args.settings.split(",")
    ]
    peak = matmul_peak(device)
    cpu = platform.processor() or platform.machine()
    print(f"device: {device} ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"measured matmul peak: {peak:.1f} GFLOP/s ({'bf16' if device.type == 'cuda' else 'fp32'})")
    if device.type == "cpu" and pb != 75:
        print(f"note: Potsdam batch 75 replaced by {pb} on the CPU (75 would take minutes per step)")
    results = []
    for s in settings:
        per_method = {}
        for method in methods:
            config = method_config(s, method, args.picie_trunk)
            row = time_method(s, device, args.steps, config, peak)
            per_method[method] = row["pairs_per_s"]
            results.append(row)
        if "iic" in per_method:
            for method, pairs in per_method.items():
                if method != "iic":
                    ratio = pairs / per_method["iic"]
                    print(f"{s.name:8s} {method} / iic pairs/s: {ratio:.2f} (IIC {1 / ratio:.2f}x faster)")
    if args.json:
        args.json.write_text(
            json.dumps({"device": str(device), "peak_gflops": peak, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
