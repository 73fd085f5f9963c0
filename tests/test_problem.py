"""prepare/sample, keyword inputs, loss_fn, model modes, element masks, per-sample losses, loaders with generators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lambdahat import LLCConfig, LLCEstimator, prepare, sample
from lambdahat.problem import run_chains

QUIET = dict(show_progress=False, warn=False)


def regression(n=96, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.ones(d, 1) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def fitted_linear(x, y):
    model = nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        sol = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y).solution
        model.weight.copy_(sol[:-1].T)
        model.bias.copy_(sol[-1])
    return model


CFG = LLCConfig(draws=20, chains=3, burnin_steps=10, learning_rate=1e-4, localization=10.0)


def test_sample_on_prepared_problem_equals_estimator():
    x, y = regression()
    model, loader = fitted_linear(x, y), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    est = LLCEstimator(**{k: v for k, v in CFG.to_dict().items()})
    llcs = est.estimate_llc(
        model, loader, criterion_fn=F.mse_loss, seed=4, compile=False, show_progress=False
    )
    result = sample(prepare(model, loader, CFG, criterion_fn=F.mse_loss, compile=False), CFG, seed=4, **QUIET)
    assert torch.equal(llcs, result.llcs)
    assert result.settings["learning_rate"] == CFG.learning_rate


def test_one_problem_serves_many_configs_and_refuses_structural_changes():
    x, y = regression()
    problem = prepare(
        fitted_linear(x, y),
        DataLoader(TensorDataset(x, y), batch_size=32),
        CFG,
        criterion_fn=F.mse_loss,
        compile=False,
    )
    a = sample(problem, CFG, seed=1, **QUIET)
    b = sample(problem, CFG.replace(learning_rate=3e-4), seed=1, **QUIET)
    again = sample(problem, CFG, seed=1, **QUIET)
    assert torch.equal(a.llcs, again.llcs) and not torch.equal(a.llcs, b.llcs)
    with pytest.raises(ValueError, match="dtype: prepared"):
        sample(problem, CFG.replace(dtype="float64"), seed=1, **QUIET)
    with pytest.raises(ValueError, match="learning_rate='auto'"):
        run_chains(problem, CFG.replace(learning_rate="auto"), seed=1, **QUIET)


class MaskedMean(nn.Module):
    """A toy sequence model called with keyword inputs: per-token logits, used only where attention_mask is 1."""

    def __init__(self, vocab=7, width=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.out = nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.out(h)


def token_batches(seed=0, n=12, t=6, vocab=7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t) < lengths.unsqueeze(1)).long()
    labels = torch.where(
        mask.bool(), torch.randint(0, vocab, (n, t), generator=g), torch.full_like(ids, -100)
    )
    return [
        {"input_ids": ids[i : i + 4], "attention_mask": mask[i : i + 4], "labels": labels[i : i + 4]}
        for i in range(0, n, 4)
    ]


def lm_criterion(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def test_keyword_inputs_and_ignored_tokens_give_the_token_weighted_l0():
    model, batches = MaskedMean(), token_batches()
    unpack = lambda b: ({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"])  # noqa: E731
    problem = prepare(
        model, batches, CFG.replace(nbeta=10.0), criterion_fn=lm_criterion, unpack_fn=unpack, compile=False
    )
    with torch.no_grad():
        total = sum(
            F.cross_entropy(
                model(b["input_ids"], b["attention_mask"]).flatten(0, 1),
                b["labels"].flatten(),
                reduction="sum",
            )
            for b in batches
        )
        tokens = sum(int((b["labels"] != -100).sum()) for b in batches)
    assert problem.init_loss == pytest.approx(float(total) / tokens, rel=1e-6)
    # the batches hold different numbers of counted tokens, which is what the weighting is for
    assert len({int((b["labels"] != -100).sum()) for b in batches}) > 1


def test_a_run_that_stays_at_w_star_gives_zero_with_unequal_batches():
    """Draws weighted by counted tokens, like L0: with ε → 0 and whole passes, λ̂ is 0 up to rounding."""
    model, batches = MaskedMean(), token_batches(seed=3)
    unpack = lambda b: ({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"])  # noqa: E731
    cfg = LLCConfig(draws=6, chains=2, burnin_steps=3, learning_rate=1e-14, localization=1.0, nbeta=10.0)
    result = sample(
        prepare(model, batches, cfg, criterion_fn=lm_criterion, unpack_fn=unpack, compile=False),
        cfg,
        seed=0,
        **QUIET,
    )
    assert result.llcs.abs().max() < 1e-4
    unweighted = 10.0 * (result.losses.double().mean(1) - result.init_loss)
    assert unweighted.abs().max() > 1e-3  # a plain mean over batches would be biased


def per_token_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    losses = F.cross_entropy(logits.transpose(1, 2), batch["labels"].clamp(min=0), reduction="none")
    return losses, (batch["labels"] != -100)


def test_loss_fn_equals_the_criterion_path():
    model, batches = MaskedMean(), token_batches(seed=5)
    unpack = lambda b: ({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"])  # noqa: E731
    cfg = CFG.replace(nbeta=20.0)
    a = sample(
        prepare(model, batches, cfg, criterion_fn=lm_criterion, unpack_fn=unpack, compile=False),
        cfg,
        seed=2,
        **QUIET,
    )
    b = sample(prepare(model, batches, cfg, loss_fn=per_token_loss, compile=False), cfg, seed=2, **QUIET)
    assert a.init_loss == pytest.approx(b.init_loss, rel=1e-6)
    torch.testing.assert_close(a.llcs, b.llcs, rtol=1e-4, atol=1e-4)


def test_loss_fn_and_unpack_fn_together_is_an_error():
    with pytest.raises(ValueError, match="one of the two"):
        prepare(
            nn.Linear(2, 1),
            [(torch.ones(2, 2), torch.ones(2, 1))],
            loss_fn=lambda m, b: m(b[0]),
            unpack_fn=lambda b: b,
        )


def test_per_sample_losses_are_recorded_at_draws():
    x, y = regression()
    model = fitted_linear(x, y)
    evaluation = DataLoader(TensorDataset(x[:10], y[:10]), batch_size=4)
    cfg = CFG.replace(burnin_steps=0)
    problem = prepare(
        model,
        DataLoader(TensorDataset(x, y), batch_size=32),
        cfg,
        criterion_fn=F.mse_loss,
        compile=False,
        evaluation=evaluation,
    )
    result = sample(problem, cfg, seed=0, **QUIET)
    assert result.per_sample_losses.shape == (cfg.chains, cfg.draws, 10)
    with torch.no_grad():
        at_w_star = ((model(x[:10]) - y[:10]) ** 2).squeeze(1)
    # the first draw is taken at w* (before the first step)
    torch.testing.assert_close(result.per_sample_losses[:, 0], at_w_star.expand(cfg.chains, 10))
    assert not torch.equal(result.per_sample_losses[:, -1], result.per_sample_losses[:, 0])


def test_per_token_losses_are_nan_where_tokens_do_not_count():
    model, batches = MaskedMean(), token_batches(seed=1)
    cfg = CFG.replace(nbeta=5.0, draws=4, burnin_steps=0)
    result = sample(
        prepare(model, batches, cfg, loss_fn=per_token_loss, compile=False, evaluation=batches),
        cfg,
        seed=0,
        **QUIET,
    )
    labels = torch.cat([b["labels"] for b in batches])
    assert result.per_sample_losses.shape == (cfg.chains, cfg.draws, *labels.shape)
    assert torch.equal(torch.isnan(result.per_sample_losses[0, 0]), labels == -100)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(1.5))
        self.lin = nn.Linear(3, 1)

    def forward(self, x):
        return self.lin(x) * self.temperature


def test_zero_dimensional_parameters_work():
    x, y = regression(d=3)
    result = sample(
        prepare(
            Scaled(),
            DataLoader(TensorDataset(x, y), batch_size=32),
            CFG.replace(nbeta=10.0),
            criterion_fn=F.mse_loss,
            compile=False,
        ),
        CFG.replace(nbeta=10.0),
        seed=0,
        **QUIET,
    )
    assert result.settings["dim"] == 5 and torch.isfinite(result.llcs).all()


def test_element_masks_sample_only_the_masked_scalars():
    x, y = regression()
    model = fitted_linear(x, y)
    mask = torch.tensor([[True, False, True, False]])
    problem = prepare(
        model,
        DataLoader(TensorDataset(x, y), batch_size=32),
        CFG,
        criterion_fn=F.mse_loss,
        params={"weight": mask},
        compile=False,
    )
    fm = problem.slots[0]
    assert problem.dim == 2
    theta = fm.w_star + torch.tensor([1.0, -2.0])
    weight = fm.layout.unflatten(theta, fm.frozen)["weight"]
    assert torch.equal(weight[~mask], model.weight.detach()[~mask])  # bitwise at w*
    assert torch.equal(weight[mask], model.weight.detach()[mask] + torch.tensor([1.0, -2.0]))
    whole = sample(
        prepare(
            model,
            DataLoader(TensorDataset(x, y), batch_size=32),
            CFG,
            criterion_fn=F.mse_loss,
            params={"weight": torch.ones(1, 4, dtype=torch.bool)},
            compile=False,
        ),
        CFG,
        seed=0,
        **QUIET,
    )
    by_name = sample(
        prepare(
            model,
            DataLoader(TensorDataset(x, y), batch_size=32),
            CFG,
            criterion_fn=F.mse_loss,
            params="weight",
            compile=False,
        ),
        CFG,
        seed=0,
        **QUIET,
    )
    assert torch.equal(whole.llcs, by_name.llcs)
    assert math.isfinite(sample(problem, CFG, seed=0, **QUIET).llc_mean)


def test_a_mask_of_the_wrong_shape_says_what_to_pass():
    with pytest.raises(ValueError, match=r"shape \(1, 4\)"):
        prepare(
            nn.Linear(4, 1),
            [(torch.ones(2, 4), torch.ones(2, 1))],
            criterion_fn=F.mse_loss,
            params={"weight": torch.ones(4, dtype=torch.bool)},
        )


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1)
        )

    def forward(self, x):
        return self.net(x)


def test_train_mode_uses_dropout_and_batch_statistics_without_touching_the_model():
    x, y = regression()
    model = DropoutNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    cfg = CFG.replace(nbeta=20.0)
    eval_problem = prepare(model, loader, cfg, criterion_fn=F.mse_loss, compile=False)
    train_cfg = cfg.replace(model_mode="train")
    train_problem = prepare(model, loader, train_cfg, criterion_fn=F.mse_loss, compile=False)
    assert train_problem.init_loss != eval_problem.init_loss
    result = sample(train_problem, train_cfg, seed=0, **QUIET)
    assert torch.isfinite(result.llcs).all() and result.settings["model_mode"] == "train"
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_loaders_that_own_a_generator_reproduce_across_chain_batches_and_devices():
    x, y = regression()
    model = fitted_linear(x, y)
    gen = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=gen)
    state = gen.get_state()
    cfg = CFG.replace(chains=4)
    runs = [
        sample(
            prepare(model, loader, cfg, criterion_fn=F.mse_loss, compile=False, devices=devices),
            cfg,
            seed=3,
            chain_batch=chain_batch,
            **QUIET,
        ).llcs
        for chain_batch, devices in ((1, "cpu"), (None, "cpu"), (3, ["cpu", "cpu"]))
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert torch.equal(gen.get_state(), state)


class Reshuffling(Dataset):
    """A map-style dataset that picks its items with its own numpy RNG (randomness the library cannot seed)."""

    def __init__(self, x, y):
        self.x, self.y, self.rng = x, y, np.random.default_rng(0)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        j = int(self.rng.integers(len(self.x)))
        return self.x[j], self.y[j]


def test_a_loader_whose_passes_differ_is_reported():
    x, y = regression()
    loader = DataLoader(Reshuffling(x, y), batch_size=16)
    cfg = CFG.replace(chains=2)
    problem = prepare(fitted_linear(x, y), loader, cfg, criterion_fn=F.mse_loss, compile=False)
    with pytest.raises(ValueError, match="chain_batch"):
        sample(problem, cfg, seed=0, chain_batch=1, **QUIET)


def test_per_sample_losses_stream_to_disk_in_blocks(tmp_path, monkeypatch):
    import lambdahat.chains as chains_module

    monkeypatch.setattr(chains_module, "RECORD_BLOCK_BYTES", 3 * 4 * 10 * 7)  # blocks of 7 draws for 3 chains
    x, y = regression()
    cfg = CFG.replace(burnin_steps=0)
    evaluation = DataLoader(TensorDataset(x[:10], y[:10]), batch_size=4)
    problem = prepare(
        fitted_linear(x, y),
        DataLoader(TensorDataset(x, y), batch_size=32),
        cfg,
        criterion_fn=F.mse_loss,
        compile=False,
        evaluation=evaluation,
    )
    in_memory = sample(problem, cfg, seed=0, chain_batch=2, **QUIET)
    path = tmp_path / "losses.npy"
    on_disk = sample(problem, cfg, seed=0, chain_batch=2, per_sample_path=path, **QUIET)
    assert torch.equal(in_memory.per_sample_losses, on_disk.per_sample_losses)
    assert not torch.isnan(in_memory.per_sample_losses).any()
    assert np.load(path, mmap_mode="r").shape == (cfg.chains, cfg.draws, 10)


def test_runs_with_other_seeds_and_observables_on_one_problem_are_not_mistaken_for_changing_data():
    x, y = regression()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    other = DataLoader(TensorDataset(x.flip(0), y.flip(0)), batch_size=16, shuffle=True)
    problem = prepare(
        fitted_linear(x, y), loader, CFG, criterion_fn=F.mse_loss, observables=other, compile=False
    )
    for seed in (0, 1, 0):
        assert math.isfinite(sample(problem, CFG, seed=seed, chain_batch=1, **QUIET).llc_mean)


def test_gradient_accumulation_equals_one_batch_of_all_the_micro_batches():
    """k = 2 micro-batches of 16 against one batch of 32 (same samples per step, same seed): the same chains up to
    float rounding (the mean of two half-batch means against one mean)."""
    x, y = regression(n=96)
    model = fitted_linear(x, y)
    big = CFG.replace(dtype="float64")
    accumulated = big.replace(grad_accum_steps=2)
    one = sample(
        prepare(
            model, DataLoader(TensorDataset(x, y), batch_size=32), big, criterion_fn=F.mse_loss, compile=False
        ),
        big,
        seed=5,
        **QUIET,
    )
    two = sample(
        prepare(
            model,
            DataLoader(TensorDataset(x, y), batch_size=16),
            accumulated,
            criterion_fn=F.mse_loss,
            compile=False,
        ),
        accumulated,
        seed=5,
        **QUIET,
    )
    assert one.init_loss == pytest.approx(two.init_loss, rel=1e-12)
    torch.testing.assert_close(two.losses, one.losses, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(two.llcs, one.llcs, rtol=1e-9, atol=1e-9)
    assert two.settings["grad_accum_steps"] == 2
