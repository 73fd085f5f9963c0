"""One rotated deep linear network of ``lambdahat validate --scale`` at a chosen nβ, step and burn-in, with the three
accuracy checks: how λ̂, its measured biases and the burn-in ``burnin_steps="auto"`` needs change with nβ.

The data are noiseless, so nβ can be raised without changing the data set: ``--nbeta-factor k`` samples the
posterior at ``k · n / log n`` (the asymptotic λ is the limit of nβ → ∞); ``--learning-rate`` is the step.

Run: ``python benchmarks/scale_probe.py --size 1e3 --nbeta-factor 10 --learning-rate 2.37e-6 --burnin auto
--max-burnin 64000`` (one line of results; ``--threads 1`` by default).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from bench_common import loadavg

from lambdahat import LLCConfig, prepare, sample, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1e3")
    parser.add_argument("--nbeta-factor", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=7.9e-6)
    parser.add_argument("--localization", type=float, default=3.0)
    parser.add_argument("--burnin", default="8000")
    parser.add_argument("--max-burnin", type=int, default=None)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--steps-bw-draws", type=int, default=4)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--n", type=int, default=100_000, help="data set size of the case")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    case = truth.scale_cases([args.size], n=args.n)[0]
    nbeta = args.nbeta_factor * args.n / math.log(args.n)
    config = LLCConfig(
        draws=args.draws,
        chains=args.chains,
        burnin_steps=args.burnin if args.burnin == "auto" else int(args.burnin),
        max_burnin_steps=args.max_burnin,
        steps_bw_draws=args.steps_bw_draws,
        learning_rate=args.learning_rate,
        localization=args.localization,
        nbeta=nbeta,
        checks="all",
    )
    before, started = loadavg(), time.perf_counter()
    problem = prepare(case.model, case.loader(500), config, criterion_fn=case.criterion_fn, compile=False)
    result = sample(problem, config, seed=0, show_progress=False, warn=False)
    seconds = time.perf_counter() - started
    checks = {
        name: f"{100 * c['bias']:+.1f} % ± {100 * c['bias_stderr']:.1f} %"
        for name, c in result.settings["accuracy"].items()
    }
    search = result.settings.get("burnin_search")
    print(
        f"| {case.name} | {case.d} | {case.true_lambda:g} | {nbeta:.0f} | {args.learning_rate:.3g} | "
        f"{result.settings['burnin_steps']}{' (auto, tried ' + str(search['tried']) + ')' if search else ''} | "
        f"{result.llc_mean:.1f} ± {result.llc_stderr:.1f} | {(result.llc_mean / case.true_lambda - 1):+.1%} | "
        f"{checks.get('step')} | {checks.get('localization')} | {checks.get('start')} | {result.status_line} | "
        f"{seconds:.0f} s | {before} → {loadavg()} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
