"""The trust policy against the truth: its confusion matrix on closed-form cases.

Every case of ``lambdahat validate`` (the cases the settings were tuned on) and a held-out set (other sizes, ranks
and exponents, never used to choose a threshold) runs at settings around its well-tuned ones: the step at
×½, ×1, ×2 and ×4 of the validation's, the localization at ×1 and ×10. Each run makes the three accuracy checks
(``checks="all"``). Two questions, each with its label and verdict:

* *Is λ̂ within 10 % of λ?* (``accurate_lambda``, Aoyagi's or the closed-form λ) against the policy's verdict with
  all three checks (``trusted``: ``status == "ok"``).
* *Did the chains sample the localized posterior at the run's γ to within 10 %?* (``accurate``: against the exact
  finite-nβ posterior mean at that γ where the case has one, regular, monomial and radial; λ otherwise) against
  the verdict with the step and start checks only (``trusted_sampling``; the localization check asks about γ, which
  this label takes as given).

Both are compared with the verdict from the proxies alone (``trusted_by_proxies``: the same run judged without the
checks).

Run: ``python benchmarks/trust_confusion.py [--held-out-only] [--cases a,b] [--out runs.csv]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
import warnings

import pandas as pd
import torch
from bench_common import loadavg

from lambdahat import prepare, sample, truth
from lambdahat.validation import SETTINGS, CaseSettings

STEP_FACTORS = (0.5, 1.0, 2.0, 4.0)
LOCALIZATION_FACTORS = (1.0, 10.0)
ACCURATE = 0.10


def held_out() -> list[tuple[truth.TruthCase, CaseSettings]]:
    """Cases no threshold was chosen on, with settings made by the validation's rules of thumb."""
    return [
        (
            truth.regular_case(40),
            CaseSettings(learning_rate=5e-5, localization=1.0, draws=1000, burnin_steps=300),
        ),
        (truth.monomial_case([1, 3]), CaseSettings(learning_rate=1e-3, localization=10.0)),
        (truth.radial_case(4, 2), CaseSettings(learning_rate=5e-4, localization=1.0, draws=3000)),
        (
            truth.reduced_rank_case(5, 4, 6, 2),
            CaseSettings(learning_rate=1e-4, localization=1.0, draws=4000, burnin_steps=2000),
        ),
        (
            truth.deep_linear_case([5, 4, 4, 5], 2),
            CaseSettings(learning_rate=1e-4, localization=1.0, draws=8000, burnin_steps=2000),
        ),
        (
            truth.deep_linear_case([3, 6, 3], 1),
            CaseSettings(learning_rate=1e-4, localization=1.0, draws=8000, burnin_steps=2000),
        ),
    ]


def tuned() -> list[tuple[truth.TruthCase, CaseSettings]]:
    return [(case, SETTINGS[case.name]) for case in truth.default_cases()]


def run_case(case: truth.TruthCase, settings: CaseSettings, set_name: str, seed: int) -> list[dict]:
    nbeta = case.n / math.log(case.n)
    rows = []
    for step in STEP_FACTORS:
        for loc in LOCALIZATION_FACTORS:
            gamma = settings.localization * loc
            config = dataclasses.replace(settings, learning_rate=settings.learning_rate * step).config(nbeta)
            config = config.replace(localization=gamma, checks="all")
            problem = prepare(
                case.model,
                case.loader(settings.batch_size, shuffle=True),
                config,
                criterion_fn=case.criterion_fn,
            )
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = sample(problem, config, seed=seed, show_progress=False, warn=False)
                proxies = result.rejudged({**result.settings, "accuracy": {}}, warn=False)
                measured = result.settings["accuracy"]
                sampling = result.rejudged(
                    {
                        **result.settings,
                        "accuracy": {k: v for k, v in measured.items() if k != "localization"},
                    },
                    warn=False,
                )
            reference, kind = (
                case.reference(nbeta, gamma, 0.0) if case.target is not None else (case.true_lambda, "λ")
            )
            rel = result.llc_mean / reference - 1
            checks = result.settings["accuracy"]
            rows.append(
                dict(
                    set=set_name,
                    case=case.name,
                    d=case.d,
                    step_factor=step,
                    localization_factor=loc,
                    learning_rate=config.learning_rate,
                    localization=gamma,
                    reference=reference,
                    reference_kind=kind,
                    llc_mean=result.llc_mean,
                    llc_stderr=result.llc_stderr,
                    rel_error=rel,
                    accurate=abs(rel) <= ACCURATE,
                    accurate_lambda=abs(result.llc_mean / case.true_lambda - 1) <= ACCURATE,
                    trusted=result.status == "ok",
                    trusted_sampling=sampling.status == "ok",
                    trusted_by_proxies=proxies.status == "ok",
                    **{
                        f"{name}_{key}": (checks.get(name) or {}).get(field)
                        for name in ("step", "localization", "start")
                        for key, field in (("bias", "bias"), ("stderr", "bias_stderr"))
                    },
                    true_lambda=case.true_lambda,
                    status=result.status_line,
                    proxy_status=proxies.status_line,
                    seconds=time.perf_counter() - start,
                )
            )
            r = rows[-1]
            print(
                f"{set_name:8s} {case.name:22s} x{step:<4g} γx{loc:<3g} λ̂ {r['llc_mean']:8.3f} ref {reference:8.3f} "
                f"{100 * rel:+6.1f}% {'ACC' if r['accurate'] else '   '} {r['status'][:70]} ({r['seconds']:.0f}s)",
                flush=True,
            )
    return rows


def confusion(df: pd.DataFrame, column: str, label: str) -> dict:
    tp = int((df[column] & df[label]).sum())
    fp = int((df[column] & ~df[label]).sum())
    fn = int((~df[column] & df[label]).sum())
    tn = int((~df[column] & ~df[label]).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    return dict(
        verdict=column,
        label=label,
        runs=len(df),
        trusted_accurate=tp,
        trusted_wrong=fp,
        flagged_accurate=fn,
        flagged_wrong=tn,
        precision=precision,
        recall=recall,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--held-out-only", action="store_true")
    parser.add_argument("--tuned-only", action="store_true")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write every run to this CSV")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load before: {loadavg()}", flush=True)
    sets = []
    if not args.held_out_only:
        sets += [("tuned", c, s) for c, s in tuned()]
    if not args.tuned_only:
        sets += [("held-out", c, s) for c, s in held_out()]
    if args.cases:
        wanted = set(args.cases.split(","))
        sets = [t for t in sets if t[1].name in wanted]
    rows = []
    for set_name, case, settings in sets:
        rows += run_case(case, settings, set_name, args.seed)
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    table = []
    for name, part in [("all", df), *df.groupby("set")]:
        for column, label in (
            ("trusted", "accurate_lambda"),
            ("trusted_by_proxies", "accurate_lambda"),
            ("trusted_sampling", "accurate"),
            ("trusted_by_proxies", "accurate"),
        ):
            table.append({"set": name, **confusion(part, column, label)})
    print(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"load after: {loadavg()}")


if __name__ == "__main__":
    main()
