"""Pictures of a tabular solution: state values as a heatmap, the greedy policy as arrows.

``grid_layout`` knows how the states of grid-shaped envs sit on a grid (FrozenLake,
CliffWalking, ``MDPEnv`` with a ``grid_shape``) and draws Taxi as one 5x5 panel per
(passenger, destination) pair; other envs have no layout and get no picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from policyopt.algos.tabular.mdp import MDPEnv

ARROWS = {(-1, 0): "\u2191", (0, 1): "\u2192", (1, 0): "\u2193", (0, -1): "\u2190"}
FROZEN_LAKE_MOVES = ((0, -1), (1, 0), (0, 1), (-1, 0))  # left, down, right, up
CLIFF_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # up, right, down, left
TAXI_MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1))  # south, north, east, west; then pickup, dropoff
TAXI_LOCATIONS = "RGYB"


@dataclass
class GridPanel:
    """One grid of cells: ``cells[row, col]`` is a state index; ``labels`` are short marks
    (start, goal, hole, cliff); ``policy_shown`` is False on cells no episode rests in (cliff),
    which are drawn blank."""

    cells: np.ndarray  # [rows, cols] int
    labels: np.ndarray  # [rows, cols] str
    policy_shown: np.ndarray  # [rows, cols] bool
    title: str = ""


@dataclass
class GridLayout:
    panels: list[GridPanel]
    moves: tuple[tuple[int, int], ...]  # (d_row, d_col) of each moving action, drawn as an arrow
    marks: dict[int, str] = field(default_factory=dict)  # other actions, drawn as a letter


def _plain_panel(rows: int, cols: int, labels: np.ndarray | None = None, title: str = "") -> GridPanel:
    labels = np.full((rows, cols), "", dtype=object) if labels is None else labels
    return GridPanel(np.arange(rows * cols).reshape(rows, cols), labels, np.ones((rows, cols), dtype=bool), title)


def grid_layout(env: gym.Env) -> GridLayout | None:
    """How to draw ``env``'s states on grids, or None when they are not grid-shaped."""
    from gymnasium.envs.toy_text import CliffWalkingEnv, FrozenLakeEnv, TaxiEnv

    base = env.unwrapped
    if isinstance(base, FrozenLakeEnv):
        letters = np.vectorize(lambda b: b.decode())(base.desc).astype(object)
        letters[letters == "F"] = ""
        return GridLayout([_plain_panel(base.nrow, base.ncol, letters)], FROZEN_LAKE_MOVES)
    if isinstance(base, CliffWalkingEnv):
        rows, cols = base.shape
        panel = _plain_panel(rows, cols)
        panel.labels[base._cliff] = "C"
        panel.labels[rows - 1, 0], panel.labels[rows - 1, cols - 1] = "S", "G"
        panel.policy_shown = ~base._cliff
        return GridLayout([panel], CLIFF_MOVES)
    if isinstance(base, TaxiEnv):
        return _taxi_layout(base)
    if isinstance(base, MDPEnv) and base.grid_shape is not None:
        return GridLayout([_plain_panel(*base.grid_shape)], tuple(base.moves))
    return None


def _taxi_layout(base: gym.Env) -> GridLayout:
    """Taxi's 500 states = 25 taxi cells x 5 passenger places (4 stands or in the taxi) x 4
    destinations: one panel per (passenger, destination) pair, skipping the delivered ones."""
    rows, cols = base.max_row + 1, base.max_col + 1
    labels = np.full((rows, cols), "", dtype=object)
    for name, (r, c) in zip(TAXI_LOCATIONS, base.locs, strict=True):
        labels[r, c] = name
    panels = []
    for passenger in range(len(base.locs) + 1):
        for dest in range(len(base.locs)):
            if passenger == dest:
                continue
            cells = np.array([[base.encode(r, c, passenger, dest) for c in range(cols)] for r in range(rows)])
            where = "in taxi" if passenger == len(base.locs) else f"at {TAXI_LOCATIONS[passenger]}"
            panels.append(GridPanel(cells, labels, np.ones((rows, cols), dtype=bool), f"passenger {where} -> {TAXI_LOCATIONS[dest]}"))
    return GridLayout(panels, TAXI_MOVES, {4: "P", 5: "D"})


def plot_values(
    values: np.ndarray, policy: np.ndarray, terminal: np.ndarray, layout: GridLayout, path: str | Path, title: str = ""
) -> Path:
    """Save a PNG of ``values`` (``[S]``) as a heatmap on ``layout``'s grids, with the greedy
    ``policy`` (``[S]`` actions) as arrows on non-terminal cells and the values written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_panels = len(layout.panels)
    n_cols = min(4, n_panels)
    n_rows = -(-n_panels // n_cols)
    rows, cols = layout.panels[0].cells.shape
    scale = 0.75 if n_panels == 1 else 0.5
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(max(4.0, cols * scale * n_cols + 1.5), rows * scale * n_rows + 1.0), squeeze=False
    )
    vmin, vmax = float(values.min()), float(values.max())
    image = None
    for ax, panel in zip(axes.flat, layout.panels, strict=False):
        shown = np.ma.masked_where(~panel.policy_shown, values[panel.cells])  # blank cells no episode rests in (cliff)
        image = ax.imshow(shown, cmap="viridis", vmin=vmin, vmax=vmax)
        _annotate(ax, panel, values, policy, terminal, layout, small=n_panels > 1)
        ax.set_title(panel.title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n_panels:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="V(s)")
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _annotate(ax, panel: GridPanel, values, policy, terminal, layout: GridLayout, small: bool) -> None:
    mid = (values.max() + values.min()) / 2
    for (r, c), state in np.ndenumerate(panel.cells):
        color = "black" if values[state] > mid else "white"
        if panel.labels[r, c]:
            ax.text(c - 0.42, r - 0.42, panel.labels[r, c], ha="left", va="top", fontsize=7, color=color, weight="bold")
        if panel.policy_shown[r, c] and not terminal[state]:
            action = int(policy[state])
            symbol = ARROWS[layout.moves[action]] if action < len(layout.moves) else layout.marks.get(action, "?")
            ax.text(c, r - (0 if small else 0.08), symbol, ha="center", va="center", fontsize=9 if small else 14, color=color)
        if panel.policy_shown[r, c] and not small:
            ax.text(c, r + 0.3, f"{values[state]:.2f}", ha="center", va="center", fontsize=6, color=color)
