"""Joint-training strategies: Eq. 12 (MGDA), Eq. 13 (scheduler) and Algorithm 1."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from dynapp.joint import (
    ALPHA_WHEN_EQUAL,
    MGDA,
    NORMALIZATIONS,
    SENER_KOLTUN_CLAMP,
    MGDAUB,
    STRATEGIES,
    Constant,
    MGDAState,
    Phase,
    Plain,
    Scheduler,
    Separate,
    build_strategy,
    combine_theta1_grads,
    gradient_normalizer,
    gram,
    mgda_alpha,
    min_norm_alpha,
    normalized_mgda_alpha,
    scheduler_alpha,
    theta1_parameters,
)


def _grid_minimiser(g1: torch.Tensor, g2: torch.Tensor) -> float:
    grid = torch.linspace(0, 1, 100001, dtype=torch.float64)
    g1, g2 = g1.double(), g2.double()
    # ||a g1 + (1-a) g2||^2 for every a on the grid, without materialising the vectors
    d = g1 - g2
    values = grid**2 * d.dot(d) + 2 * grid * d.dot(g2) + g2.dot(g2)
    return float(grid[values.argmin()])


@pytest.mark.parametrize("seed", range(6))
def test_mgda_alpha_matches_grid_minimiser(seed):
    gen = torch.Generator().manual_seed(seed)
    g1 = torch.randn(50, generator=gen)
    g2 = torch.randn(50, generator=gen) + 0.3 * g1
    assert mgda_alpha(g1, g2) == pytest.approx(_grid_minimiser(g1, g2), abs=2e-5)


def test_mgda_alpha_interior_solution_is_not_a_clip():
    g1 = torch.tensor([1.0, 0.0])
    g2 = torch.tensor([0.0, 1.0])
    # orthogonal equal-norm gradients: the min-norm point is the midpoint
    assert mgda_alpha(g1, g2) == pytest.approx(0.5)
    assert _grid_minimiser(g1, g2) == pytest.approx(0.5, abs=1e-5)


def test_mgda_alpha_clips_at_one_and_zero():
    g1 = torch.tensor([1.0, 0.0])
    g2 = torch.tensor([3.0, 0.0])  # unclipped alpha' = (2*3)/4 = 1.5 -> 1
    assert mgda_alpha(g1, g2) == 1.0
    assert _grid_minimiser(g1, g2) == 1.0
    # swapped: alpha' = (1-3)*1/4 = -0.5 -> 0
    assert mgda_alpha(g2, g1) == 0.0
    assert _grid_minimiser(g2, g1) == 0.0


def test_mgda_alpha_equal_gradients():
    g = torch.randn(30)
    assert mgda_alpha(g, g.clone()) == ALPHA_WHEN_EQUAL
    assert mgda_alpha(torch.zeros(5), torch.zeros(5)) == ALPHA_WHEN_EQUAL


def test_mgda_alpha_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="same number"):
        mgda_alpha(torch.zeros(3), torch.zeros(4))


def test_mgda_alpha_is_scale_invariant():
    gen = torch.Generator().manual_seed(3)
    g1, g2 = torch.randn(20, generator=gen), torch.randn(20, generator=gen)
    assert mgda_alpha(g1 * 1024, g2 * 1024) == pytest.approx(mgda_alpha(g1, g2), abs=1e-12)


@pytest.mark.parametrize("gamma,lam", [(0.1, 0.1), (0.2, 0.1), (0.2, 0.3), (0.5, 0.3)])
def test_scheduler_values_and_monotone(gamma, lam):
    M = 1000
    assert scheduler_alpha(1, M, gamma=gamma, lam=lam) == pytest.approx(1.0)
    knee = round(gamma * M)
    assert scheduler_alpha(knee, M, gamma=gamma, lam=lam) == pytest.approx(lam)
    # continuity at the knee from below
    assert scheduler_alpha(knee - 1, M, gamma=gamma, lam=lam) == pytest.approx(lam, abs=0.02)
    assert scheduler_alpha(M, M, gamma=gamma, lam=lam) == pytest.approx(0.0, abs=1e-12)
    values = [scheduler_alpha(m, M, gamma=gamma, lam=lam) for m in range(1, M + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    assert all(0.0 <= v <= 1.0 for v in values)


def test_scheduler_formula_midpoints():
    # hand evaluation of the two branches of Eq. 13 at one point each
    M, gamma, lam = 100, 0.2, 0.3
    m = 5
    expected = 0.5 * (1 + math.cos(math.acos(2 * lam - 1) * math.log(5) / math.log(20)))
    assert scheduler_alpha(m, M, gamma=gamma, lam=lam) == pytest.approx(expected)
    m = 50
    expected = lam / 2 * (1 + math.cos(math.pi * math.log(50 - 20 + 1) / math.log(80 + 1)))
    assert scheduler_alpha(m, M, gamma=gamma, lam=lam) == pytest.approx(expected)


def test_scheduler_rejects_bad_parameters():
    with pytest.raises(ValueError, match="gamma"):
        scheduler_alpha(1, 10, gamma=1.5, lam=0.1)
    with pytest.raises(ValueError, match="lambda"):
        scheduler_alpha(1, 10, gamma=0.5, lam=0.0)


def test_weighted_alpha():
    assert build_strategy("constant", [], total_steps=10, alpha=0.9, gamma=0.2, lam=0.1).alpha_at(7) == 0.9
    assert build_strategy("scheduler", [], total_steps=10, alpha=0.0, gamma=0.2, lam=0.1).alpha_at(0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        build_strategy("constant", [], total_steps=10, alpha=1.5, gamma=0.2, lam=0.1).alpha_at(0)


class _ToyRep(nn.Module):
    """A tiny 'representation': frames = w * x, aux loss = ||x - w x||^2-like, Theta1 = w."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.7, -0.4]))


