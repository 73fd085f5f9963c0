"""What the benchmark scripts share: the machine's load and the *floor*, the bare vmapped gradient step the
estimator is measured against. Run the scripts as ``python benchmarks/<script>.py`` (this directory is then on the
import path). ``loadavg`` does not import torch, so a parent process that measures memory can use it."""

from __future__ import annotations

import argparse


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages of ``/proc/loadavg`` ("n/a" where there is none)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def workload_parser(doc: str, workloads: str = "mlp,modadd,dln,transformer") -> argparse.ArgumentParser:
    """The options of the scripts that measure estimator_speed's workloads: ``--workloads`` (comma-separated),
    ``--repeats`` and ``--threads`` (torch's intra-op threads); ``doc`` is the script's docstring."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=workloads)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser


def floor_step(model, criterion, chains: int, device="cpu"):
    """The floor: ``vmap(grad_and_value(loss))`` over ``chains`` stacked copies of ``model``'s parameters, with no
    sampler, no noise and no bookkeeping. Returns ``(fn, params, buffers)``; ``fn(params, buffers, x, y)`` gives
    the gradients and the losses of every chain. ``model`` is copied (eval mode, on ``device``), never changed."""
    import copy

    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    base = copy.deepcopy(model).eval().to(device)
    params, buffers = stack_module_state([base] * chains)
    params = {k: v.detach() for k, v in params.items()}

    def loss(p, b, x, y):
        return criterion(functional_call(base, (p, b), (x,)), y)

    return vmap(grad_and_value(loss), in_dims=(0, 0, None, None)), params, buffers
