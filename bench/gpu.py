"""The GPU check: every CUDA figure of geoseg in one JSON, in under 8 minutes on one GPU.

    bench/gpu.sh                       # on the GPU machine (sets up Python, then runs this)
    python bench/gpu.py --dry-run      # every part tiny, on the CPU: checks the script and its JSON

Parts, in the order they run (each records its own seconds; a part that fails records its
error and the others still run; the JSON is rewritten after every part, and rows that would
not fit the 460 s budget are recorded as skipped, so one JSON always comes back):

1. ``peak``: the measured matmul peak, bf16 and fp32 (8192^3 on CUDA, best of 10 after
   warm-up) - the yardstick of the training figures.
2. ``segment``: ``geoseg.segment`` Mpx/s on a generated 8192 x 8192 RGB raster (reads,
   blending, COGs, preview; no GeoPackage), default window, batch 32, on the GPU, in fp32
   and again with ``--precision bf16`` (its Mpx/s and the share of ids equal to fp32's).
3. ``train``: training pairs/s of IIC, ``small`` preset (128 px, batch 8, k 6) and ``iic``
   preset (Potsdam settings: 4 bands, 200 px, batch 75, k 3), each with bf16 autocast (the
   production path: ``geoseg.methods.iic`` autocasts on CUDA) and fp32 (the same
   ``training_step`` with the network's forward under ``autocast(enabled=False)``); the
   share of the FLOP limit (``bench/train.py``'s FLOPs per pair / the measured peak of
   that precision).
4. ``quality``: the 3-seed Dubai honest IIC run at the settings of bench/RESULTS.md
   "Quality of the learned methods" (150 steps, patch 64, scale 0.5, batch 8, lr 1e-3),
   through ``bench/quality.py``, one process per seed; the data is ``shared/data``
   inside the checkout or ``../shared/data`` beside it (the JSON says which).
5. ``train_compiled``: ``train`` with ``torch.compile`` of the network (inductor; the dry
   run traces with dynamo only), last of the timed parts since compiling takes longest.
6. ``ddp``: ``torchrun --nproc_per_node 2 -m geoseg.cli train`` with NCCL when two GPUs
   exist (gloo on the CPU in the dry run); otherwise ``{"skipped": "..."}``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

PARTS = ("peak", "segment", "train", "quality", "train_compiled", "ddp")  # the order they run in
SCHEMA = {  # part -> keys its record must hold when it ran (the dry-run test checks them)
    "peak": {"bf16_tflops", "fp32_tflops", "n"},
    "train": {"rows"},
    "train_compiled": {"rows"},
    "segment": {"raster", "mpx_s", "seconds", "window_overhead"},
    "ddp": {"world_size", "backend", "seconds", "bundle"},
    "quality": {"data", "seeds", "steps", "miou", "accuracy", "seconds"},
}
BUDGET_S = 460.0  # the whole run: under 8 minutes with the environment set-up
_deadline = time.monotonic() + BUDGET_S


def time_left() -> float:
    return _deadline - time.monotonic()


TRAIN_ROW = {"preset", "precision", "compiled", "batch", "pairs_per_s", "fraction_of_limit", "step_ms"}


def find_data() -> Path:
    """``shared/data`` in the checkout (the device machine's copy) or ``../shared/data`` beside it."""
    for candidate in (ROOT / "shared" / "data", ROOT.parent / "shared" / "data"):
        if (candidate / "dubai").is_dir():
            return candidate
    raise SystemExit(f"no Dubai data at {ROOT / 'shared/data'} or {ROOT.parent / 'shared/data'}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def part_peak(device: torch.device, dry: bool) -> dict[str, Any]:
    n, repeats = (256, 3) if dry else (8192, 10)
    return {
        "n": n,
        "bf16_tflops": round(matmul_tflops(device, torch.bfloat16, n, repeats), 4),
        "fp32_tflops": round(matmul_tflops(device, torch.float32, n, repeats), 4),
        "tf32_allowed": bool(torch.backends.cuda.matmul.allow_tf32),
    }


@contextlib.contextmanager
def forward_precision(model: torch.nn.Module, device: torch.device, precision: str) -> Iterator[None]:
    """Run the network's forward in ``precision`` whatever the method's own autocast says.

    ``bf16``: autocast to bfloat16 (on the CPU too, where the methods do not autocast);
    ``fp32``: autocast disabled inside the forward (an inner ``enabled=False`` wins).
    """
    original = model.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return original(*args, **kwargs)

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        model.forward = original  # type: ignore[method-assign]


def train_row(
    setting: Any, device: torch.device, precision: str, compiled: bool, steps: int, peaks: dict, dry: bool
) -> dict:
    from train import flops_per_pair, method_config, real_batch  # bench/train.py

    from geoseg.iic.transforms import PairedTransform
    from geoseg.methods import get_method
    from geoseg.train import build_network

    config = method_config(setting, "iic")
    method = get_method("iic")
    model = build_network(config, setting.bands).to(device)
    x = real_batch(setting.batch, setting.bands, setting.size)
    model.set_normalisation(x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist())
    net_flops, loss_flops, _ = flops_per_pair(build_network(config, setting.bands), setting)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    x = x.to(device)
    valid = torch.ones(setting.batch, setting.size, setting.size, dtype=torch.bool, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    transform = PairedTransform(rgb=(0, 1, 2), jitter=0.4, flip=True)
    # the dry run traces with dynamo but skips inductor's code generation (minutes on a CPU)
    backend = "eager" if dry else "inductor"
    network: torch.nn.Module = torch.compile(model, backend=backend) if compiled else model  # type: ignore[assignment]
    times = []
    started = time.perf_counter()
    with forward_precision(network, device, precision):
        for step in range(steps + 2):  # two warm-up steps (compilation happens there)
            sync(device)
            t = time.perf_counter()
            g = torch.Generator(device=device).manual_seed(step)
            out = method.training_step(network, x, valid, transform, g, config, step, lambda v: v)
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            optimizer.step()
            sync(device)
            if step >= 2:
                times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    pairs = setting.batch / seconds
    peak = peaks[f"{precision}_tflops"] * 1e12
    return {
        "preset": setting.preset,
        "setting": setting.name,
        "precision": precision,
        "compiled": compiled,
        "compile_backend": backend if compiled else None,
        "batch": setting.batch,
        "patch": setting.size,
        "step_ms": round(seconds * 1e3, 2),
        "pairs_per_s": round(pairs, 2),
        "gflop_per_pair": round((net_flops + loss_flops) / 1e9, 2),
        "fraction_of_limit": round(pairs * (net_flops + loss_flops) / peak, 4),
        "loss": float(out.total.detach()),
        "wall_s_with_warmup": round(time.perf_counter() - started, 1),
    }


def part_train(device: torch.device, dry: bool, peaks: dict, compiled: bool) -> dict[str, Any]:
    """Rows for both presets and both precisions; a row that would not fit the budget is skipped."""
    import train as bench_train  # bench/train.py
    from train import Setting

    bench_train.DATA = find_data() / "dubai"  # its default, ../shared/data, is absent on a device machine

    if dry:
        settings = [
            Setting("small", "small", 3, 32, 2, 6, 3, 1),
            Setting("potsdam", "iic", 4, 32, 2, 6, 3, 1),
        ]
        steps = 1
    else:
        settings = [
            Setting("small", "small", 3, 128, 8, 24, 6, 5),
            Setting("potsdam", "iic", 4, 200, 75, 24, 3, 10),
        ]
        steps = 10
    needed = 90.0 if compiled and not dry else 15.0  # seconds a row may take (compilation included)
    rows: list[dict[str, Any]] = []
    for setting in settings:
        for precision in ("bf16", "fp32"):
            key = {"preset": setting.preset, "precision": precision, "compiled": compiled}
            if not dry and time_left() < needed:
                rows.append({**key, "skipped": f"time budget: {time_left():.0f} s left"})
                continue
            try:
                rows.append(train_row(setting, device, precision, compiled, steps, peaks, dry))
            except Exception as exc:  # recorded: e.g. torch.compile unavailable on this machine
                rows.append({**key, "error": f"{type(exc).__name__}: {exc}"[:500]})
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def part_segment(device: torch.device, dry: bool, tmp: Path) -> dict[str, Any]:
    import rasterio
    from segment import make_model, window_overhead, write_scene  # bench/segment.py

    from geoseg.config import SegmentConfig
    from geoseg.segment import segment

    side = 256 if dry else 8192
    model = make_model(tmp / "seg-model")
    scene = write_scene(tmp / "seg.tif", side, side, rows_per_write=1024)
    config = SegmentConfig(vectorize=False, device=device.type, batch_size=8 if dry else 32)
    t = time.perf_counter()
    (fp32,) = segment(model, [scene], tmp / "seg-out", config, progress=False)
    seconds = time.perf_counter() - t
    row: dict[str, Any] = {
        "raster": f"{side}x{side} RGB uint8",
        "batch_size": config.batch_size,
        "window_overhead": round(window_overhead(model, side, side, config), 3),
        "seconds": round(seconds, 2),
        "mpx_s": round(side * side / 1e6 / seconds, 3),
        "end_to_end": "reads, blending, COGs, preview, STAC item (no GeoPackage)",
    }
    if time_left() < 3 * seconds:
        return row | {"bf16": {"skipped": f"time budget: {time_left():.0f} s left"}}
    t = time.perf_counter()  # the same raster with --precision bf16
    bf16_config = dataclasses.replace(config, precision="bf16")
    (bf16,) = segment(model, [scene], tmp / "seg-out-bf16", bf16_config, progress=False)
    bf16_seconds = time.perf_counter() - t
    with rasterio.open(fp32.clusters) as a, rasterio.open(bf16.clusters) as b:
        same = float(np.mean(a.read(1) == b.read(1)))
    return row | {
        "bf16": {
            "seconds": round(bf16_seconds, 2),
            "mpx_s": round(side * side / 1e6 / bf16_seconds, 3),
            "same_ids_as_fp32": same,
        }
    }


def part_ddp(device: torch.device, dry: bool, tmp: Path, data: Path) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and gpus < 2:
        return {"skipped": f"{gpus} GPU on this machine: a 2-process NCCL run needs two"}
    backend = "nccl" if device.type == "cuda" else "gloo"
    from geoseg.cli import main as geoseg

    images = sorted((data / "dubai" / "tile1" / "images").glob("*.jpg"))[:2]
    store = tmp / "ddp.zarr"
    if geoseg(["ingest", *map(str, images), "--out", str(store), "--patch-size", "32" if dry else "64"]) != 0:
        raise RuntimeError("ingest for the DDP run failed")
    steps, batch = ("2", "4") if dry else ("50", "32")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "geoseg.cli", "train", str(store), "--out", str(tmp / "ddp-model"), "--steps", steps,
               "--batch-size", batch, "--device", device.type]  # fmt: skip
    if dry:
        command += ["--preset", "small", "--k", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr[-1500:]}")
    return {
        "world_size": 2,
        "backend": backend,
        "steps": int(steps),
        "global_batch": int(batch),
        "seconds": round(time.perf_counter() - t, 1),
        "bundle": (tmp / "ddp-model" / "model.json").is_file(),
    }


def part_quality(dry: bool, tmp: Path, data: Path) -> dict[str, Any]:
    """One ``bench/quality.py`` process per seed (a seed cut off by the budget loses only itself)."""
    seeds, steps = ([0], 2) if dry else ([0, 1, 2], 150)
    where = "shared/data (in the checkout)" if data == ROOT / "shared" / "data" else "../shared/data"
    t = time.perf_counter()
    miou, accuracy, done_seeds, notes = [], [], [], []
    for seed in seeds:
        work = tmp / f"quality-{seed}"
        command = [sys.executable, str(ROOT / "bench" / "quality.py"), "--data", str(data), "--methods", "iic",
                   "--datasets", "dubai", "--protocols", "honest", "--seeds", str(seed), "--iic-patch", "64",
                   "--iic-scale", "0.5", "--iic-batch-size", "8", "--iic-lr", "1e-3", "--iic-steps", str(steps),
                   "--no-write", "--work", str(work)]  # fmt: skip
        try:
            done = subprocess.run(
                command, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                timeout=None if dry else max(1.0, time_left() - 5),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            notes.append(f"seed {seed}: stopped by the time budget")
            break
        if done.returncode != 0:
            raise RuntimeError(
                f"bench/quality.py seed {seed} exited {done.returncode}: {done.stderr[-1500:]}"
            )
        (report,) = sorted(work.rglob("report.json"))
        score = json.loads(report.read_text())
        miou.append(float(score["miou"]))
        accuracy.append(float(score["accuracy"]))
        done_seeds.append(seed)
    return {
        "data": where,
        "seeds": done_seeds,
        "steps": steps,
        "settings": "IIC, honest Dubai protocol: patch 64, scale 0.5, batch 8, lr 1e-3 (bench/RESULTS.md)",
        "miou": miou,
        "accuracy": accuracy,
        "miou_mean_std": [round(float(np.mean(miou)), 4), round(float(np.std(miou)), 4)] if miou else None,
        "notes": notes,
        "seconds": round(time.perf_counter() - t, 1),
    }


def run_part(name: str, fn: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    t = time.perf_counter()
    try:
        record = fn()
    except Exception as exc:  # one failing part must not lose the figures of the others
        record = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-3000:]}
    record["part_seconds"] = round(time.perf_counter() - t, 1)
    results["parts"][name] = record
    print(f"{name}: {json.dumps(record)[:400]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write the figures here")
    parser.add_argument("--dry-run", action="store_true", help="every part tiny, on the CPU")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or --dry-run to check the script on the CPU", file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "dry_run": args.dry_run,
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "parts": {},
    }
    data = find_data()
    with tempfile.TemporaryDirectory(prefix="geoseg-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        if {"peak", "train", "train_compiled"} & set(parts):
            run_part("peak", lambda: part_peak(device, args.dry_run), results)
        peaks = results["parts"].get("peak", {})
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "segment": lambda: part_segment(device, args.dry_run, tmp),
            "train": lambda: part_train(device, args.dry_run, peaks, compiled=False),
            "quality": lambda: part_quality(args.dry_run, tmp, data),
            "train_compiled": lambda: part_train(device, args.dry_run, peaks, compiled=True),
            "ddp": lambda: part_ddp(device, args.dry_run, tmp, data),
        }
        for name, fn in steps.items():
            if name in parts:
                run_part(name, fn, results)
                args.json.write_text(json.dumps(results, indent=2) + "\n")  # what is done survives a kill
        shutil.rmtree(tmp, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    failed = [n for n, r in results["parts"].items() if "error" in r]
    print(f"wrote {args.json} in {results['seconds']} s" + (f"; FAILED parts: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