class _ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.representation = _ToyRep()
        self.head = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.5, 1.5]]))

    def forward(self, x):  # x (N, 2)
        h = x * self.representation.w
        aux = ((x - h) ** 2).sum(1).mean()
        out = self.head(h).squeeze(1)
        return out, aux


def test_algorithm1_update_matches_hand_computation():
    torch.manual_seed(0)
    model = _ToyModel()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, 0.3]])
    y = torch.tensor([1.0, -2.0, 0.0])
    w = model.representation.w.detach().clone()
    v = model.head.weight.detach().clone().reshape(-1)

    theta1 = theta1_parameters(model)
    assert len(theta1) == 1
    mgda = MGDA(theta1)
    state = mgda.state
    out, aux = model(x)
    rec = ((out - y) ** 2).mean()
    mgda.backward(rec, aux, step=0)
    alpha = combine_theta1_grads(theta1, state)

    # hand computation: aux = mean_n sum_k x_nk^2 (1 - w_k)^2 ; rec = mean_n (sum_k v_k w_k x_nk - y_n)^2
    g1 = (-2 * (1 - w) * (x**2)).mean(0)
    r = (x * w * v).sum(1) - y
    g2 = (2 * r[:, None] * v * x).mean(0)
    g_head = (2 * r[:, None] * w * x).mean(0)
    d = g1 - g2
    a = float(((g2 - g1) @ g2) / (d @ d))
    a = min(max(a, 0.0), 1.0)
    assert alpha == pytest.approx(a, abs=1e-6)
    assert torch.allclose(model.representation.w.grad, a * g1 + (1 - a) * g2, atol=1e-6)
    # Theta2 follows the plain gradient of the recognition loss (Algorithm 1 line 6)
    assert torch.allclose(model.head.weight.grad.reshape(-1), g_head, atol=1e-6)
    # and the SGD step of Algorithm 1
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.step()
    assert torch.allclose(model.representation.w, w - lr * (a * g1 + (1 - a) * g2), atol=1e-6)
    assert torch.allclose(model.head.weight.reshape(-1), v - lr * g_head, atol=1e-6)
    assert state.g1 is None


def test_mgda_accumulation_equals_full_batch():
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, generator=torch.Generator().manual_seed(2))
    grads = []
    alphas = []
    for chunks in (1, 2):
        model = _ToyModel()
        theta1 = theta1_parameters(model)
        mgda = MGDA(theta1)
        state = mgda.state
        for xb, yb in zip(x.chunk(chunks), y.chunk(chunks)):
            out, aux = model(xb)
            mgda.backward(((out - yb) ** 2).mean(), aux, step=0, divide=chunks)
        alphas.append(combine_theta1_grads(theta1, state))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert alphas[0] == pytest.approx(alphas[1], abs=1e-6)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_constant_strategy_is_weighted_objective():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    y = torch.randn(4, generator=torch.Generator().manual_seed(6))
    model, ref = _ToyModel(), _ToyModel()
    out, aux = model(x)
    constant = Constant(theta1_parameters(model), alpha=0.25)
    constant.backward(((out - y) ** 2).mean(), aux, step=0)
    assert constant.after_backward() == 0.25  # the step's end fixes Theta1's gradient
    out, aux = ref(x)
    (0.25 * aux + 0.75 * ((out - y) ** 2).mean()).backward()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad)


