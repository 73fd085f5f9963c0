"""GPU readiness checks of issue 11 (item 6), through the public estimator API; a few minutes on one CUDA device.

Sections (``--sections``, default all; with ``--small`` the default leaves out ``chunk``, whose two compiles take
minutes on a small CPU):

- ``dtype``: the transformer workload of estimator_speed.py (``--small``: modadd), 8 chains, eager, in fp32, bf16
  and fp16 autocast (``LLCEstimator(dtype=...)``): steady seconds per call (the second of two calls), λ̂ ± its
  standard error over chains, and z = the difference to fp32 over the combined standard error;
- ``chain_batch``: the MLP workload (``--small``: modadd), 32 chains, ``chain_batch`` 32 / 16 / 8, eager: steady
  seconds and whether the per-chain λ̂ equal those of chain_batch 32 (they should, bitwise);
- ``memory``: the transformer (``--small``: modadd), eager: the peak memory increase of one floor run
  (``vmap(grad_and_value)`` over stacked parameters, the same batches and steps) and of one estimator run, after
  a warm-up run of each; CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; CPU: the
  resident set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``; ``mallopt`` makes glibc
  unmap freed blocks of 64 KiB or more so the resident set follows the live tensors);
- ``chunk``: modadd (D = 4481, within the chunked range), ``compile=True`` with ``lambdahat.plan.CHUNK_STEPS``
  set to 1 and to 8: first call (compile included), steady seconds (median of 3), λ̂.

Writes ``gpu_checks.json`` and ``gpu_checks.md`` to ``$OUT`` if set, else to the current directory, and prints the
markdown. A section that fails records its error and the others still run.

Usage::

    PYTHONPATH=src python benchmarks/gpu_checks.py                        # on a CUDA machine (see gpu.sh)
    PYTHONPATH=src python benchmarks/gpu_checks.py --device cpu --small   # the script itself, in seconds
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings

import torch
from bench_common import floor_step, loadavg
from estimator_speed import workload
from torch.utils.data import DataLoader

import lambdahat.plan
from lambdahat import LLCEstimator

SECTIONS = ("dtype", "chain_batch", "memory", "chunk")


class Checks:
    def __init__(self, device: str, small: bool) -> None:
        self.device, self.small = device, small
        self.cuda = torch.device(device).type == "cuda"
        self.draws, self.burnin = (10, 5) if small else (100, 50)
        self.specs: dict = {}

    def spec(self, name):
        """(model, data, batch, criterion, hyperparameters) of an estimator_speed.py workload, made once."""
        if name not in self.specs:
            self.specs[name] = workload(name)
        return self.specs[name]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def run(self, name, chains=8, dtype="float32", compile=False, chain_batch=None, model=None):
        """One estimate_llc call on workload ``name``: (seconds, per-chain λ̂ list, metrics)."""
        wmodel, data, batch, criterion, hp = self.spec(name)
        est = LLCEstimator(draws=self.draws, chains=chains, burnin_steps=self.burnin, dtype=dtype, **hp)
        loader = DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(1))
        self.sync()
        start = time.perf_counter()
        llcs = est.estimate_llc(
            wmodel if model is None else model,
            loader,
            criterion_fn=criterion,
            devices=[self.device],
            chain_batch=chain_batch,
            seed=0,
            compile=compile,
            show_progress=False,
        )
        self.sync()
        return time.perf_counter() - start, [float(v) for v in llcs], est.get_metrics()

    @staticmethod
    def mean_se(llcs):
        return statistics.fmean(llcs), statistics.stdev(llcs) / math.sqrt(len(llcs))

    def dtype(self):
        name = "modadd" if self.small else "transformer"
        rows = {}
        for dt in ("float32", "bfloat16", "float16"):
            try:
                self.run(name, dtype=dt)  # warm-up
                seconds, llcs, m = self.run(name, dtype=dt)
                mean, se = self.mean_se(llcs)
                rows[dt] = {"seconds": seconds, "llc_mean": mean, "llc_se": se, "status": m["status"]}
            except Exception as exc:
                rows[dt] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        ref = rows.get("float32", {})
        for r in rows.values():
            if "llc_mean" in r and "llc_mean" in ref:
                r["z_vs_fp32"] = (r["llc_mean"] - ref["llc_mean"]) / math.sqrt(
                    r["llc_se"] ** 2 + ref["llc_se"] ** 2
                )
                r["time_vs_fp32"] = r["seconds"] / ref["seconds"]
        return {"workload": name, "rows": rows}

    def chain_batch(self):
        name = "modadd" if self.small else "mlp"
        rows, ref = {}, None
        for cb in (32, 16, 8):
            self.run(name, chains=32, chain_batch=cb)  # warm-up
            seconds, llcs, _ = self.run(name, chains=32, chain_batch=cb)
            ref = ref or llcs
            rows[str(cb)] = {
                "seconds": seconds,
                "llc_mean": statistics.fmean(llcs),
                "identical_to_32": llcs == ref,
            }
        return {"workload": name, "chains": 32, "rows": rows}

    def memory(self):
        name = "modadd" if self.small else "transformer"
        model, data, batch, criterion, _hp = self.spec(name)
        batches = [
            tuple(t.to(self.device) for t in b) for b in DataLoader(data, batch_size=batch, shuffle=True)
        ]
        if not self.cuda:
            try:  # glibc: serve blocks >= 64 KiB from their own mappings, unmapped when freed (M_MMAP_THRESHOLD)
                ctypes.CDLL("libc.so.6").mallopt(-3, 65536)
            except OSError:
                pass
        f, params, buffers = floor_step(model, criterion, 8, self.device)

        def floor():
            for s in range(self.draws + self.burnin):
                _g, losses = f(params, buffers, *batches[s % len(batches)])
            losses.sum().item()

        def estimator():
            self.run(name, model=model)

        def peak_increase(fn):
            fn()  # warm-up
            self.sync()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
                before = torch.cuda.memory_allocated(self.device)
                fn()
                self.sync()
                return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            before = _status_kib("VmRSS")
            fn()
            return (_status_kib("VmHWM") - before) / 2**10

        floor_mib, est_mib = peak_increase(floor), peak_increase(estimator)
        kind = "torch.cuda.max_memory_allocated" if self.cuda else "resident set (VmHWM)"
        return {"workload": name, "measure": kind, "floor_mib": floor_mib, "estimator_mib": est_mib,
                "ratio": est_mib / floor_mib if floor_mib > 0 else float("nan")}  # fmt: skip

    def chunk(self):
        rows = {}
        saved = lambdahat.plan.CHUNK_STEPS, lambdahat.plan.CHUNK_MIN_CALLS
        try:
            lambdahat.plan.CHUNK_MIN_CALLS = 0  # chunks whatever the planned work
            for k in (1, 8):
                lambdahat.plan.CHUNK_STEPS = k
                model = workload("modadd")[0]  # a fresh model object: nothing compiled for it in memory
                first, llcs, m = self.run("modadd", compile=True, model=model)
                steady = statistics.median(self.run("modadd", compile=True, model=model)[0] for _ in range(3))
                rows[str(k)] = {"first_s": first, "steady_s": steady, "llc_mean": statistics.fmean(llcs),
                                "chunk_steps": m["chunk_steps"], "compiled": m["compiled"]}  # fmt: skip
        finally:
            lambdahat.plan.CHUNK_STEPS, lambdahat.plan.CHUNK_MIN_CALLS = saved
        if "1" in rows and "8" in rows:
            rows["speedup_8_over_1"] = rows["1"]["steady_s"] / rows["8"]["steady_s"]
        return rows


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def markdown(report: dict) -> str:
    out = [f"# GPU checks ({report['device']}{', small' if report['small'] else ''})", ""]
    out.append(f"torch {report['torch']}; {report.get('gpu', 'no GPU')}; load {report['load_before']} → "
               f"{report['load_after']}; {report['total_s']:.0f} s in all")  # fmt: skip
    for name in SECTIONS:
        sec = report.get(name)
        if sec is None:
            continue
        out += ["", f"## {name}", ""]
        if "error" in sec:
            out.append(f"error: {sec['error']}")
            continue
        if name == "dtype":
            out += [f"workload {sec['workload']}, 8 chains, eager", "",
                    "| dtype | steady s | vs fp32 | λ̂ ± se | z vs fp32 | status |", "|---|---:|---:|---|---:|---|"]  # fmt: skip
            for dt, r in sec["rows"].items():
                if "error" in r:
                    out.append(f"| {dt} | error: {r['error']} | | | | |")
                else:
                    out.append(
                        f"| {dt} | {r['seconds']:.3f} | {r.get('time_vs_fp32', float('nan')):.2f} | "
                        f"{r['llc_mean']:.3f} ± {r['llc_se']:.3f} | {r.get('z_vs_fp32', float('nan')):.2f} | "
                        f"{r['status']} |"
                    )
        elif name == "chain_batch":
            out += [f"workload {sec['workload']}, 32 chains, eager", "",
                    "| chain_batch | steady s | mean λ̂ | per-chain λ̂ = chain_batch 32 |", "|---:|---:|---:|---|"]  # fmt: skip
            for cb, r in sec["rows"].items():
                out.append(f"| {cb} | {r['seconds']:.3f} | {r['llc_mean']:.3f} | {r['identical_to_32']} |")
        elif name == "memory":
            out += [f"workload {sec['workload']}, 8 chains, eager; {sec['measure']}", "",
                    "| floor peak increase MiB | estimator peak increase MiB | estimator / floor (target ≤ 1.10) |",
                    "|---:|---:|---:|",
                    f"| {sec['floor_mib']:.1f} | {sec['estimator_mib']:.1f} | {sec['ratio']:.2f} |"]  # fmt: skip
        elif name == "chunk":
            out += ["modadd, compile=True", "", "| CHUNK_STEPS | first call s | steady s | chunk_steps recorded | λ̂ |",
                    "|---:|---:|---:|---:|---:|"]  # fmt: skip
            for k in ("1", "8"):
                if k in sec:
                    r = sec[k]
                    out.append(
                        f"| {k} | {r['first_s']:.1f} | {r['steady_s']:.3f} | {r['chunk_steps']} | "
                        f"{r['llc_mean']:.3f} |"
                    )
            if "speedup_8_over_1" in sec:
                out += ["", f"steady speed-up of chunks of 8: {sec['speedup_8_over_1']:.2f}x"]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes, to check the script on a CPU")
    parser.add_argument("--sections", default=None, help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_checks: {args.device} requested but CUDA is not available (use --device cpu)")
    sections = (
        args.sections.split(",")
        if args.sections
        else [s for s in SECTIONS if not (args.small and s == "chunk")]
    )
    checks = Checks(args.device, args.small)
    report = {
        "torch": torch.__version__,
        "device": args.device,
        "small": args.small,
        "load_before": loadavg(),
    }
    if checks.cuda:
        report["gpu"] = torch.cuda.get_device_name(args.device)
    start = time.perf_counter()
    for name in sections:
        t = time.perf_counter()
        try:
            report[name] = getattr(checks, name)()
        except Exception as exc:
            report[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
        print(f"== {name} ({time.perf_counter() - t:.1f} s): {json.dumps(report[name])[:400]}", flush=True)
    report["total_s"] = time.perf_counter() - start
    report["load_after"] = loadavg()
    out_dir = os.environ.get("OUT") or "."
    md = markdown(report)
    with open(os.path.join(out_dir, "gpu_checks.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "gpu_checks.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {os.path.join(out_dir, 'gpu_checks.json')} and gpu_checks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
