import io

import pytest
import torch
from matplotlib.figure import Figure

from lambdahat.modadd import (
    make_dataset,
    mode_ablation_table,
    mode_magnitudes_over_checkpoints,
    plot_mode_ablation,
    plot_mode_circle,
    plot_mode_heatmap,
    plot_mode_magnitudes,
    plot_training_curves,
)

from .modadd_handmade import HandClock


def _renders(fig):
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_training_curves(tiny_run):
    fig = plot_training_curves(tiny_run)
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_acc.get_yscale() == "linear"
    assert len(ax_loss.lines) == 2 and list(ax_loss.lines[0].get_xdata()) == tiny_run.steps
    _renders(fig)


def test_mode_heatmap_from_run_or_table(tiny_run):
    fig = plot_mode_heatmap(tiny_run)
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (3, 5)  # modes 1..3 by 5 checkpoints
    _renders(fig)
    table = mode_magnitudes_over_checkpoints(tiny_run)
    assert plot_mode_heatmap(table, include_constant=True).axes[0].images[0].get_array().shape == (4, 5)


def test_mode_magnitudes_bar(tiny_run):
    fig = plot_mode_magnitudes(tiny_run.model())
    assert len(fig.axes[0].patches) == 4
    _renders(fig)
    assert len(plot_mode_magnitudes(torch.randn(9, 2), include_constant=False).axes[0].patches) == 4


def test_mode_circle_puts_a_clean_mode_on_a_circle():
    p, k = 13, 3
    fig = plot_mode_circle(HandClock(p, k), k)
    xy = fig.axes[0].collections[0].get_offsets()
    r = (xy**2).sum(axis=1) ** 0.5
    assert r.max() - r.min() < 1e-9  # a unit circle embedding lands on a circle
    assert len(fig.axes[0].texts) == p
    _renders(fig)
    with pytest.raises(ValueError, match="mode 0"):
        plot_mode_circle(HandClock(p, k), 0)
    with pytest.raises(TypeError, match="embed_matrix"):
        plot_mode_circle("not a model", 1)


def test_mode_ablation_plot(tiny_run):
    table = mode_ablation_table(tiny_run.model(), make_dataset(7))
    fig = plot_mode_ablation(table)
    assert len(fig.axes[0].patches) == 4
    _renders(fig)
