"""Natural-gradient machinery against explicit matrices: Fisher-vector products, conjugate
gradient, the natural-gradient step, the KL line search and K-FAC; FlatAdam and FusedAdam
against PyTorch's clipping and Adam, bit for bit."""

import copy
import io

import gymnasium as gym
import pytest
import torch

from policyopt.algos.trpo import TRPO
from policyopt.core.distributions import Categorical
from policyopt.core.nets import ActorCritic, dist_under
from policyopt.core.optim import (
    KFAC,
    FlatAdam,
    FusedAdam,
    adam,
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    flat_params,
    gradient_step,
    natural_gradient_step,
    polyak_update,
    set_lr,
    target_copy,
)
from policyopt.loops import make_runner

OBS_DIM, N_STATES = 3, 16


def small_policy(action_space: gym.Space, kind: str = "auto") -> ActorCritic:
    torch.manual_seed(0)
    policy = ActorCritic(OBS_DIM, action_space, hidden_sizes=(4,), policy=kind, value_head=False).double()
    for p in policy.parameters():  # move away from the tiny output-layer init so F is well conditioned
        torch.nn.init.normal_(p, std=0.7)
    return policy


def states() -> torch.Tensor:
    return torch.randn(N_STATES, OBS_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def jacobian(output: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """[len(output), n_params] Jacobian of a flat output vector."""
    return torch.stack([flat_grad(o, params, retain_graph=True) for o in output.reshape(-1)])


def categorical_fisher(policy: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
    """F = mean_s sum_a pi(a|s) grad log pi(a|s) grad log pi(a|s)^T, the expectation over actions exact."""
    params = policy.actor_parameters()
    n = sum(p.numel() for p in params)
    fisher = torch.zeros(n, n, dtype=torch.float64)
    for s in obs:
        logp = policy.dist(s.unsqueeze(0)).logits[0]
        J = jacobian(logp, params)
        fisher += J.T @ torch.diag(logp.exp().detach()) @ J
    return fisher / len(obs)


def gaussian_fisher(policy: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
    """F = mean_s [J_mean^T diag(1 / std^2) J_mean + 2 J_logstd^T J_logstd], the closed form of N(mean, std^2)."""
    params = policy.actor_parameters()
    n = sum(p.numel() for p in params)
    fisher = torch.zeros(n, n, dtype=torch.float64)
    for s in obs:
        dist = policy.dist(s.unsqueeze(0))
        J_mean, J_log_std = jacobian(dist.mean, params), jacobian(dist.log_std, params)
        fisher += J_mean.T @ torch.diag(dist.std[0].detach().pow(-2)) @ J_mean + 2.0 * J_log_std.T @ J_log_std
    return fisher / len(obs)


def beta_fisher(policy: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
    """F = mean_s J^T I(alpha, beta) J, with the closed-form Fisher of Beta(alpha, beta) per action dim:

        I = [[psi1(alpha) - psi1(alpha + beta), -psi1(alpha + beta)],
             [-psi1(alpha + beta),              psi1(beta) - psi1(alpha + beta)]]

    (psi1 the trigamma function; the affine map onto the action bounds does not change it).
    """
    params = policy.actor_parameters()
    n = sum(p.numel() for p in params)
    fisher = torch.zeros(n, n, dtype=torch.float64)
    for s in obs:
        dist = policy.dist(s.unsqueeze(0))
        for a, b in zip(dist.alpha[0], dist.beta[0]):
            J = jacobian(torch.stack([a, b]), params)
            a, b = a.detach(), b.detach()
            both = torch.polygamma(1, a + b)
            info = torch.stack([torch.stack([torch.polygamma(1, a) - both, -both]), torch.stack([-both, torch.polygamma(1, b) - both])])
            fisher += J.T @ info @ J
    return fisher / len(obs)


def kl_gradient(policy: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
    old = {k: v.detach().clone() for k, v in policy.named_parameters()}
    with torch.no_grad():
        old_dist = dist_under(policy, old, obs)
    mean_kl = old_dist.kl(policy.dist(obs)).mean()
    return flat_grad(mean_kl, policy.actor_parameters(), create_graph=True)


SPACES = {
    "categorical": (gym.spaces.Discrete(3), "auto", categorical_fisher),
    "gaussian": (gym.spaces.Box(-1.0, 1.0, (2,)), "gaussian", gaussian_fisher),
    "beta": (gym.spaces.Box(-2.0, 2.0, (2,)), "beta", beta_fisher),
}


@pytest.mark.parametrize("kind", SPACES)
def test_fisher_vector_product_matches_the_explicit_fisher(kind):
    space, policy_kind, explicit = SPACES[kind]
    policy, obs = small_policy(space, policy_kind), states()
    params = policy.actor_parameters()
    fisher = explicit(policy, obs)
    kl_grad = kl_gradient(policy, obs)
    v = torch.randn(fisher.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(fisher_vector_product(kl_grad, params, v), fisher @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fisher_vector_product(kl_grad, params, v, 0.1), fisher @ v + 0.1 * v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", SPACES)
def test_conjugate_gradient_solves_the_damped_fisher_system(kind):
    space, policy_kind, explicit = SPACES[kind]
    policy, obs = small_policy(space, policy_kind), states()
    params = policy.actor_parameters()
    fisher = explicit(policy, obs)
    kl_grad = kl_gradient(policy, obs)
    g = torch.randn(fisher.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    damping = 0.1
    x = conjugate_gradient(lambda v: fisher_vector_product(kl_grad, params, v, damping), g, iters=fisher.shape[0])
    reference = torch.linalg.solve(fisher + damping * torch.eye(fisher.shape[0], dtype=torch.float64), g)
    assert ((x - reference).norm() / reference.norm()).item() < 1e-4


def test_conjugate_gradient_stops_at_the_residual_tolerance():
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    calls = []

    def Avp(v):
        calls.append(1)
        return A @ v

    torch.testing.assert_close(conjugate_gradient(Avp, b, iters=50), torch.linalg.solve(A, b))
    assert len(calls) == 3  # exact after n = 3 steps; the residual test ends the loop there


def test_natural_gradient_step_lies_on_the_quadratic_trust_region_boundary():
    policy, obs = small_policy(gym.spaces.Discrete(3)), states()
    params = policy.actor_parameters()
    fisher = categorical_fisher(policy, obs)
    n, damping, max_kl = fisher.shape[0], 0.05, 0.01
    with torch.no_grad():
        old_dist = dist_under(policy, {k: v.detach().clone() for k, v in policy.named_parameters()}, obs)
    dist = policy.dist(obs)
    actions = torch.arange(N_STATES) % 3
    adv = torch.linspace(-100, 100, N_STATES, dtype=torch.float64)  # a large g: CG's residual_tol is absolute
    objective = (dist.log_prob(actions) * adv).mean()
    step, g, step_size = natural_gradient_step(objective, old_dist.kl(dist).mean(), params, max_kl, n, damping)
    damped = fisher + damping * torch.eye(n, dtype=torch.float64)
    direction = torch.linalg.solve(damped, g)
    torch.testing.assert_close(step, step_size * direction, rtol=1e-4, atol=1e-8)
    assert 0.5 * (step @ damped @ step).item() == pytest.approx(max_kl, rel=1e-4)


def line_search_problem():
    """A Categorical policy on fixed states, a surrogate E[ratio * adv] and its exact mean KL."""
    policy, obs = small_policy(gym.spaces.Discrete(3)), states()
    params = policy.actor_parameters()
    old = {k: v.detach().clone() for k, v in policy.named_parameters()}
    with torch.no_grad():
        old_dist = dist_under(policy, old, obs)
    actions = torch.arange(N_STATES) % 3
    adv = torch.linspace(-1, 1, N_STATES, dtype=torch.float64)
    logp_old = old_dist.log_prob(actions)

    def surrogate(dist):
        return ((dist.log_prob(actions) - logp_old).exp() * adv).mean()

    def evaluate():
        dist = policy.dist(obs)
        return surrogate(dist).item(), old_dist.kl(dist).mean().item()

    dist = policy.dist(obs)
    objective = surrogate(dist)
    step, _, _ = natural_gradient_step(objective, old_dist.kl(dist).mean(), params, 0.01, 30, 0.1)
    return params, step, evaluate, objective.item()


def test_line_search_backtracks_until_the_exact_kl_is_inside_the_region():
    params, step, evaluate, surrogate_old = line_search_problem()
    before = flat_params(params)
    result = backtracking_line_search(params, 20.0 * step, evaluate, surrogate_old, max_kl=0.01, shrink=0.5, max_iter=15)
    assert result.accepted and result.backtracks > 0
    torch.testing.assert_close(flat_params(params), before + result.step_fraction * 20.0 * step)
    surrogate, kl = evaluate()  # recomputed at the parameters left in place
    assert kl <= 0.01 and kl == pytest.approx(result.kl)
    assert surrogate - surrogate_old == pytest.approx(result.improvement) and result.improvement > 0
    assert result.step_fraction == pytest.approx(0.5**result.backtracks)


def test_line_search_restores_the_old_parameters_exactly_when_nothing_improves():
    params, step, evaluate, surrogate_old = line_search_problem()
    before = [p.detach().clone() for p in params]
    result = backtracking_line_search(params, -step, evaluate, surrogate_old, max_kl=0.01, max_iter=10)
    assert not result.accepted and result.backtracks == 10 and result.step_fraction == 0.0
    for p, b in zip(params, before):
        assert torch.equal(p, b)


def test_every_accepted_trpo_step_keeps_the_exact_mean_kl_within_target():
    target_kl = 0.005
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        agent = TRPO(env_id, seed=0, preset=False, num_envs=2, num_steps=256, batch_size=128, target_kl=target_kl)
        agent.runner = make_runner(agent)
        accepted = 0
        for _ in range(6):
            agent.runner.collect()
            obs = agent.runner.buffer.flat("obs")["obs"]
            old = {k: v.detach().clone() for k, v in agent.policy.named_parameters()}
            metrics = agent.update(agent.runner.buffer)
            with torch.no_grad():
                kl = dist_under(agent.policy, old, obs).kl(agent.policy.dist(obs)).mean().item()
            if metrics["diag/accepted"]:
                accepted += 1
                assert kl <= target_kl and kl == pytest.approx(metrics["diag/kl"], rel=1e-4)
            else:
                for k, p in agent.policy.named_parameters():
                    if not k.startswith("critic"):
                        assert torch.equal(p, old[k])
        assert accepted >= 3


# --- K-FAC ----------------------------------------------------------------------------------


def sampled_categorical_pass(layer, kfac, x):
    """One tracked forward of a linear softmax policy; returns (-log p of sampled actions per sample, G by hand)."""
    with kfac.track():
        logits = layer(x)
    dist = Categorical(logits)
    actions = dist.sample()
    kfac.update_factors(-dist.log_prob(actions).mean())
    g = torch.softmax(logits, -1).detach() - torch.nn.functional.one_hot(actions, logits.shape[1]).double()
    return g.T @ g / len(x)


def test_kfac_factors_are_the_second_moments_of_inputs_and_pre_activation_gradients():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 4).double()
    kfac = KFAC(layer, stats_decay=0.95)
    x1, x2 = torch.randn(64, 3, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    a1 = torch.cat([x1, torch.ones(64, 1, dtype=torch.float64)], 1)
    a2 = torch.cat([x2, torch.ones(32, 1, dtype=torch.float64)], 1)

    G1 = sampled_categorical_pass(layer, kfac, x1)
    torch.testing.assert_close(kfac.A[0], a1.T @ a1 / 64)  # E[a a^T], bias-augmented
    torch.testing.assert_close(kfac.G[0], G1)  # E[g g^T], g = softmax - onehot(sampled action)

    G2 = sampled_categorical_pass(layer, kfac, x2)  # second update: decay min(1 - 1/2, 0.95) = 0.5
    torch.testing.assert_close(kfac.A[0], 0.5 * a1.T @ a1 / 64 + 0.5 * a2.T @ a2 / 32)
    torch.testing.assert_close(kfac.G[0], 0.5 * G1 + 0.5 * G2)


def test_kfac_step_is_the_damped_kronecker_solve_scaled_into_the_trust_region():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 4).double()
    log_std = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))  # a non-Linear parameter: identity block
    model = torch.nn.Module()
    model.layer, model.log_std = layer, log_std
    kfac = KFAC(model, lr=10.0, momentum=0.0, damping=0.01, kl_clip=0.002)
    x = torch.randn(64, 3, dtype=torch.float64)
    sampled_categorical_pass(layer, kfac, x)

    loss = (layer(x) ** 2).mean() + (log_std - 1.0).pow(2).sum()
    loss.backward()
    grad = torch.cat([layer.weight.grad, layer.bias.grad.unsqueeze(1)], 1).clone()
    grad_log_std = log_std.grad.clone()
    before = torch.cat([layer.weight, layer.bias.unsqueeze(1)], 1).detach().clone()
    log_std_before = log_std.detach().clone()

    # (A (x) G + damping I) vec(Delta) = vec(grad), with vec stacking columns
    F = torch.kron(kfac.A[0], kfac.G[0]) + 0.01 * torch.eye(16, dtype=torch.float64)
    delta = torch.linalg.solve(F, grad.T.reshape(-1)).reshape(4, 4).T
    quad = (delta * grad).sum() + grad_log_std.pow(2).sum()
    eta = min(10.0, (2 * 0.002 / quad).sqrt().item())
    assert eta < 10.0  # the trust region, not lr, sets this step

    stats = kfac.step()
    assert stats["step_size"] == pytest.approx(eta)
    assert stats["quad_kl"] == pytest.approx(0.002)
    after = torch.cat([layer.weight, layer.bias.unsqueeze(1)], 1).detach()
    torch.testing.assert_close(after, before - eta * delta)
    torch.testing.assert_close(log_std.detach(), log_std_before - eta * grad_log_std)


def test_kfac_state_round_trips():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 4).double()
    kfac = KFAC(layer)
    sampled_categorical_pass(layer, kfac, torch.randn(8, 3, dtype=torch.float64))
    other = KFAC(torch.nn.Linear(3, 4).double())
    other.load_state_dict(kfac.state_dict())
    torch.testing.assert_close(other.A[0], kfac.A[0])
    torch.testing.assert_close(other.G[0], kfac.G[0])
    assert other.updates == 1


# --- FlatAdam -------------------------------------------------------------------------------

SHAPES = [(64, 4), (64,), (64, 64), (64,), (2, 64), (2,), (1,)]  # odd sizes: flat and per-tensor ops vectorize differently


def _param_pair(seed: int = 0) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=gen) * 0.1 for shape in SHAPES]
    return [torch.nn.Parameter(v.clone()) for v in values], [torch.nn.Parameter(v.clone()) for v in values]


def _set_grads(params_a, params_b, gen, scale=1.0, missing=()):
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        g = None if i in missing else torch.randn(a.shape, generator=gen) * scale
        a.grad, b.grad = g, (None if g is None else g.clone())


@pytest.mark.parametrize("max_norm", [None, 0.5, 1e9])
def test_flat_adam_is_clip_grad_norm_then_adam_bit_for_bit(max_norm):
    ours, ref = _param_pair()
    flat = FlatAdam(ours, lr=3e-3, eps=1e-5, betas=(0.8, 0.99))
    adam = torch.optim.Adam(ref, lr=3e-3, eps=1e-5, betas=(0.8, 0.99), foreach=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        _set_grads(ours, ref, gen, scale=2.0 if step % 2 else 0.01)  # clipping on every other step
        flat.param_groups[0]["lr"] = adam.param_groups[0]["lr"] = 3e-3 * (1 - step / 30)
        if max_norm is None:
            flat.step()
        else:
            norm = flat.clip_and_step(max_norm)
            assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(ref, max_norm))
        adam.step()
        for a, b in zip(ours, ref):
            assert torch.equal(a, b)
    assert flat._step == 30  # every step took the flat path (one shared step count)


def test_flat_adam_steps_parameters_in_place_and_notices_replaced_data():
    """The parameters become views of FlatAdam's flat tensor at the first step; a parameter whose
    data is replaced afterwards (``.data =``) is taken into a new flat tensor, and the run goes on
    as torch.optim.Adam's."""
    ours, ref = _param_pair()
    flat = FlatAdam(ours, lr=1e-2)
    adam = torch.optim.Adam(ref, lr=1e-2, foreach=True)
    gen = torch.Generator().manual_seed(4)
    for step in range(8):
        if step == 4:
            for p in (ours[2], ref[2]):
                p.data = p.data.clone() * 0.5
        _set_grads(ours, ref, gen)
        flat.clip_and_step(0.5)
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
        adam.step()
        theta = flat._flat[2]
        assert all(p.untyped_storage().data_ptr() == theta.untyped_storage().data_ptr() for p in ours)
        for a, b in zip(ours, ref):
            assert torch.equal(a, b)
    assert flat._step == 8


def test_flat_adam_skips_parameters_without_gradients_like_adam():
    ours, ref = _param_pair()
    flat, adam = FlatAdam(ours, lr=1e-2), torch.optim.Adam(ref, lr=1e-2, foreach=True)
    gen = torch.Generator().manual_seed(2)
    for step in range(12):
        _set_grads(ours, ref, gen, missing=(2, 5) if step in (3, 4, 8) else ())
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
        flat.clip_and_step(0.5)
        adam.step()
        for a, b in zip(ours, ref):
            assert torch.equal(a, b)
    assert flat.state[ours[0]]["step"] == 12 and flat.state[ours[2]]["step"] == 9


def _saved_and_loaded(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def test_flat_adam_state_loads_both_ways_with_torch_adam():
    """Checkpoints hold Adam's state format: FlatAdam resumes from torch.optim.Adam's state and
    torch.optim.Adam from FlatAdam's, and each continues as an uninterrupted run."""
    ours, ref = _param_pair()
    flat, adam = FlatAdam(ours, lr=1e-2), torch.optim.Adam(ref, lr=1e-2, foreach=True)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        _set_grads(ours, ref, gen)
        flat.step()
        adam.step()
    flat_copy, ref_copy = _param_pair()
    for a, b, x, y in zip(flat_copy, ref_copy, ours, ref):
        a.data.copy_(x)
        b.data.copy_(y)
    resumed_flat = FlatAdam(flat_copy, lr=1e-2)
    resumed_flat.load_state_dict(_saved_and_loaded(adam.state_dict()))
    resumed_adam = torch.optim.Adam(ref_copy, lr=1e-2, foreach=True)
    resumed_adam.load_state_dict(_saved_and_loaded(flat.state_dict()))
    for _ in range(5):
        _set_grads(ours, ref, gen)
        for a, b, x, y in zip(flat_copy, ref_copy, ours, ref):
            a.grad, b.grad = x.grad.clone(), y.grad.clone()
        for opt in (flat, adam, resumed_flat, resumed_adam):
            opt.step()
    for a, b, x, y in zip(flat_copy, ref_copy, ours, ref):
        assert torch.equal(a, x) and torch.equal(b, y) and torch.equal(a, b)


@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True, "weight_decay": 0.1}, {"maximize": True, "betas": (0.8, 0.99), "eps": 1e-5},
     {"weight_decay": 0.1, "decoupled_weight_decay": True}],
)
def test_fused_adam_steps_are_torch_fused_adams(options, monkeypatch):
    """FusedAdam calls the fused kernel itself once the state exists, and falls back to
    Adam.step for a first step and a step with a parameter lacking its gradient: the run and the
    state are torch.optim.Adam(fused=True)'s bit for bit."""
    ours, ref = _param_pair()
    fused, adam = FusedAdam(ours, lr=1e-2, **options), torch.optim.Adam(ref, lr=1e-2, fused=True, **options)
    through_adam = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, closure=None: through_adam.append(self) or adam_step(self, closure))
    gen = torch.Generator().manual_seed(5)
    for step in range(12):
        _set_grads(ours, ref, gen, missing=(2,) if step == 6 else ())
        fused.param_groups[0]["lr"] = adam.param_groups[0]["lr"] = 1e-2 * (1 - step / 12)
        fused.step()
        adam_step(adam)
        for a, b in zip(ours, ref):
            assert torch.equal(a, b)
    assert through_adam == [fused, fused]  # the first step and the one with a gradient missing
    assert fused.state[ours[0]]["step"] == 12 and fused.state[ours[2]]["step"] == 11
    for state, ref_state in zip(fused.state_dict()["state"].values(), adam.state_dict()["state"].values(), strict=True):
        assert state.keys() == ref_state.keys() and all(torch.equal(state[k], ref_state[k]) for k in state)