def test_no_aux_loss_is_plain_backward():
    model = _ToyModel()
    x = torch.randn(4, 2)
    out, _ = model(x)
    MGDA(theta1_parameters(model)).backward(out.pow(2).mean(), None, step=0)
    assert model.head.weight.grad is not None


# ---- MGDA with Sener and Koltun's gradient normalisation ----


def _by_hand_normaliser(g: torch.Tensor, loss: float, normalize: str) -> float:
    norm = float(g.double().norm())
    return {"none": 1.0, "l2": norm, "loss": loss, "loss+": loss * norm}[normalize]


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("seed", range(3))
def test_normalized_alpha_is_min_norm_point_of_normalized_gradients(normalize, seed):
    gen = torch.Generator().manual_seed(seed)
    g1 = 50.0 * torch.randn(40, generator=gen)  # very different scales: normalisation matters
    g2 = 0.2 * torch.randn(40, generator=gen) + 0.01 * g1
    l1, l2 = 0.03, 2.5
    n1, n2 = _by_hand_normaliser(g1, l1, normalize), _by_hand_normaliser(g2, l2, normalize)
    expected = _grid_minimiser(g1.double() / n1, g2.double() / n2)
    alpha = normalized_mgda_alpha(g1, g2, normalize=normalize, l1=l1, l2=l2)
    assert alpha == pytest.approx(expected, abs=2e-5)
    assert gradient_normalizer(g1, l1, normalize) == pytest.approx(n1)
    if normalize == "none":
        assert alpha == mgda_alpha(g1, g2)


def test_l2_normalisation_balances_gradients_of_different_scale():
    g1, g2 = torch.tensor([100.0, 0.0]), torch.tensor([0.0, 1.0])
    assert mgda_alpha(g1, g2) < 1e-3  # Eq. 12 follows the small gradient almost entirely
    assert normalized_mgda_alpha(g1, g2, normalize="l2") == pytest.approx(0.5)  # equal after normalising


def test_zero_gradient_normaliser_is_one_and_bad_mode_rejected():
    assert gradient_normalizer(torch.zeros(3), 0.5, "l2") == 1.0
    assert gradient_normalizer(torch.ones(3), 0.0, "loss") == 1.0
    with pytest.raises(ValueError, match="normalize"):
        gradient_normalizer(torch.ones(3), 1.0, "max")
    with pytest.raises(ValueError, match="normalize"):
        combine_theta1_grads([nn.Parameter(torch.ones(1))], _state_with_g1(), normalize="max")


def _state_with_g1() -> MGDAState:
    p = nn.Parameter(torch.ones(1))
    state = MGDAState([p])
    state.add([torch.ones(1)])
    return state


def _toy_step(model, x, y, chunks=1):
    theta1 = theta1_parameters(model)
    mgda = MGDA(theta1)
    for xb, yb in zip(x.chunk(chunks), y.chunk(chunks)):
        out, aux = model(xb)
        mgda.backward(((out - yb) ** 2).mean(), aux, step=0, divide=chunks)
    return theta1, mgda.state


@pytest.mark.parametrize("normalize", ["l2", "loss", "loss+"])
def test_normalized_mgda_steps_on_unnormalized_combination(normalize):
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(7))
    y = 3.0 * torch.randn(6, generator=torch.Generator().manual_seed(8))
    model = _ToyModel()
    w = model.representation.w.detach().clone()
    v = model.head.weight.detach().clone().reshape(-1)
    theta1, state = _toy_step(model, x, y)
    alpha = combine_theta1_grads(theta1, state, normalize=normalize)
    # by hand (see test_algorithm1_update_matches_hand_computation): gradients and loss values
    g1 = (-2 * (1 - w) * (x**2)).mean(0)
    r = (x * w * v).sum(1) - y
    g2 = (2 * r[:, None] * v * x).mean(0)
    l1, l2 = float(((x - x * w) ** 2).sum(1).mean()), float((r**2).mean())
    n1, n2 = _by_hand_normaliser(g1, l1, normalize), _by_hand_normaliser(g2, l2, normalize)
    a = _grid_minimiser(g1.double() / n1, g2.double() / n2)
    assert alpha == pytest.approx(a, abs=2e-5)
    assert abs(alpha - mgda_alpha(g1, g2)) > 1e-3  # the normalisation changed alpha here
    # Theta1 steps along the combination of the raw gradients (Sener and Koltun's code)
    assert torch.allclose(model.representation.w.grad, alpha * g1 + (1 - alpha) * g2, atol=1e-5)
    assert state.losses is None and state.g1 is None


