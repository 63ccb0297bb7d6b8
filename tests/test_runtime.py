"""``runtime.tune_malloc``: freed activations stay in the heap instead of page-faulting back in;
``runtime.flush_denormals``: training flushes denormals to zero and leaves the mode as it found it;
``runtime.trace``: a recorded module computes what the module computes, and draws the same numbers;
``runtime.record``: a recorded function with its gradients returns what the function returns, and
the off-policy algorithms' updates through it are the eager updates bit for bit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from policyopt import PPO
from policyopt.core.distributions import gumbel_noise
from policyopt.core.optim import FlatAdam
from policyopt.registry import get_algorithm
from policyopt.runtime import _openmp, _simplify, denormals_flushed, flush_denormals, record, trace, tune_malloc

ROUNDS = 20
FAULTS_PER_ROUNDS = f"""
import ctypes, resource, sys
from policyopt.runtime import tune_malloc
if sys.argv[1] == "tune":
    assert tune_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
BLOCK, BLOCKS = 512 << 10, 8  # as an off-policy update's [2, 256, 256] float32 activations

def allocate_touch_free():
    blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)
    for block in reversed(blocks):
        libc.free(block)

allocate_touch_free()  # mapped fresh either way; with the defaults glibc raises its thresholds here
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({ROUNDS}):
    allocate_touch_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_malloc_keeps_freed_activations_in_the_heap():
    # Blocks taken from malloc itself, not from tensors: torch's own small allocations land
    # between the blocks at places that vary from process to process, and whether glibc's
    # defaults trim then varies too (over 80 SAC updates: 14 to 29,600 faults with the defaults,
    # 15 to 334 tuned; a CI run once saw 711 against 748). Here, with the defaults, the thresholds
    # rise to one block's size and twice that after the first round, so the 4 MiB freed at the
    # top of the heap goes back to the kernel each round and faults back in (19,840 faults over
    # 20 rounds here); tuned, it stays (0).
    runs = {mode: subprocess.Popen([sys.executable, "-c", FAULTS_PER_ROUNDS, mode], stdout=subprocess.PIPE, text=True)
            for mode in ("tune", "default")}
    faults = {mode: int(run.communicate()[0].split()[-1]) for mode, run in runs.items()}
    assert faults["tune"] < ROUNDS <= faults["default"], faults


def test_the_users_own_glibc_thresholds_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_malloc.__wrapped__() is False


TINY = 2.0**-100  # times 2^-30: a denormal float32, or zero when flushed


@pytest.mark.parametrize("on_entry", [False, True])
def test_flush_denormals_flushes_inside_and_restores_the_mode_found(on_entry):
    torch.set_flush_denormal(on_entry)
    try:
        assert denormals_flushed() is on_entry
        with pytest.raises(KeyError), flush_denormals():
            assert (torch.tensor(TINY) * 2.0**-30).item() == 0.0
            raise KeyError  # left by an error: restored all the same
        assert denormals_flushed() is on_entry
        assert ((torch.tensor(TINY) * 2.0**-30).item() == 0.0) is on_entry
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.skipif(_openmp() is None, reason="torch's OpenMP runtime not found")
def test_flush_denormals_reaches_torchs_intra_op_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tiny = torch.full((1 << 21,), TINY)  # long enough for torch to split it between both threads
        assert (tiny * 2.0**-30).all()  # the second thread started (with this thread's mode: not flushing)
        torch.set_flush_denormal(True)  # this thread only: half the elements stay denormal
        assert 0 < int(((tiny * 2.0**-30) != 0).sum()) < tiny.numel()
        torch.set_flush_denormal(False)
        with flush_denormals():
            assert not (tiny * 2.0**-30).any()
        assert (tiny * 2.0**-30).all()
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def test_training_runs_with_denormals_flushed():
    seen = []
    agent = PPO("CartPole-v1", seed=0, config={"num_envs": 2, "num_steps": 8, "batch_size": 16, "update_epochs": 1})
    agent.learn(32, progress=False, callback=lambda a, m: seen.append(denormals_flushed()))
    assert seen == [True, True]
    assert not denormals_flushed()


class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(x)) + torch.empty(x.shape[0], 2).exponential_()


def test_a_traced_module_reads_its_parameters_live_and_draws_what_the_module_draws():
    """Also for a module nested in another: the trace holds the parameters, not the tree."""
    torch.manual_seed(0)
    module, x = Noisy(), torch.randn(5, 3)
    state = torch.get_rng_state()
    traced = trace(module, (x,))
    assert traced is not module
    assert torch.equal(torch.get_rng_state(), state)  # tracing ran the module once; its draws are undone
    with torch.no_grad():
        module.layer.weight.add_(1.0)  # an optimizer step in place
        module.layer.bias.data = module.layer.bias + 1.0  # data re-pointed (FlatAdam's flat storage)
        for _ in range(3):
            torch.set_rng_state(state)
            expected = module(x)
            torch.set_rng_state(state)
            assert torch.equal(traced(x), expected)


