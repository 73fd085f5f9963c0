import ast
import doctest
import importlib
import subprocess
import sys

import pytest

import lambdahat.modadd as modadd

PUBLIC = {
    "CircuitModel",
    "CircuitReport",
    "ExperimentParams",
    "ModAddModel",
    "ModeDoubling",
    "Run",
    "ablate_keep_mode",
    "all_pairs",
    "build_model",
    "checkpoint_steps",
    "classify_circuit",
    "correct_logit_grid",
    "distance_irrelevance",
    "dominant_mode",
    "evaluate",
    "fold_mode",
    "fourier_basis",
    "gradient_symmetricity",
    "load_run",
    "make_dataset",
    "mode_ablation_table",
    "mode_doubling",
    "mode_magnitudes",
    "mode_magnitudes_over_checkpoints",
    "mode_projector",
    "plot_mode_ablation",
    "plot_mode_circle",
    "plot_mode_heatmap",
    "plot_mode_magnitudes",
    "plot_training_curves",
    "project_to_modes",
    "train",
    "train_test_split",
    # phase 2
    "llc_over_training",
    "p_sweep",
    "plot_llc_over_training",
    "plot_llc_vs_p",
    "run_demo",
}


def test_public_surface_is_pinned():
    assert set(modadd.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(modadd, name).__doc__, name


@pytest.mark.parametrize(
    "module",
    ["params", "data", "model", "train", "fourier", "circuits", "plots", "llc", "sweep", "report", "demo"],
)
def test_docstring_examples_run(module):
    mod = importlib.import_module(f"lambdahat.modadd.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


@pytest.mark.parametrize("module", ["plots", "llc", "sweep", "report", "demo"])
def test_plots_never_use_pyplot_or_select_a_backend(module):
    src = open(importlib.import_module(f"lambdahat.modadd.{module}").__file__).read()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    assert not any("pyplot" in name for name in imported)
    assert "matplotlib.use(" not in src and ".show(" not in src


def test_params_imports_no_heavy_library():
    """ExperimentParams and the λ̂ defaults are read by `lambdahat modadd ... --help`, which must stay quick."""
    script = (
        "import sys\n"
        "from lambdahat.modadd import ExperimentParams\n"
        "import lambdahat.modadd.params as params\n"
        "assert params.ExperimentParams is ExperimentParams\n"
        "print('HEAVY', [m for m in ('torch', 'numpy', 'pandas', 'matplotlib') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_moved_definitions_are_reexported():
    llc, model, params, train = (
        importlib.import_module(f"lambdahat.modadd.{m}") for m in ("llc", "model", "params", "train")
    )
    assert train.ExperimentParams is params.ExperimentParams is modadd.ExperimentParams
    assert model.Activation is params.Activation
    for name in [n for n in llc.__all__ if n.startswith("DEFAULT_")]:
        assert getattr(llc, name) is getattr(params, name), name