@pytest.mark.parametrize("normalize", ["loss", "loss+"])
def test_normalized_mgda_accumulation_equals_full_batch(normalize):
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, generator=torch.Generator().manual_seed(2))
    alphas = []
    for chunks in (1, 2, 4):
        model = _ToyModel()
        theta1, state = _toy_step(model, x, y, chunks)
        alphas.append(combine_theta1_grads(theta1, state, normalize=normalize))
    assert alphas[1] == pytest.approx(alphas[0], abs=1e-6) and alphas[2] == pytest.approx(alphas[0], abs=1e-6)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_normalized_mgda_averages_losses_over_processes(normalize):
    # two simulated processes on two halves of a batch: DDP averages g2 in .grad; the reducer
    # given to combine_theta1_grads averages g1 (float32) and the loss values (float64)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    y = 4.0 * torch.randn(8, generator=torch.Generator().manual_seed(4))
    models = [_ToyModel(), _ToyModel()]
    steps = [_toy_step(m, xb, yb) for m, xb, yb in zip(models, x.chunk(2), y.chunk(2))]
    (theta_a, state_a), (theta_b, state_b) = steps
    peer = {torch.float32: torch.cat([g.reshape(-1) for g in state_b.g1]), torch.float64: state_b.losses.clone()}
    g1_mean = (torch.cat([g.reshape(-1) for g in state_a.g1]) + peer[torch.float32]) / 2
    l_mean = (state_a.losses + peer[torch.float64]) / 2
    g2_mean = (theta_a[0].grad + theta_b[0].grad) / 2
    theta_a[0].grad = g2_mean.clone()
    reduced = []

    def reducer(t):
        reduced.append(t.dtype)
        return (t + peer[t.dtype]) / 2

    alpha = combine_theta1_grads(theta_a, state_a, all_reduce_mean=reducer, normalize=normalize)
    n1 = _by_hand_normaliser(g1_mean, float(l_mean[0]), normalize)
    n2 = _by_hand_normaliser(g2_mean, float(l_mean[1]), normalize)
    assert alpha == pytest.approx(_grid_minimiser(g1_mean.double() / n1, g2_mean.double() / n2), abs=2e-5)
    assert (torch.float64 in reduced) == (normalize in ("loss", "loss+"))  # no extra all-reduce otherwise


# ---- the strategies as objects ----


def test_strategies_dict_is_the_one_list_config_and_train_read(monkeypatch, tmp_path):
    from dynapp.config import ConfigError, load_config
    from dynapp.engine.run import run_from_config

    assert list(STRATEGIES) == ["mgda", "mgda_ub", "constant", "scheduler", "separate"]
    with pytest.raises(ConfigError, match="expected mgda, mgda_ub, constant, scheduler, separate, got 'magic'"):
        load_config(None, ["joint.strategy=magic"])

    class Half(Constant):  # a new strategy: one class and one dict entry, nothing else
        def __init__(self, theta1, **options):
            super().__init__(theta1, alpha=0.5)

    monkeypatch.setitem(STRATEGIES, "half", Half)
    cfg = load_config(None, ["joint.strategy=half", "data.dataset=random", "data.segments=2", "data.frames=4",
                             "data.crop_size=32", "data.num_samples=4", "data.num_workers=0", "model.backbone=small2d",
                             "model.backbone_kwargs.widths=[8,8,8,8]", "optim.batch_size=2", "optim.epochs=1",
                             "log.tensorboard=false", "log.progress=false", "eval.every_epochs=0",
                             "checkpoint.enabled=false", f"log.out_dir={tmp_path}"])
    run_from_config(cfg)
    with open(tmp_path / "train_log.csv", newline="") as f:
        alphas = [float(r["alpha"]) for r in csv.DictReader(f)]
    assert alphas == [0.5, 0.5]


