"""bench/gpu.sh, the GPU check, exercised on the CPU: it refuses to pretend without CUDA,
and its dry run goes through every part (tiny) and writes the JSON the GPU run writes.

The dry run leaves out the ``quality`` part: it ingests, trains, segments and scores 54
real Dubai images (minutes on two shared cores even at 2 steps); its command line is
``bench/quality.py``'s, whose own runs are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.sh"


def gpu_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GEOSEG_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real run would start")
def test_without_cuda_the_script_stops_with_one_clear_reason(tmp_path: Path) -> None:
    done = run(str(tmp_path / "gpu.json"))
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "gpu.json").exists()  # nothing pretends to be a GPU figure


def test_the_dry_run_goes_through_every_part_and_writes_the_json(tmp_path: Path) -> None:
    gpu = gpu_module()
    out = tmp_path / "gpu.json"
    parts = [p for p in gpu.PARTS if p != "quality"]
    done = run("--dry-run", str(out), "--parts", ",".join(parts))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and set(result["parts"]) == set(parts)
    for name, record in result["parts"].items():
        assert "error" not in record, (name, record)
        assert gpu.SCHEMA[name] <= set(record), (name, sorted(record))
    for name, compiled in (("train", False), ("train_compiled", True)):
        rows = result["parts"][name]["rows"]
        assert {(r["preset"], r["precision"]) for r in rows} == {
            (p, q) for p in ("small", "iic") for q in ("bf16", "fp32")
        }
        for row in rows:
            assert set(row) >= gpu.TRAIN_ROW and row["compiled"] is compiled, row
            assert row["pairs_per_s"] > 0 and row["fraction_of_limit"] > 0
    segment = result["parts"]["segment"]
    assert segment["mpx_s"] > 0 and segment["bf16"]["mpx_s"] > 0
    assert 0.9 <= segment["bf16"]["same_ids_as_fp32"] <= 1.0  # a random network on a generated scene
    assert result["parts"]["ddp"]["backend"] == "gloo" and result["parts"]["ddp"]["bundle"] is True