def test_fused_adam_step_with_given_gradients_is_torch_fused_adams_and_keeps_grad():
    """gradient_step hands FusedAdam the gradients as a list (step_with): the steps are
    torch.optim.Adam(fused=True)'s bit for bit, the first (which makes the state) included,
    ``.grad`` is left as it was, and after load_state_dict the step moves the loaded state's
    tensors (listed anew), not the replaced ones; a wrong number of gradients is an error; a
    deep copy (which goes through __getstate__/__setstate__, as unpickling does) steps its own."""
    ours, ref = _param_pair()
    fused, adam = FusedAdam(ours, lr=1e-2, weight_decay=0.1), torch.optim.Adam(ref, lr=1e-2, weight_decay=0.1, fused=True)
    gen = torch.Generator().manual_seed(3)
    for step in range(8):
        if step == 5:  # both load the state of a third optimizer, 3 steps in
            third, _ = _param_pair()
            other = torch.optim.Adam(third, lr=1e-2, weight_decay=0.1, fused=True)
            for _ in range(3):
                for p in third:
                    p.grad = torch.randn(p.shape, generator=gen)
                other.step()
            fused.load_state_dict(copy.deepcopy(other.state_dict()))  # the state's tensors are shared otherwise
            adam.load_state_dict(copy.deepcopy(other.state_dict()))
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        gradient_step(fused, grads)
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        adam.step()
        assert all(p.grad is None for p in ours)
        for a, b in zip(ours, ref):
            assert torch.equal(a, b)
    for state, ref_state in zip(fused.state_dict()["state"].values(), adam.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(state[k], ref_state[k]) for k in state)
    with pytest.raises(ValueError, match="gradients for"):
        fused.step_with(grads[:-1])
    copied = copy.deepcopy(fused)  # a copy (or an unpickled one) steps its own tensors
    copied_params = [p for group in copied.param_groups for p in group["params"]]
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        fused.step_with(grads)
        copied.step_with(grads)
    assert all(torch.equal(a, b) and a is not b for a, b in zip(ours, copied_params))