def test_build_strategy_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown joint strategy 'magic'; choose from mgda, mgda_ub, constant"):
        build_strategy("magic", [], total_steps=1)


def test_plain_and_weighted_without_theta1():
    model = _ToyModel()
    out, _ = model(torch.randn(3, 2))
    plain = Plain()
    plain.backward(out.pow(2).mean(), None, step=0)
    assert math.isnan(plain.after_backward()) and plain.phase(0) == Phase()
    assert model.head.weight.grad is not None
    assert math.isnan(MGDA([]).after_backward())  # nothing to combine: plain training, no alpha


def test_separate_phases_and_frozen_theta1():
    model = _ToyModel()
    theta1 = theta1_parameters(model)
    sep = build_strategy("separate", theta1, total_steps=4, separate_epochs=2)
    assert isinstance(sep, Separate)
    assert sep.phase(0) == sep.phase(1) == Phase(run_backbone=False, train_theta1=True)
    assert sep.phase(2) == Phase(run_backbone=True, train_theta1=False)
    x = torch.randn(4, 2)
    out, aux = model(x)
    sep.backward(None, aux, step=0, divide=2)  # PWTP's phase: L1 alone, no recognition loss
    assert sep.after_backward() == 1.0
    expected = torch.autograd.grad(model(x)[1] / 2, theta1)[0]
    assert torch.allclose(model.representation.w.grad, expected) and model.head.weight.grad is None
    model.zero_grad(set_to_none=True)
    out, aux = model(x)
    sep.backward(out.pow(2).mean(), aux, step=1)  # the recogniser's phase: L2, Theta1 frozen
    assert sep.after_backward() == 0.0
    assert model.representation.w.grad is None and model.head.weight.grad is not None
    with pytest.raises(ValueError, match="separate needs a representation with parameters"):
        build_strategy("separate", [], total_steps=4)


def test_scheduler_object_follows_eq13():
    sched = build_strategy("scheduler", [], total_steps=50, gamma=0.2, lam=0.3)
    assert isinstance(sched, Scheduler)
    assert [sched.alpha_at(s) for s in range(50)] == [scheduler_alpha(m, 50, gamma=0.2, lam=0.3) for m in range(1, 51)]
    with pytest.raises(ValueError, match="gamma"):
        build_strategy("scheduler", [], total_steps=50, gamma=1.5)


# ---- MGDA-UB on the hyperplanes, the full backbone gradient, the gradient statistics ----


def _brute_force_min_norm(u: torch.Tensor, v: torch.Tensor, clamp=(0.0, 1.0)) -> float:
    """argmin over a 1e-5 grid of ||a u + (1 - a) v||, the vectors built for every a, then clamped."""
    grid = torch.linspace(0, 1, 100001, dtype=torch.float64)
    u, v = u.reshape(-1).double(), v.reshape(-1).double()
    norms = torch.stack([(a * u + (1 - a) * v).norm() for a in grid[::100]])  # coarse pass on the real vectors
    centre = int(norms.argmin()) * 100
    fine = grid[max(centre - 100, 0): centre + 101]
    norms = torch.stack([(a * u + (1 - a) * v).norm() for a in fine])
    return min(max(float(fine[norms.argmin()]), clamp[0]), clamp[1])


class _ToyUB(_ToyModel):
    """The toy with its shared representation h = w * x exposed (both losses see w only through h)."""

    def forward(self, x):
        h = x * self.representation.w
        return self.head(h).squeeze(1), ((x - h) ** 2).sum(1).mean(), h


def _ub_normalised(g1z, g2z, l1, l2, normalize):
    return g1z / _by_hand_normaliser(g1z, l1, normalize), g2z / _by_hand_normaliser(g2z, l2, normalize)