def noisy_loss_and_gradients(module: Noisy, x: torch.Tensor, target: torch.Tensor) -> dict:
    loss = (module(x) - target).pow(2).mean()
    return {"grads": list(torch.autograd.grad(loss, list(module.parameters()))), "loss": loss.detach()}


def test_a_recorded_function_returns_its_gradients_bit_for_bit_and_reads_parameters_live():
    torch.manual_seed(0)
    module, x, target = Noisy(), torch.randn(64, 3), torch.randn(64, 2)
    state = torch.get_rng_state()
    recorded = record(lambda *inputs: noisy_loss_and_gradients(module, *inputs), (x, target))
    assert recorded.__qualname__ == "record.<locals>.run"  # not the function itself, given back on failure
    assert torch.equal(torch.get_rng_state(), state)
    for _ in range(3):
        torch.set_rng_state(state)
        expected = noisy_loss_and_gradients(module, x, target)
        torch.set_rng_state(state)
        got = recorded(x, target)
        assert torch.equal(got["loss"], expected["loss"])
        assert all(torch.equal(a, b) for a, b in zip(got["grads"], expected["grads"], strict=True))
        assert not got["loss"].requires_grad
        with torch.no_grad():
            module.layer.weight.sub_(0.1 * expected["grads"][0])  # an optimizer step in place


@pytest.mark.parametrize("algo,env_id,config", [
    ("sac", "Pendulum-v1", {}),
    ("sac", "Pendulum-v1", {"policy_frequency": 2, "target_network_frequency": 3, "autotune": False}),
    ("sac", "CartPole-v1", {}),
    ("td3", "Pendulum-v1", {}),
    ("ddpg", "Pendulum-v1", {}),
    ("dqn", "CartPole-v1", {"double_q": True, "target_network_frequency": 50}),
])
def test_recorded_updates_are_the_eager_updates_bit_for_bit(algo, env_id, config):
    """``record_update``: the losses' gradients and the exploring actions through ``runtime.record``'s
    graphs give the run of the eager code, parameters and optimizer moments alike, also where a
    callback changes a value the graphs read (gamma: recorded anew)."""
    def lower_gamma(agent, metrics):
        if agent.global_step >= 400:
            agent.config.gamma = 0.9

    def run(recorded):
        agent = get_algorithm(algo)(env_id, seed=1, preset=False, record_update=recorded, learning_starts=200,
                                    batch_size=64, hidden_sizes=(32, 32), log_interval=100, **config)
        return agent.learn(600, progress=False, callback=lower_gamma)

    recorded, eager = run(True), run(False)
    assert recorded.config.gamma == 0.9
    assert {fn.__qualname__ for _, fn in recorded._records.values()} == {"record.<locals>.run"}
    assert ("_exploring_action" in recorded._records) == (algo != "dqn")  # DQN's act reads its epsilon: not recorded
    assert "_records" not in vars(eager)
    a, b = recorded.nets.state_dict(), eager.nets.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in recorded.optimizers:
        ours, theirs = (list(agent.optimizers[name].state.values()) for agent in (recorded, eager))
        assert ours and all(torch.equal(s["exp_avg_sq"], t["exp_avg_sq"]) for s, t in zip(ours, theirs, strict=True))


def test_a_record_drops_detaches_and_double_transposes_and_runs_relus_in_place():
    """``_simplify`` on a record of a two-layer ReLU net's loss and gradients: no ``detach`` and no
    transpose of a transpose remain, the ReLUs after the matmuls write in place, the first
    layer's weight gradient is computed transposed (``nets.weight_grad``), and the record still
    returns the gradients bit for bit."""
    from torch.fx.experimental.proxy_tensor import make_fx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def loss_and_grads(x):
        loss = net(x).pow(2).mean()
        return [loss.detach(), *torch.autograd.grad(loss, list(net.parameters()))]

    x = torch.randn(128, 3)
    with torch.enable_grad():
        graph = make_fx(loss_and_grads)(x)
    aten = torch.ops.aten

    def count(target):
        return sum(n.target is target for n in graph.graph.nodes)

    def double_transposes():
        return sum(n.target is aten.t.default and n.args[0].target is aten.t.default for n in graph.graph.nodes)

    def narrow_weight_grads():  # mm(t(grad), x): [16, 128] @ [128, 3]
        return sum(n.target is aten.mm.default and n.args[0].target is aten.t.default and n.args[1].meta["val"].shape[1] == 3
                   for n in graph.graph.nodes)

    assert count(aten.detach.default) > 0 and double_transposes() > 0 and count(aten.relu.default) == 2
    assert narrow_weight_grads() == 1
    _simplify(graph.graph)
    graph.recompile()
    assert count(aten.detach.default) == 0 and double_transposes() == 0 and narrow_weight_grads() == 0
    assert count(aten.relu_.default) == 2 and count(aten.relu.default) == 0
    with torch.no_grad():
        got = graph(x)
    assert all(torch.equal(a, b) for a, b in zip(got, loss_and_grads(x), strict=True))


