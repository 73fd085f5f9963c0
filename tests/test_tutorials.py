"""The tutorials of docs/tutorials run end to end and print and write what their pages promise.

Each script runs in a subprocess with a temporary working directory (where it writes its files), the Agg backend
and one torch thread (the models are small: one thread is the fastest on a busy 2-core machine, and it keeps the
times the pages quote). The documentation shows the scripts themselves (``--8<--`` in docs/tutorials/*.md), so a
tutorial that breaks fails here.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
SCRIPTS = {
    "quickstart.py": (),
    "gpt2_heads.py": ("transformers",),
    "bif_classifier.py": (),
    "modadd_over_training.py": (),
    "sweeps.py": (),
    "arviz_interop.py": ("arviz", "xarray", "h5netcdf"),
}


def run_tutorial(name: str, cwd: Path, timeout: float = 300) -> str:
    """Run ``docs/tutorials/<name>`` in ``cwd``; its standard output (the test fails on a non-zero exit)."""
    for module in SCRIPTS[name]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{name} needs {module}")
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(TUTORIALS / name)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def number(text: str, pattern: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def test_every_tutorial_is_tested_and_shown():
    scripts = {p.name for p in TUTORIALS.glob("*.py")}
    assert scripts == set(SCRIPTS), "add the new tutorial to SCRIPTS (and its checks below)"
    shown = "\n".join(p.read_text() for p in TUTORIALS.glob("*.md"))
    for name in scripts:
        assert f'--8<-- "docs/tutorials/{name}"' in shown, f"no page in docs/tutorials shows {name}"


@pytest.mark.slow
def test_quickstart(tmp_path):
    out = run_tutorial("quickstart.py", tmp_path)
    assert number(out, r"λ̂ = (-?[\d.]+) ± ") > 0
    assert re.search(r"^status: (ok|untrusted)", out, re.M)
    assert len(re.findall(r"^ε = .*acceptance", out, re.M)) == 3
    for check in ("step", "localization", "start"):
        assert re.search(rf"^  {check} check: bias [+-][\d.]+ % ± [\d.]+ %$", out, re.M), check
    assert (tmp_path / "quickstart_trace.png").stat().st_size > 10_000


@pytest.mark.slow
def test_gpt2_heads(tmp_path):
    out = run_tutorial("gpt2_heads.py", tmp_path)
    assert "GPT-2: 104,704 parameters" in out
    table = rows(tmp_path / "gpt2_heads.csv")
    heads = [f"l{layer}h{head}" for layer in range(2) for head in range(4)]
    assert [r["component"] for r in table] == ["all", "l0", "l1", *heads]
    assert {r["dim"] for r in table if r["component"] in heads} == {"4144"}  # 4 · 64 · 16 + 3 · 16
    assert int(table[0]["dim"]) == 104_704
    assert all(r["status"] in ("ok", "untrusted") for r in table)
    for tokens in ("random", "repeated"):
        assert math.isfinite(number(out, rf"λ̂ on the {tokens} tokens: (-?[\d.]+) ± "))


@pytest.mark.slow
def test_bif_classifier(tmp_path):
    out = run_tutorial("bif_classifier.py", tmp_path)
    assert "kernel (6, 300) (queries × training samples)" in out
    assert len(re.findall(r"^query \d \(class \d\): proponents of its class \d+%", out, re.M)) == 6
    flipped, clean = number(out, r"mean loss gain: flipped ([\d.]+)"), number(out, r", clean ([\d.]+)")
    assert flipped > clean  # the mislabelled samples are the hard ones
    within, across = number(out, r"mean correlation (-?[\d.]+) within"), number(out, r", (-?[\d.]+) across")
    assert within > across
    for component in ("layer 0", "layer 2", "full"):
        assert re.search(rf"^{component} ", out, re.M), component
    assert (tmp_path / "susceptibilities.png").stat().st_size > 10_000


@pytest.mark.slow
def test_modadd_over_training(tmp_path):
    out = run_tutorial("modadd_over_training.py", tmp_path)
    assert "trained p = 53: 11 checkpoints" in out
    table = rows(tmp_path / "llc_over_training.csv")
    assert [int(r["step"]) for r in table] == list(range(0, 4001, 400))
    llc = [float(r["llc_mean"]) for r in table]
    assert all(math.isfinite(v) for v in llc)  # every checkpoint estimated
    assert (tmp_path / "runs" / "p53" / "record.csv").exists()
    assert (tmp_path / "llc_over_training.png").stat().st_size > 10_000


@pytest.mark.slow
def test_sweeps(tmp_path):
    out = run_tutorial("sweeps.py", tmp_path)
    assert re.search(r"^rerun: 6 points read back in [\d.]+ s, same λ̂: True$", out, re.M)
    assert (tmp_path / "runs" / "grid" / "results.csv").exists()
    table = rows(tmp_path / "llc_over_checkpoints.csv")
    assert [int(r["checkpoint"]) for r in table] == [100, 300, 1000]
    assert all(r["status"].split(":")[0] in ("ok", "untrusted") for r in table)


@pytest.mark.slow
def test_arviz_interop(tmp_path):
    out = run_tutorial("arviz_interop.py", tmp_path)
    arviz_rhat, own_rhat = number(out, r"R-hat: ArviZ ([\d.]+)"), number(out, r"R-hat: .*lambdahat ([\d.]+)")
    arviz_ess, own_ess = number(out, r"ESS: +ArviZ ([\d.]+)"), number(out, r"ESS: .*lambdahat ([\d.]+)")
    assert arviz_rhat == own_rhat and arviz_ess == own_ess
    assert "'per_sample_loss': ('chain', 'draw', 'sample')" in out
    assert "run.nc: {'chain': 4, 'draw': 500, 'step': 1000, 'sample': 32}" in out
    assert (tmp_path / "run.nc").stat().st_size > 0
    assert (tmp_path / "arviz_trace.png").stat().st_size > 10_000
