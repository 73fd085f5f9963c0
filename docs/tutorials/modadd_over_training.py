"""λ̂ over the training of a modular-addition network that memorizes and then groks.

The default :class:`~lambdahat.modadd.ExperimentParams` train a small GELU network on ``(a + b) mod 53`` from half
of the pairs: the training accuracy reaches 1 around step 1000 while the test accuracy is still low, and weight
decay then pulls the test accuracy up (grokking) by step 2000. λ̂ is estimated at 11 of its checkpoints. Run with
``python docs/tutorials/modadd_over_training.py`` (under a minute on a laptop CPU); it prints the table and writes
the run directory ``runs/p53``, ``llc_over_training.csv`` and ``llc_over_training.png``.
"""

import torch

from lambdahat import modadd

torch.set_num_threads(1)  # tiny models: one thread is fastest (see lambdahat.modadd.train)

# 1. Train: checkpoints (safetensors) and record.csv in a run directory; the run is a pure function of its params.
params = modadd.ExperimentParams(p=53, n_batches=4000, n_save_model_checkpoints=11, run_id=0)
run = modadd.train(params, "runs/p53", show_progress=False, overwrite=True)  # or modadd.load_run("runs/p53")
print(f"trained p = {params.p}: {run.n_checkpoints} checkpoints in {run.path}")

# 2. λ̂ at every checkpoint: SGLD on the training split, orthogonal to the gradient at w* (checkpoints early in
#    training are far from a minimum), nβ = n / log n. Fewer draws than the defaults (200 draws, 8 chains).
table = modadd.llc_over_training(run, draws=100, burnin_steps=300, chains=4, seed=0, show_progress=False)
columns = ["step", "train_acc", "test_acc", "llc_mean", "llc_stderr", "status"]
print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}", max_colwidth=40))
table.to_csv("llc_over_training.csv", index=False)

# 3. The figure: λ̂ against the training step, with the accuracies.
modadd.plot_llc_over_training(table).savefig("llc_over_training.png", dpi=80)
print("wrote llc_over_training.csv and llc_over_training.png")
