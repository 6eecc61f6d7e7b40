"""`make bench` keeps running: a short run of benchmarks/train.py writes the results file the issue asks for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_bench_writes_side_by_side_cases(tiny_data: Path, tmp_path: Path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train.py"), "--cases", "dpo-tiny", "--steps", "3",
         "--warmup", "1", "--repeats", "1", "--data_rows", "0", "--output", str(out)],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "ALIGNMENT_TINY_DIR": str(tiny_data / "data" / "tiny")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    [case] = results["cases"]
    assert case["name"] == "dpo-tiny" and case["kept"] is True
    for key in ("device", "baseline_tokens_per_s", "ours_tokens_per_s", "ratio", "peak_memory_gib", "mfu"):
        assert case[key] is not None and case[key] != 0, key
    assert case["ratio"] == pytest.approx(case["ours_tokens_per_s"] / case["baseline_tokens_per_s"], rel=0.01)
    ours = next(c for c in results["raw"][0]["configs"] if c["variant"] == "ours")
    assert ours["settings"]["activation_checkpointing"] is False  # the library's choice is what is measured
    assert any(n.startswith("fast default: ") for n in ours["notes"])
    assert results["matmul_peak_flops"]["fp32"] > 0 and results["gpu_cases"].startswith("not measured")
