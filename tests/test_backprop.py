"""core.backprop: the written-out backward pass equals autograd's gradient of the same loss."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from policyopt.algos.ppo import PPO
from policyopt.config import ConfigError
from policyopt.core.backprop import (
    ForwardPass,
    FunctionalPolicy,
    NumpyActor,
    clipped_surrogate_with_grad,
    unsupported,
    value_loss_with_grad,
)
from policyopt.core.losses import clipped_surrogate_loss, value_loss
from policyopt.core.nets import ActorCritic, sigmoid_tanh

B, OBS_DIM = 96, 5
DISCRETE, BOX = gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,))


def minibatch(policy: ActorCritic, space: gym.Space, seed: int) -> dict[str, torch.Tensor]:
    """Random states and actions; old log-probs and values shifted so that some ratios and values
    fall outside the clip range on both sides."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, OBS_DIM, generator=g)
    with torch.no_grad():
        dist, value = policy.dist_and_value(obs)
        action = dist.sample()
        logp = dist.log_prob(action)
    return {
        "obs": obs,
        "action": action,
        "logp": logp + 0.3 * torch.randn(B, generator=g),
        "adv": torch.randn(B, generator=g),
        "value": value + 0.3 * torch.randn(B, generator=g),
        "v_target": value + torch.randn(B, generator=g),
    }


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["categorical", "gaussian"])
@pytest.mark.parametrize("hidden,activation", [((64, 64), "tanh"), ((32,), "relu"), ((), "tanh")])
@pytest.mark.parametrize("clip_vloss,ent_coef", [(False, 0.0), (True, 0.01)])
def test_gradient_equals_autograd(space, hidden, activation, clip_vloss, ent_coef):
    torch.manual_seed(0)
    policy = ActorCritic(OBS_DIM, space, hidden, activation, log_std_init=-0.5)
    mb = minibatch(policy, space, seed=1)
    clip, vf_coef = 0.2, 0.5
    vclip = clip if clip_vloss else None

    dist, value = policy.dist_and_value(mb["obs"])
    ratio = (dist.log_prob(mb["action"]) - mb["logp"]).exp()
    loss = (clipped_surrogate_loss(ratio, mb["adv"], clip) + vf_coef * value_loss(value, mb["v_target"], mb["value"], vclip)
            - ent_coef * dist.entropy().mean())
    expected = torch.autograd.grad(loss, list(policy.parameters()))
    clipped = ((ratio - 1).abs() > clip).float().mean()
    assert 0.1 < clipped < 0.9  # both branches of the clipped surrogate are exercised

    with torch.no_grad():
        fp = ForwardPass(policy, mb["obs"], mb["action"])
        # the forward pass is the module's own, bit for bit
        assert torch.equal(fp.logp, dist.log_prob(mb["action"]))
        assert torch.equal(fp.entropy, dist.entropy()) and torch.equal(fp.value, value)
        pg, dlogp = clipped_surrogate_with_grad((fp.logp - mb["logp"]).exp(), mb["adv"], 1 - clip, 1 + clip)
        vl, dvalue = value_loss_with_grad(fp.value, mb["v_target"], mb["value"], vclip)
        assert torch.equal(pg + vf_coef * vl - ent_coef * fp.entropy.mean(), loss.detach())
        grads = fp.grads(dlogp, -ent_coef / B, vf_coef * dvalue)
        # written into views of one flat gradient (as the traced PPO step does): the same bits, in place
        params = list(policy.parameters())
        flat = torch.full((sum(p.numel() for p in params),), float("nan"))
        views = {p: part.view_as(p) for p, part in zip(params, flat.split([p.numel() for p in params]))}
        into = fp.grads(dlogp, -ent_coef / B, vf_coef * dvalue, out=views)
    assert torch.equal(flat, torch.cat([grads[p].reshape(-1) for p in params]))
    assert all(into[p] is views[p] for p in params)

    assert len(grads) == len(expected)
    for p, g in zip(policy.parameters(), expected):
        assert grads[p].shape == p.shape
        torch.testing.assert_close(grads[p], g, rtol=1e-5, atol=1e-6 * g.abs().max().item() + 1e-12)


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["categorical", "gaussian"])
@pytest.mark.parametrize("hidden,activation", [((64, 64), "tanh"), ((32,), "relu"), ((), "tanh")])
@pytest.mark.parametrize("rows", [8, B])  # a rollout step's, a minibatch's (``nets.affine``'s two layouts)
def test_the_functional_policy_computes_the_modules_bits_and_reads_parameters_live(space, hidden, activation, rows):
    torch.manual_seed(0)
    policy = ActorCritic(OBS_DIM, space, hidden, activation, log_std_init=-0.5)
    functional, obs = FunctionalPolicy(policy), torch.randn(rows, OBS_DIM)
    with torch.no_grad():
        for _ in range(2):
            dist, value = policy.dist_and_value(obs)
            mine, my_value = functional.dist_and_value(obs)
            assert type(mine) is type(dist) and torch.equal(my_value, value)
            assert all(torch.equal(getattr(mine, k), getattr(dist, k)) for k in ("raw", "mean", "log_std") if hasattr(dist, k))
            for p in policy.parameters():  # an optimizer step in place, then a parameter's data re-pointed
                p.add_(0.1)
            layer = policy.actor_body[0] if hidden else policy.critic[0]
            layer.weight.data = layer.weight.data * 2.0