@pytest.mark.parametrize("normalize", ["none", "loss", "loss+"])
@pytest.mark.parametrize("seed", range(3))
def test_mgda_ub_alpha_is_brute_force_min_norm_of_hyperplane_gradients(normalize, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 2, generator=gen)
    y = 3.0 * torch.randn(6, generator=gen)
    model = _ToyUB()
    out, aux, h = model(x)
    rec = ((out - y) ** 2).mean()
    g1z, g2z = (torch.autograd.grad(loss, h, retain_graph=True)[0] for loss in (aux, rec))
    g1, g2 = (torch.autograd.grad(loss, model.representation.w, retain_graph=True)[0] for loss in (aux, rec))
    g_head = torch.autograd.grad(rec, model.head.weight, retain_graph=True)[0]
    expected = _brute_force_min_norm(*_ub_normalised(g1z, g2z, float(aux.detach()), float(rec.detach()), normalize),
                                     clamp=SENER_KOLTUN_CLAMP)
    ub = build_strategy("mgda_ub", theta1_parameters(model), total_steps=1, normalize=normalize)
    ub.backward(rec, aux, step=0, hyperplanes=h)
    alpha = ub.after_backward()
    assert alpha == pytest.approx(expected, abs=2e-5)
    # the step: Theta1 along alpha g1 + (1 - alpha) g2 (parameter gradients), Theta2 along grad L2
    assert torch.allclose(model.representation.w.grad, alpha * g1 + (1 - alpha) * g2, atol=1e-5)
    assert torch.allclose(model.head.weight.grad, g_head, atol=1e-6)
    # and it is not Eq. 12 on the parameter gradients (the case where the two differ)
    if normalize == "none":
        assert abs(alpha - mgda_alpha(g1, g2)) > 1e-3


def test_mgda_ub_clamps_like_sener_and_koltun_and_sums_micro_batches():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0])  # Eq. 12 gives 1 and 0 here
    assert min_norm_alpha(*gram(g1, g2).tolist(), clamp=SENER_KOLTUN_CLAMP) == 0.999
    assert min_norm_alpha(*gram(g2, g1).tolist(), clamp=SENER_KOLTUN_CLAMP) == 0.001
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(11))
    y = torch.randn(8, generator=torch.Generator().manual_seed(12))
    alphas, grads = [], []
    for chunks in (1, 2, 4):
        model = _ToyUB()
        ub = MGDAUB(theta1_parameters(model), normalize="loss+")
        for xb, yb in zip(x.chunk(chunks), y.chunk(chunks)):
            out, aux, h = model(xb)
            ub.backward(((out - yb) ** 2).mean(), aux, step=0, divide=chunks, hyperplanes=h)
        alphas.append(ub.after_backward())
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert alphas[1] == pytest.approx(alphas[0], abs=1e-6) and alphas[2] == pytest.approx(alphas[0], abs=1e-6)
    assert torch.allclose(grads[1], grads[0], atol=1e-6) and torch.allclose(grads[2], grads[0], atol=1e-6)


def test_mgda_ub_without_hyperplanes_is_a_clear_error():
    model = _ToyUB()
    out, aux, _ = model(torch.randn(3, 2))
    with pytest.raises(ValueError, match="mgda_ub needs a representation that returns its hyperplanes"):
        MGDAUB(theta1_parameters(model)).backward(out.pow(2).mean(), aux, step=0)


