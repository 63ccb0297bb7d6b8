"""Tabular RL in NumPy: finite MDPs with a known model, dynamic programming, model-free control.

- ``mdp``: ``FiniteMDP`` (P[s, a, s'], R[s, a], gamma, terminal states) and its builders.
- ``dp``: policy evaluation (iterative, exact), value iteration, policy iteration.
- ``model_free``: epsilon-greedy policies, step sizes, the SARSA / Q-learning / Expected SARSA
  targets, Monte-Carlo returns.
- ``agents``: the registered algorithms (``value-iteration``, ``policy-iteration``,
  ``mc-control``, ``sarsa``, ``expected-sarsa``, ``q-learning``), on ``base.TabularAgent``.
- ``plot``: values and greedy policies drawn on the grid of grid-shaped envs.
"""