@pytest.mark.parametrize("hidden,activation", [((64, 64), "tanh"), ((32,), "relu"), ((), "tanh")])
def test_the_numpy_actor_computes_the_logits_up_to_rounding_and_reads_parameters_live(hidden, activation):
    torch.manual_seed(0)
    policy = ActorCritic(OBS_DIM, DISCRETE, hidden, activation)
    assert NumpyActor.applies(policy)
    actor, obs = NumpyActor(policy), torch.randn(8, OBS_DIM)
    before = obs.clone()
    with torch.no_grad():
        for _ in range(3):
            z, expected = actor.logits(obs.numpy()), policy.dist(obs).raw
            assert z.dtype == np.float32 and z.shape == expected.shape
            torch.testing.assert_close(torch.from_numpy(z), expected, rtol=1e-6, atol=1e-6)  # float32 rounding only
            for p in policy.parameters():  # an optimizer step in place, then a parameter's data re-pointed
                p.add_(0.1)
            layer = policy.actor_head.logits
            layer.bias.data = layer.bias.data * 2.0
    assert torch.equal(obs, before)  # the input is not written


@pytest.mark.parametrize("space,kwargs", [
    (BOX, {}),
    (DISCRETE, dict(shared=True)),
    (DISCRETE, dict(activation="elu")),
    (DISCRETE, dict(dtype=torch.float64)),
])
def test_the_numpy_actor_takes_categorical_float32_policies_only(space, kwargs):
    dtype = kwargs.pop("dtype", torch.float32)
    policy = ActorCritic(OBS_DIM, space, (16,), kwargs.pop("activation", "tanh"), **kwargs).to(dtype)
    assert not NumpyActor.applies(policy)


@pytest.mark.parametrize("space,kwargs,reason", [
    (DISCRETE, dict(shared=True), "separate actor and critic"),
    (DISCRETE, dict(value_head=False), "separate actor and critic"),
    (DISCRETE, dict(activation="elu"), "tanh and relu activations, not ELU"),
    (BOX, dict(policy="beta"), "Categorical and Gaussian policies, not BetaHead"),
    (BOX, dict(activation="relu"), None),
])
def test_unsupported_networks_are_named(space, kwargs, reason):
    why = unsupported(ActorCritic(OBS_DIM, space, **kwargs))
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why


