"""The benchmark scripts of issue 11 run end to end at their smoke sizes (the measurements themselves are made by
hand on a quiet machine; see benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(args: list[str], tmp_path: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    proc = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_gpu_checks_small_on_cpu(tmp_path):
    proc = _run([str(BENCH / "gpu_checks.py"), "--device", "cpu", "--small", "--threads", "1"], tmp_path)
    md = (tmp_path / "gpu_checks.md").read_text()
    assert (tmp_path / "gpu_checks.json").exists()
    for section in ("## dtype", "## chain_batch", "## memory"):
        assert section in md and section in proc.stdout
    assert "error" not in md
    assert "| 16 |" in md and "True" in md  # chain_batch 16 gives the same per-chain λ̂ as 32


@pytest.mark.slow
def test_minimal_loop_quick(tmp_path):
    proc = _run([str(BENCH / "minimal_loop.py"), "--quick", "--repeats", "1"], tmp_path)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| regular_d10 |")]
    assert len(table) == 1
    assert (
        "lambdahat eager / best minimal" in proc.stdout and "lambdahat eager / minimal eager" in proc.stdout
    )


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_sh_parses():
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)


@pytest.mark.slow
def test_first_call_one_workload(tmp_path):
    proc = _run(
        [str(BENCH / "first_call.py"), "--repeats", "1", "--workloads", "modadd", "--threads", "1"], tmp_path
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| modadd |")]
    assert len(rows) == 1
    floor, estimator, ratio = (float(v) for v in rows[0].split("|")[2:5])
    # the ratio of the unrounded times against the ratio of the two printed (rounded) ones
    assert floor > 0 and estimator > 0 and ratio == pytest.approx(estimator / floor, rel=0.03)


@pytest.mark.slow
def test_lm_auto_smoke(tmp_path):
    pytest.importorskip("transformers")
    args = [
        "--train-steps",
        "5",
        "--draws",
        "4",
        "--burnin",
        "4",
        "--localization",
        "100",
        "--nbeta",
        "30",
        "--chains",
        "2",
    ]
    proc = _run([str(BENCH / "lm_auto.py"), *args], tmp_path)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 100 |")]
    assert len(rows) == 1 and " s |" in rows[0], proc.stdout
    assert "nβ 30" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_scale_probe_smoke(tmp_path):
    args = ["--n", "2000", "--draws", "4", "--burnin", "auto", "--max-burnin", "100", "--steps-bw-draws", "1"]
    proc = _run([str(BENCH / "scale_probe.py"), *args, "--chains", "2"], tmp_path)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| dln_16-16-16-16-16_r3_rot |")]
    assert len(rows) == 1 and "(auto, tried [100])" in rows[0], proc.stdout