def test_record_gives_back_the_function_where_it_cannot_record(monkeypatch):
    def fn(x):
        return [x + 1]

    assert record(fn, (torch.zeros(2, device="meta"),)) is fn  # not on CPU
    monkeypatch.delattr(torch.jit, "trace")
    assert record(fn, (torch.zeros(2),)) is fn


@pytest.mark.parametrize("optimize", [True, False])
def test_a_trace_runs_unoptimized_and_leaves_the_executor_setting_as_it_was(optimize):
    previous = torch._C._get_graph_executor_optimize()
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(2) + 1

    traced = trace(Probe(), (torch.zeros(2),))
    inner = traced.forward
    traced.forward = lambda *args: seen.append(torch._C._get_graph_executor_optimize()) or inner(*args)
    try:
        torch._C._set_graph_executor_optimize(optimize)
        assert torch.equal(traced(torch.ones(2)), torch.full((2,), 2.0))
        assert torch._C._get_graph_executor_optimize() is optimize
        with pytest.raises(RuntimeError):
            traced(torch.ones(3))  # a failing call restores it too
        assert torch._C._get_graph_executor_optimize() is optimize
        assert seen == [False, False]
    finally:
        torch._C._set_graph_executor_optimize(previous)


class Numbers(torch.nn.Module):
    """Python numbers in float32, float64 and bfloat16 arithmetic, in place and not, also given to
    the ops' ``Scalar`` forms (as a record's backward ops get them)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = (x * 0.1 + 1e-8) / 3 - 0.7
        a.mul_(0.999).add_(1e-5)
        scalar_forms = torch.ops.aten.rsub.Scalar(torch.ops.aten.div.Scalar(x, 3), 0.7, alpha=2)
        return a, x.sum() * 0.1 + 1e-8, y * 0.1 + 1e-8, z * 0.1 + 1e-3, scalar_forms, torch.ops.aten.mul.Scalar(y, 0.3)


def number_casts_per_call(fn, inputs: tuple) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*inputs)
    return sum(e.name == "aten::_to_copy" for e in prof.events())


def test_a_trace_stores_its_numbers_in_the_dtype_they_are_computed_in():
    """The numbers a trace holds as float64 constants are cast to float32 once, not at every
    call, with the same bits; a bfloat16 op keeps its number as it is (it computes in float32)."""
    inputs = (torch.randn(64), torch.randn(64, dtype=torch.float64), torch.randn(64).bfloat16())
    traced = trace(Numbers(), inputs)
    expected = Numbers()(*inputs)
    assert all(torch.equal(out, want) and out.dtype == want.dtype for out, want in zip(traced(*inputs), expected))
    bfloat16_part = torch.jit.trace(lambda z: z * 0.1 + 1e-3, inputs[2:])  # its casts are all that remain
    assert number_casts_per_call(traced, inputs) == number_casts_per_call(bfloat16_part, inputs[2:]) > 0
    constants = [n for n in traced.forward.graph.nodes() if n.kind() == "prim::Constant" and n.output().type().kind() == "TensorType"]
    float32_users = [u.user for n in constants if n.t("value").dtype != torch.float32 for u in n.output().uses()
                     if u.user.output().type().scalarType() == "Float"]
    assert not float32_users


def test_trace_falls_back_to_the_module_where_torch_jit_trace_is_gone(monkeypatch):
    monkeypatch.delattr(torch.jit, "trace")
    module = Noisy()
    assert trace(module, (torch.randn(5, 3),)) is module


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_ppo_runs_the_same_with_and_without_traces(monkeypatch, env_id):
    """Traced closed-form gradient and Adam step, and acting through ``FunctionalPolicy``: the run
    of the eager code and the modules, bit for bit, also where a callback changes a loss
    coefficient between updates (a new trace then). (CartPole's rollouts act through
    ``NumpyActor`` in both runs; Pendulum's Gaussian policy through ``FunctionalPolicy``.)"""
    def anneal_entropy_bonus(agent, metrics):
        agent.config.ent_coef = 0.01 * (1 - agent.global_step / 1024)

    def run():
        agent = PPO(env_id, seed=0, num_envs=4, num_steps=64, batch_size=64)
        return agent.learn(1024, progress=False, callback=anneal_entropy_bonus).policy.state_dict()

    traced = run()
    for module in ("policyopt.algos.ppo", "policyopt.core.optim"):
        monkeypatch.setattr(f"{module}.trace", lambda module, inputs: module)
    monkeypatch.setattr("policyopt.agent.unsupported", lambda policy: "acting through the modules")
    eager = run()
    assert all(torch.equal(traced[k], eager[k]) for k in traced)


def test_ppo_steps_through_adams_own_path_where_parameters_step_apart(monkeypatch):
    """A closed-form PPO step whose optimizer cannot take the flat step (parameters that stepped
    apart, as a checkpoint may hold) sets ``.grad`` and takes Adam's per-parameter step: the
    same run."""
    def run():
        return PPO("CartPole-v1", seed=0, num_envs=4, num_steps=32, batch_size=64).learn(512, progress=False).policy.state_dict()

    flat = run()
    build = FlatAdam._build

    def build_apart(self):  # as after a step in which some parameters had no gradient
        build(self)
        for p in self.params:
            self.state[p]["step"] = self.state[p]["step"].clone()
        self._step = None

    monkeypatch.setattr(FlatAdam, "_build", build_apart)
    apart = run()
    assert all(torch.equal(flat[k], apart[k]) for k in flat)


@pytest.mark.parametrize("shape", [(8, 2), (8, 6), (1, 3), (16, 18)])
def test_one_gumbel_draw_gives_the_numbers_of_the_same_draws_step_by_step(shape):
    """What ``ActorCriticAgent.rollout_noise`` relies on to draw a rollout's Categorical noise at
    once, and the runner to compute its log-probabilities at once: the generator's Exp(1)
    numbers, ``log`` and ``log_softmax`` do not depend on how many rows one call takes."""
    torch.manual_seed(0)
    whole = gumbel_noise(32, *shape)
    torch.manual_seed(0)
    assert torch.equal(whole, torch.stack([-torch.empty(shape).exponential_(1.0).log() for _ in range(32)]))
    logits = torch.randn(32, *shape) * 3
    assert torch.equal(logits.log_softmax(-1), torch.stack([z.log_softmax(-1) for z in logits]))


@pytest.mark.parametrize("num_envs", [8, 2])
def test_host_rollouts_of_a_categorical_policy_act_on_numpy_logits(num_envs):
    """Every rollout on host envs, the first (values per step) included, acts through
    ``backprop.NumpyActor``: the logits it stores are the policy's up to float32 rounding."""
    agent = PPO("CartPole-v1", seed=0, num_envs=num_envs, num_steps=64, batch_size=64)
    agent.learn(num_envs * 64, progress=False)  # the first rollout and its update
    steps = agent._sample_steps
    assert list(steps) == [True] and steps[True].host is not None  # ``act`` never ran
    acting = {k: v.clone() for k, v in agent.policy.state_dict().items()}  # the next rollout's policy
    agent.learn(num_envs * 64, progress=False)
    buf = agent.runner.buffer
    agent.policy.load_state_dict(acting)
    with torch.no_grad():
        expected = agent.policy.dist(buf["obs"].flatten(0, 1)).raw.view_as(buf["logits"])
    torch.testing.assert_close(buf["logits"], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("algo,num_envs,batched", [("ppo", 8, True), ("a2c", 8, True), ("ppo", 2, False)])
def test_rollout_values_in_one_batch_change_nothing(monkeypatch, algo, num_envs, batched):
    """Where the first rollout shows that the critic gives its per-step values bit for bit in
    one batch (8 CartPole envs here; not 2), later rollouts act without it and evaluate it once
    per rollout: the same run as with values recorded per step."""
    from policyopt.loops import OnPolicyRunner

    def run():
        agent = get_algorithm(algo)("CartPole-v1", seed=1, num_envs=num_envs, num_steps=256 // num_envs)
        agent.learn(256 * 6, progress=False)
        return agent.runner.batch_values, agent.nets.state_dict()

    decided, fast = run()
    assert decided is batched
    per_step = OnPolicyRunner.__init__

    def without_batch(self, *args, **kwargs):
        per_step(self, *args, **kwargs)
        self.batch_values = False

    monkeypatch.setattr(OnPolicyRunner, "__init__", without_batch)
    decided, slow = run()
    assert decided is False
    assert all(torch.equal(fast[k], slow[k]) for k in fast)