@pytest.mark.parametrize("env_id,options,exact", [
    ("CartPole-v1", dict(anneal_lr=True, anneal_clip=True, target_kl=0.05), True),
    ("Pendulum-v1", dict(clip_vloss=True, ent_coef=0.01, normalize_obs=True), True),
    ("CartPole-v1", dict(objective="none"), True),
    ("CartPole-v1", dict(batch_size=256, anneal_clip=True), True),  # one minibatch per epoch: the whole rollout
    ("Pendulum-v1", dict(objective="none", batch_size=96), False),
    ("CartPole-v1", dict(ent_coef=0.01), False),
])
def test_ppo_with_closed_form_grad_tracks_autograd(env_id, options, exact):
    """Same seeds, same rollouts. With power-of-two minibatches (the losses' 1/B scalings then
    round alike) and no Categorical entropy bonus, the two runs are the same bit for bit; else
    after several updates the parameters agree to float rounding amplified by Adam, and the
    logged losses agree."""
    base = dict(num_envs=4, num_steps=64, update_epochs=4, **{"batch_size": 64, **options})
    logs = {True: [], False: []}
    agents = {
        flag: PPO(env_id, seed=0, preset=False, closed_form_grad=flag, **base).learn(
            768, progress=False, callback=lambda a, m, flag=flag: logs[flag].append(m))
        for flag in (False, True)
    }
    init = PPO(env_id, seed=0, preset=False, **base).nets.parameters()
    moved, identical = False, True
    for x, y, p0 in zip(agents[False].nets.parameters(), agents[True].nets.parameters(), init):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
        moved |= not torch.allclose(x, p0)
        identical &= torch.equal(x, y)
    assert moved and identical is exact
    for a, b in zip(logs[False], logs[True]):
        for key in ("loss/policy", "loss/value", "loss/entropy", "diag/grad_norm", "diag/epochs"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key


@pytest.mark.parametrize("options,message", [
    (dict(objective="adaptive_kl"), "objective clip or none"),
    (dict(compile=True), "exclude each other"),
    (dict(shared_network=True), "separate actor and critic"),
    (dict(policy="beta"), "Categorical and Gaussian"),
])
def test_closed_form_grad_rejects_what_it_does_not_cover(options, message):
    env_id = "Pendulum-v1" if options.get("policy") == "beta" else "CartPole-v1"
    with pytest.raises(ConfigError, match=message):
        PPO(env_id, seed=0, preset=False, closed_form_grad=True, **options)


@pytest.mark.parametrize("options,closed_form", [
    (dict(), True),
    (dict(objective="none", clip_vloss=True), True),
    (dict(objective="adaptive_kl"), False),
    (dict(shared_network=True), False),
    (dict(compile=True), False),
    (dict(closed_form_grad=False), False),
])
def test_ppo_uses_the_closed_form_grad_wherever_it_applies(options, closed_form):
    """closed_form_grad unset: the written-out gradient where it covers the network and the
    objective, autograd (no error) elsewhere."""
    agent = PPO("CartPole-v1", seed=0, preset=False, **options)
    assert (agent.minibatch_step == agent._closed_form_step) is closed_form


def test_sigmoid_tanh_matches_torch_tanh_and_its_gradients():
    x = torch.cat([torch.linspace(-20, 20, 4001), torch.randn(10_000), torch.tensor([0.0, -0.0, 1e-30, 88.0, -88.0])])
    y = sigmoid_tanh(x)
    assert (y - torch.tanh(x)).abs().max() <= 2.5e-7 and y.abs().max() <= 1.0
    # autograd: torch.tanh's backward formula on the output, to first and second order (NPG/TRPO's
    # Fisher-vector products differentiate the gradient again), and under torch.func (REINFORCE)
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sigmoid_tanh, (x,)) and torch.autograd.gradgradcheck(sigmoid_tanh, (x,))
    xf = x.detach().float().requires_grad_()
    (g,) = torch.autograd.grad(sigmoid_tanh(xf).sum(), xf)
    assert torch.equal(g, torch.ops.aten.tanh_backward(torch.ones_like(xf), sigmoid_tanh(xf.detach())))
    per_row = torch.func.vmap(torch.func.grad(lambda v: sigmoid_tanh(v).sum()))(xf.detach().reshape(8, 8))
    assert torch.equal(per_row, g.reshape(8, 8))
