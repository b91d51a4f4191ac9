"""Monte Carlo tree search over layer decision vectors, with no model inside.

A state is a decision vector ``d`` of length ``L`` (0 = skip, 1 = execute, 2 = repeat); the root is
all ones, the model's default path. One action turns a state into a child: skip one executed layer,
skip up to ``max_skip`` consecutive executed layers, or repeat one executed layer once. With sublayer
units (``SearchConfig.unit_costs``) an executed layer may also run its MLP alone (3) or its attention
alone (4), and such a layer may skip the unit it kept; lengths are then costs in layers (:func:`path_cost`).

The tree never runs a model. :class:`PathSearch` proposes a path with :meth:`PathSearch.request`
and is told its reward (in ``[0, 1]``, 1 = correct) with :meth:`PathSearch.give`, so many trees
advance in lockstep and one batched forward pass scores the requests of all of them
(:func:`run_lockstep`). Each search is a generator coroutine that yields the paths it needs.

Selection scores a child by ``Q/N + c * sqrt(ln N_parent / N) - length_penalty * sum(d) / L`` and,
with probability ``random_prob``, picks a uniformly random child instead. A node holds every action
of its state as a possible child (about ``3 L``), so expanding all of them before descending would
keep 50 simulations at depth one. Progressive widening bounds this: a node with ``N`` visits holds at
most ``ceil(widen_k * N ** widen_alpha)`` children, and a new child is drawn uniformly from the
untried actions by the tree's seeded RNG. The reward of the new child is backpropagated along the
selected path. Rewards are memoized per path: a path is requested at most once per tree.

The search stops early when the default path was wrong and some correct path is found, or when a
correct path at least ``early_stop_margin`` layers shorter than the default is found. The chosen path
is the shortest correct one (ties: fewer repeats, then the lexicographically smallest), or the root
when nothing correct was found.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

Path = tuple[int, ...]
SearchCoroutine = Generator[Path, float, None]


@dataclass
class SearchConfig:
    """Settings of one tree search over decision vectors."""

    simulations: int = 50
    """Number of selection-expansion-backpropagation rounds after the root is scored."""
    c: float = 1.8
    """Exploration constant of the UCT term."""
    length_penalty: float = 3.0
    """Weight of the executed-layer fraction ``sum(d) / L`` subtracted from each child's score."""
    random_prob: float = 0.1
    """Probability of descending into a uniformly random child instead of the best-scoring one."""
    max_skip: int = 2
    """Longest run of consecutive executed layers one action may skip (0 disables skipping)."""
    allow_repeat: bool = True
    """Whether an action may repeat an executed layer once."""
    min_layers: int = 1
    """Never propose a path executing fewer layers than this (``sum(d) >= min_layers``)."""
    widen_k: float = 1.0
    """Progressive widening: a node with N visits holds at most ``ceil(widen_k * N ** widen_alpha)``."""
    widen_alpha: float = 0.5
    """Progressive widening exponent (see ``widen_k``)."""
    early_stop_margin: int = 2
    """Stop once a correct path executes at least this many layers fewer than the default path."""
    unit_costs: tuple[float, float] | None = None
    """Sublayer units (``--units sublayer``): the cost, in layers, of running a layer's MLP alone (3) and
    its attention alone (4). Actions then also switch an executed layer to either and skip the unit left;
    every length (penalty, preference, ``min_layers``, early stop) is this cost. None: blocks only."""

    def __post_init__(self) -> None:
        checks = {
            "simulations": self.simulations >= 0,
            "c": self.c >= 0,
            "random_prob": 0.0 <= self.random_prob <= 1.0,
            "max_skip": self.max_skip >= 0,
            "min_layers": self.min_layers >= 0,
            "widen_k": self.widen_k > 0,
            "widen_alpha": self.widen_alpha >= 0,
            "early_stop_margin": self.early_stop_margin >= 0,
            "unit_costs": self.unit_costs is None
            or (len(self.unit_costs) == 2 and all(0.0 < c < 1.0 for c in self.unit_costs)),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SearchConfig.{name} = {getattr(self, name)!r} is out of range")


@dataclass
class SearchResult:
    """Outcome of one tree search."""

    decisions: Path
    """The chosen path: the shortest correct path, or the root if none was correct."""
    layers: float
    """Layers the chosen path costs, ``sum(decisions)`` for blocks (see :func:`path_cost`)."""
    reward: float
    """Reward of the chosen path."""
    base_reward: float
    """Reward of the default (all-execute) path."""
    correct_paths: list[Path] = field(default_factory=list)
    """Every correct path found (the root included when correct), preferred first."""
    simulations: int = 0
    """Simulations run (memoized ones included; the root evaluation is not one)."""
    evaluations: int = 0
    """Distinct paths whose reward was requested, the root included."""


def tree_seed(seed: int, example_id: str) -> int:
    """Derive the RNG seed of one example's tree, stable across processes and Python versions.

    Args:
        seed: The run's global seed.
        example_id: Identifier of the example the tree searches for.

    Returns:
        A 64-bit non-negative integer.
    """
    digest = hashlib.sha256(f"{seed}\x00{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def path_cost(path: Path, config: SearchConfig | None = None) -> float:
    """The layers a path costs: ``sum(d)`` for blocks; a unit counts its ``unit_costs`` share."""
    units = config.unit_costs if config is not None else None
    if units is None:
        return sum(path)
    return sum(units[d - 3] if d >= 3 else d for d in path)


def child_paths(path: Path, config: SearchConfig) -> list[Path]:
    """List the paths one action away from ``path``, in a fixed order.

    Args:
        path: A decision vector.
        config: Which actions are allowed (``max_skip``, ``allow_repeat``, ``min_layers``, ``unit_costs``).

    Returns:
        Distinct child paths: for each executed layer i, skips of 1..max_skip executed layers
        starting at i, then the repeat of layer i, then (with units) layer i's MLP alone and its attention
        alone; a layer running one unit may skip it. Children costing less than ``min_layers`` are left out.
    """
    total, units = path_cost(path, config), config.unit_costs
    children = []
    for i, decision in enumerate(path):
        if units is not None and decision >= 3 and total - units[decision - 3] >= config.min_layers:
            children.append(path[:i] + (0,) + path[i + 1 :])
        if decision != 1:
            continue
        for width in range(1, config.max_skip + 1):
            span = path[i : i + width]
            if len(span) < width or any(d != 1 for d in span) or total - width < config.min_layers:
                break
            children.append(path[:i] + (0,) * width + path[i + width :])
        if config.allow_repeat:
            children.append(path[:i] + (2,) + path[i + 1 :])
        for unit in (3, 4) if units is not None else ():
            if total - 1 + units[unit - 3] >= config.min_layers:
                children.append(path[:i] + (unit,) + path[i + 1 :])
    return children


def preference_key(path: Path, config: SearchConfig | None = None) -> tuple[float, int, Path]:
    """Sort key among correct paths: lower cost (layers), then fewer repeats, then lexicographic."""
    return path_cost(path, config), path.count(2), path


class _Node:
    """One tree node: a path, its visit statistics and its children."""

    __slots__ = ("path", "parent", "visits", "value", "children", "untried")

    def __init__(self, path: Path, parent: _Node | None) -> None:
        self.path = path
        self.parent = parent
        self.visits = 0
        self.value = 0.0
        self.children: list[_Node] = []
        self.untried: list[Path] | None = None


class PathSearch:
    """MCTS over the decision vectors of one example, driven by request/give.

    Example:
        >>> search = PathSearch(num_layers=4, seed=0)
        >>> while (path := search.request()) is not None:
        ...     search.give(1.0 if path[1] == 0 else 0.0)
        >>> search.result().decisions[1]
        0
    """

    def __init__(self, num_layers: int, seed: int, config: SearchConfig | None = None) -> None:
        """Create a search.

        Args:
            num_layers: L, the length of every decision vector.
            seed: Seed of the tree's RNG (see :func:`tree_seed`).
            config: Search settings; ``SearchConfig()`` when None.
        """
        self.config = config if config is not None else SearchConfig()
        if num_layers < 1:
            raise ValueError(f"num_layers is {num_layers}, expected at least 1")
        if self.config.min_layers > num_layers:
            raise ValueError(f"min_layers is {self.config.min_layers}, more than num_layers={num_layers}")
        self.num_layers = num_layers
        self.root_path: Path = (1,) * num_layers
        self._rng = random.Random(seed)
        self._memo: dict[Path, float] = {}
        self._known: dict[Path, float] = {}  # rewards scored before the tree asked (``prime``)
        self._correct: set[Path] = set()
        self._shortest_correct: float | None = None
        self._simulations = 0
        self._coroutine = self._search()
        self._pending: Path | None = None
        self._started = False
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the search has finished (``request`` returns None from now on)."""
        return self._done

    def request(self) -> Path | None:
        """Return the next path whose reward is needed, or None when the search is finished.

        Calling it again before :meth:`give` returns the same path.
        """
        if not self._started:
            self._started = True
            self._advance(lambda: next(self._coroutine))
        return self._pending

    def give(self, reward: float) -> None:
        """Report the reward of the path last returned by :meth:`request`.

        Args:
            reward: A value in ``[0, 1]``; 1 means the path's output was correct.
        """
        if self._pending is None:
            raise RuntimeError("give() called with no pending request; call request() first")
        reward = float(reward)
        if not 0.0 <= reward <= 1.0:
            raise ValueError(f"reward for path {self._pending} is {reward}, expected a value in [0, 1]")
        self._pending = None
        self._advance(lambda: self._coroutine.send(reward))

    def prime(self, rewards: dict[Path, float]) -> None:
        """Rewards already scored elsewhere (a sweep of single edits): the tree takes them without asking.

        The search runs exactly as if it had requested them: a path is counted (memoized, correct, an
        evaluation) only when the tree reaches it.
        """
        for path, reward in rewards.items():
            if len(path) != self.num_layers or not 0.0 <= float(reward) <= 1.0:
                raise ValueError(f"cannot prime path {path} with reward {reward}")
            self._known[tuple(path)] = float(reward)

    def result(self) -> SearchResult:
        """Summarise the search so far (final once :attr:`done`); needs the root's reward."""
        if self.root_path not in self._memo:
            raise RuntimeError("result() needs the reward of the root path; request() and give() first")
        correct = sorted(self._correct, key=lambda path: preference_key(path, self.config))
        best = correct[0] if correct else self.root_path
        return SearchResult(
            decisions=best,
            layers=path_cost(best, self.config),
            reward=self._memo[best],
            base_reward=self._memo[self.root_path],
            correct_paths=correct,
            simulations=self._simulations,
            evaluations=len(self._memo),
        )

    def _advance(self, step: Callable[[], Path]) -> None:
        """Run the coroutine to its next request, marking the search done when it returns."""
        try:
            self._pending = step()
        except StopIteration:
            self._pending = None
            self._done = True

    def _search(self) -> SearchCoroutine:
        """The whole search as a coroutine: yields paths, receives their rewards."""
        root = _Node(self.root_path, None)
        reward = yield from self._reward(root.path)
        root.visits, root.value = 1, reward
        while self._simulations < self.config.simulations and not self._should_stop():
            self._simulations += 1
            yield from self._simulate(root)

    def _simulate(self, root: _Node) -> SearchCoroutine:
        """One simulation: descend, widen one node by one child, score it, backpropagate."""
        node = root
        while True:
            if self._may_widen(node):
                child = _Node(self._draw_untried(node), node)
                node.children.append(child)
                reward = yield from self._reward(child.path)
                self._backpropagate(child, reward)
                return
            if not node.children:  # no action is possible from this state: revisit it
                self._backpropagate(node, self._memo[node.path])
                return
            node = self._select(node)

    def _reward(self, path: Path) -> Generator[Path, float, float]:
        """Return the memoized reward of ``path``, yielding it as a request the first time."""
        if path in self._memo:
            return self._memo[path]
        reward = self._known[path] if path in self._known else (yield path)
        self._memo[path] = reward
        if reward >= 1.0:
            self._correct.add(path)
            layers = path_cost(path, self.config)
            if self._shortest_correct is None or layers < self._shortest_correct:
                self._shortest_correct = layers
        return reward

    def _should_stop(self) -> bool:
        """Apply the two early-stopping rules."""
        if self._shortest_correct is None:
            return False
        if self._memo[self.root_path] < 1.0:
            return True
        return self._shortest_correct <= self.num_layers - self.config.early_stop_margin

    def _may_widen(self, node: _Node) -> bool:
        """Whether ``node`` has an untried action and room for another child."""
        if node.untried is None:
            node.untried = child_paths(node.path, self.config)
        limit = math.ceil(self.config.widen_k * node.visits**self.config.widen_alpha)
        return bool(node.untried) and len(node.children) < limit

    def _draw_untried(self, node: _Node) -> Path:
        """Remove and return a uniformly random untried child path of ``node``."""
        untried = node.untried
        index = self._rng.randrange(len(untried))
        untried[index], untried[-1] = untried[-1], untried[index]
        return untried.pop()

    def _select(self, node: _Node) -> _Node:
        """Pick the child to descend into: random with ``random_prob``, else the best score."""
        if self._rng.random() < self.config.random_prob:
            return self._rng.choice(node.children)
        return max(node.children, key=lambda child: self._score(child, node.visits))

    def _score(self, child: _Node, parent_visits: int) -> float:
        """UCT value of ``child`` minus the executed-layer penalty."""
        cfg = self.config
        explore = cfg.c * math.sqrt(math.log(parent_visits) / child.visits)
        penalty = cfg.length_penalty * path_cost(child.path, cfg) / self.num_layers
        return child.value / child.visits + explore - penalty

    @staticmethod
    def _backpropagate(node: _Node | None, reward: float) -> None:
        """Add one visit with ``reward`` to ``node`` and each of its ancestors."""
        while node is not None:
            node.visits += 1
            node.value += reward
            node = node.parent


def run_lockstep(
    searches: list[PathSearch],
    evaluate: Callable[[list[Path], list[int]], list[float]],
) -> list[SearchResult]:
    """Advance several searches together, scoring each round's requests with one call.

    Each round collects one request from every unfinished search and calls
    ``evaluate(paths, tree_indices)`` once, where ``tree_indices[j]`` is the index in ``searches`` of
    the tree that asked for ``paths[j]``. The results equal those of running each search alone.

    Args:
        searches: The searches to drive.
        evaluate: Returns one reward in ``[0, 1]`` per requested path, in order.

    Returns:
        One result per search, in the order of ``searches``.
    """
    while True:
        indices, paths = [], []
        for index, search in enumerate(searches):
            path = search.request()
            if path is not None:
                indices.append(index)
                paths.append(path)
        if not paths:
            return [search.result() for search in searches]
        rewards = list(evaluate(paths, indices))
        if len(rewards) != len(paths):
            raise ValueError(f"evaluate returned {len(rewards)} rewards for {len(paths)} paths")
        for index, reward in zip(indices, rewards, strict=True):
            searches[index].give(reward)