def test_fused_adam_with_a_transposed_gradient_steps_each_element_by_its_own_gradient():
    """torch's fused Adam on CPU reads a gradient as flat memory (a transposed one steps the wrong
    elements, silently); FusedAdam hands it a contiguous copy, whether the gradient comes through
    gradient_step or is set by hand, so the step is the one a contiguous gradient gives, and the
    per-element (foreach) Adam's up to rounding."""
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    transposed, by_hand, contiguous, reference = (torch.nn.Parameter(start.clone()) for _ in range(4))
    opts = [adam([p], lr=0.1) for p in (transposed, by_hand, contiguous)]
    opts.append(torch.optim.Adam([reference], lr=0.1, foreach=True))
    for _ in range(3):
        grad = torch.randn(3, 6).t()  # [6, 3], strides (1, 6)
        gradient_step(opts[0], [grad])
        by_hand.grad = grad.clone()
        opts[1].step()
        gradient_step(opts[2], [grad.contiguous()])
        reference.grad = grad.clone()
        opts[3].step()
    assert torch.equal(transposed, contiguous) and torch.equal(by_hand, contiguous)
    torch.testing.assert_close(transposed, reference)
    assert not torch.allclose(transposed, start, atol=0.1)  # it moved: three steps of 0.1 each


def test_capturable_flat_adam_counts_and_reads_its_rate_on_the_device():
    """``capturable=True``: the step count and the learning rate are tensors (set_lr fills the
    rate in place, as a recorded step reads it), the step's scalars are computed from them, and
    the run is torch.optim.Adam's bit for bit (on the CPU); its state loads into a plain FlatAdam
    and back."""
    ours, ref = _param_pair()
    flat = FlatAdam(ours, lr=3e-3, eps=1e-5, capturable=True)
    adam = torch.optim.Adam(ref, lr=3e-3, eps=1e-5, foreach=True)
    rate = flat.param_groups[0]["lr"]
    gen = torch.Generator().manual_seed(5)
    for step in range(20):
        _set_grads(ours, ref, gen)
        set_lr(flat, 3e-3 * (1 - step / 20))
        set_lr(adam, 3e-3 * (1 - step / 20))
        flat.clip_and_step(0.5)
        torch.nn.utils.clip_grad_norm_(ref, 0.5)
        adam.step()
        for a, b in zip(ours, ref):
            assert torch.equal(a, b)
    assert flat.param_groups[0]["lr"] is rate and isinstance(flat._step, torch.Tensor) and flat._step == 20
    plain = FlatAdam(_param_pair()[0], lr=1.0)
    plain.load_state_dict(_saved_and_loaded(flat.state_dict()))
    assert plain.param_groups[0]["lr"] == pytest.approx(3e-3 / 20) and not isinstance(plain.param_groups[0]["lr"], torch.Tensor)
    again = FlatAdam(_param_pair()[0], lr=1.0, capturable=True)
    again.load_state_dict(_saved_and_loaded(plain.state_dict()))
    assert isinstance(again.param_groups[0]["lr"], torch.Tensor) and again._step == 20