def test_mgda_ub_on_pwtp_uses_the_mlp_output_of_the_training_forward():
    from dynapp.model import build_model

    torch.manual_seed(0)
    model = build_model(representation="pwtp", backbone="small2d", num_classes=3, segments=2, frames=4,
                        dropout=0.0, backbone_kwargs={"widths": [8, 8, 8, 8]}).eval()  # eval: no BatchNorm batch effects
    clip = torch.randn(2, 3, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    label = torch.tensor([0, 2])
    out = model(clip)
    assert out.hyperplanes.shape == (4, 4, 2, 2)  # (N*S, T*D, h, w) at stride 8
    rec = torch.nn.functional.cross_entropy(out.logits, label)
    g1z, g2z = (torch.autograd.grad(loss, out.hyperplanes, retain_graph=True)[0] for loss in (out.aux_loss, rec))
    expected = _brute_force_min_norm(*_ub_normalised(g1z, g2z, float(out.aux_loss.detach()), float(rec.detach()), "loss+"),
                                     clamp=SENER_KOLTUN_CLAMP)
    ub = MGDAUB(theta1_parameters(model), normalize="loss+")
    ub.backward(rec, out.aux_loss, step=0, hyperplanes=out.hyperplanes)
    assert ub.after_backward() == pytest.approx(expected, abs=2e-5)


@pytest.mark.parametrize("strategy", ["constant", "scheduler"])
def test_full_backbone_gradient_gives_the_backbone_exactly_grad_l2(strategy):
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(21))
    y = torch.randn(5, generator=torch.Generator().manual_seed(22))
    grads = {}
    for backbone_grad in ("full", "weighted"):
        model = _ToyModel()
        out, aux = model(x)
        rec = ((out - y) ** 2).mean()
        g1, g2 = (torch.autograd.grad(loss, model.representation.w, retain_graph=True)[0] for loss in (aux, rec))
        g_head = torch.autograd.grad(rec, model.head.weight, retain_graph=True)[0]
        s = build_strategy(strategy, theta1_parameters(model), total_steps=10, alpha=0.3, gamma=0.5, lam=0.3,
                           backbone_grad=backbone_grad)
        s.backward(rec, aux, step=6, divide=1)
        alpha = s.after_backward()
        assert alpha == pytest.approx(0.3 if strategy == "constant" else scheduler_alpha(7, 10, gamma=0.5, lam=0.3))
        assert 0.0 < alpha < 1.0
        assert torch.allclose(model.representation.w.grad, alpha * g1 + (1 - alpha) * g2, atol=1e-6)
        factor = 1.0 if backbone_grad == "full" else 1.0 - alpha  # Algorithm 1 line 6, or Eq. 9 literally
        assert torch.allclose(model.head.weight.grad, factor * g_head, atol=1e-7)
        grads[backbone_grad] = model.head.weight.grad.clone()
    assert not torch.allclose(grads["full"], grads["weighted"])
    with pytest.raises(ValueError, match="backbone_grad"):
        build_strategy("constant", [], total_steps=1, backbone_grad="half")


def test_gradient_statistics_of_a_step_are_unscaled_and_exact():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(31))
    y = torch.randn(4, generator=torch.Generator().manual_seed(32))
    for name in ("mgda", "mgda_ub", "constant"):
        model = _ToyUB()
        out, aux, h = model(x)
        rec = ((out - y) ** 2).mean()
        g1, g2 = (torch.autograd.grad(loss, model.representation.w, retain_graph=True)[0] for loss in (aux, rec))
        s = build_strategy(name, theta1_parameters(model), total_steps=1, alpha=0.5)
        s.backward(rec, aux, step=0, scale=lambda t: 1024.0 * t, hyperplanes=h)  # as a GradScaler would
        s.after_backward()
        assert s.stats["g1_norm"] == pytest.approx(float(g1.norm()), rel=1e-5)
        assert s.stats["g2_norm"] == pytest.approx(float(g2.norm()), rel=1e-5)
        assert s.stats["g_cos"] == pytest.approx(float(g1 @ g2 / (g1.norm() * g2.norm())), abs=1e-6)
    assert Plain().stats == {}


def test_l2_normalisation_is_constant_half_and_says_so():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(41))
    y = 5.0 * torch.randn(4, generator=torch.Generator().manual_seed(42))
    grads = []
    for name, options in (("mgda", {"normalize": "l2"}), ("constant", {"alpha": 0.5, "backbone_grad": "full"})):
        model = _ToyModel()
        if name == "mgda":
            with pytest.warns(UserWarning, match="joint.strategy=constant joint.alpha=0.5 joint.backbone_grad=full"):
                s = build_strategy(name, theta1_parameters(model), total_steps=1, **options)
        else:
            s = build_strategy(name, theta1_parameters(model), total_steps=1, **options)
        out, aux = model(x)
        s.backward(((out - y) ** 2).mean(), aux, step=0)
        assert s.after_backward() == pytest.approx(0.5, abs=1e-12)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)  # the same update


def test_backbone_grad_is_validated_and_defaults_to_full():
    from dynapp.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="joint.backbone_grad: expected weighted, full, got 'half'"):
        load_config(None, ["joint.backbone_grad=half"])
    # the default strategy (constant 0.5, the rule of docs/joint.md) puts the backbone on the full grad L2
    default = load_config(None, []).joint
    assert (default.strategy, default.alpha, default.backbone_grad) == ("constant", 0.5, "full")
    assert load_config(None, ["joint.backbone_grad=weighted"]).joint.backbone_grad == "weighted"  # Eq. 9 as written
    assert load_config(None, ["joint.strategy=mgda_ub", "joint.normalize=loss+"]).joint.strategy == "mgda_ub"