def test_planned_flat_adam_steps_are_torch_adams():
    """``plan(n, lr)``: the next n steps read scalars computed on the host, a step past them
    computes its own on the device; every step is torch.optim.Adam's bit for bit."""
    ours, ref = _param_pair()
    flat = FlatAdam(ours, lr=3e-3, eps=1e-5, capturable=True)
    adam = torch.optim.Adam(ref, lr=3e-3, eps=1e-5, foreach=True)
    gen = torch.Generator().manual_seed(7)
    for update in range(4):
        lr = 3e-3 * (1 - update / 4)
        set_lr(flat, lr)
        set_lr(adam, lr)
        flat.plan(3, lr)
        for _ in range(4):  # one step more than planned
            _set_grads(ours, ref, gen)
            flat.clip_and_step(0.5)
            torch.nn.utils.clip_grad_norm_(ref, 0.5)
            adam.step()
            for a, b in zip(ours, ref):
                assert torch.equal(a, b)
        assert flat._plan_next == flat._plan_end == 3  # the plan was read
    assert flat._step == 16
    with pytest.raises(RuntimeError, match="capturable"):
        FlatAdam(_param_pair()[0], lr=1.0).plan(2, 1.0)


# --- target networks ------------------------------------------------------------------------


def test_polyak_update_moves_float_tensors_by_tau_and_copies_everything_at_tau_one():
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))  # float and int64 buffers
    target = target_copy(online)
    with torch.no_grad():
        for t in [*online.parameters(), *online.buffers()]:
            t.add_(1)
    before = [t.clone() for t in target.parameters()]
    for _ in range(2):  # the second call reads the kept lists
        expected = [b.lerp(o, 0.1) for b, o in zip(before, online.parameters())]
        polyak_update(online, target, 0.1)
        assert all(torch.equal(t, e) for t, e in zip(target.parameters(), expected))
        before = [t.clone() for t in target.parameters()]
    assert target[1].num_batches_tracked == 0  # an integer buffer moves only with a hard copy
    other = target_copy(online)  # another online module for the same target: listed anew
    with torch.no_grad():
        other[0].weight.mul_(2)
    polyak_update(other, target, 1.0)
    assert all(torch.equal(a, b) for a, b in zip([*target.parameters(), *target.buffers()], [*other.parameters(), *other.buffers()]))
    with pytest.raises(ValueError, match="tensors"):
        polyak_update(torch.nn.Linear(3, 4, bias=False), target_copy(torch.nn.Linear(3, 4)), 0.5)
