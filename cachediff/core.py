"""The caching core: DeepCache's algorithm (Ma, Fang, Wang 2024, Section 3) on hooks of an unmodified model.

Every accelerator of this library is a *session* on one denoiser, built from three parts:

- **cut**: a role per module (``Group.roles``). ``Skip`` modules run on full calls only; the
  ``Produce`` module's output is the feature kept from a full call (DeepCache's deep feature, which
  the shallow branch consumes); a ``Residual`` module keeps its output minus its input and re-adds it
  to its new input (transformer blocks). ``cachediff.unets.branch_plan`` cuts a U-Net at a skip
  branch; ``cachediff.modules.dit_rule`` cuts a DiT's middle blocks.
- **decide**: per call, a ``cachediff.policy`` policy says ``FULL`` or ``CACHED``: a static rule of
  steps (uniform, non-uniform, explicit, windows, refinements), or ``UNDECIDED`` until the *probe*
  has read the change of the group's shallow feature (the input of its first module, computed afresh
  on every call; the adaptive schedule). ``RUN`` runs a group without keeping anything new (per-phase
  cuts that keep full steps' features only).
- **act** (``cachediff.acts``): what a cached call hands out in place of a kept result: ``Replay``
  (DeepCache), ``Forecast`` (the polynomial through the results of the last k full calls), ``Zeros``
  (the paper's Table 5 ablation).

Per denoiser call, for each group, top to bottom::

    step, slot = clock.begin()                  # which step of the run, which call within the step
    decision = policy.decide(step)              # FULL, CACHED, RUN or UNDECIDED
    FULL if the slot is new or its input changed, or if something reads a skipped module (fail open)
    a call past the end of the scheduler's run  # another pipeline's: runs as the original, keeps nothing
    on reaching the group's first module:       # the probe (adaptive schedule, forecast fallback)
        history.observe(|x - x_prev| / |x_prev|);  decision = policy.resolve(step, history) if UNDECIDED
    Skip:     FULL -> run, record the output layout;   CACHED -> an uninitialised tensor of it
    Produce:  FULL -> run, kept = act.keep(kept, out, t);      CACHED -> act.give(kept, t)
    Residual: FULL -> run, kept = act.keep(kept, out - x, t);  CACHED -> x + act.give(kept, t)
    RUN -> run, keep what was kept (any role)

where t is the call's time (``act.time``: the step index, or the scheduler's timestep).

A cached call's ``Skip`` placeholders flow only into other skipped modules, so they cost no compute
and hold no memory between calls; the only memory held is what the act keeps.

The definition the code must equal, on a U-Net whose ops are listed in run order (down ops each
producing one skip, up ops each consuming one), is the reference in ``tests/test_toy.py``::

    h = conv_in(x) + t; skips = [h]
    for op in down[: all if full else branch]:  h = op(h); skips.append(h)
    if cached: h = kept; up = up[from the op consuming skip `branch`]
    for op, s in up:
        if s == branch and full: kept = h
        h = op(h if s is None else h + skips[s])

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> group = Group({"0": PRODUCE}, Static(lambda n: lambda step: step % 2 == 0))
    >>> with Session(net, [group]) as session:
    ...     outs = [net(torch.ones(1, 2)) for _ in range(3)]
    >>> session.stats.pattern, torch.equal(outs[0], outs[1])
    ('FCF', True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .acts import REPLAY
from .clock import StepClock, call_timestep
from .guard import Skippable
from .hooks import Hooks, Installed, clean, held
from .policy import CACHED, FULL, RUN, UNDECIDED, History, Policy, Static, relative_change
from .stats import Call, RunStats, Stopwatch
from .trees import clone, first_tensor, input_key, layout, placeholder, tree_nbytes


# ----------------------------------------------------------------------------- cut
class Skip:
    """Runs on full calls only; a cached call hands out an uninitialised tensor of its output's
    layout, which only other skipped modules read. Each role is bound to a module and the act:
    ``full`` says what a full call keeps and returns, ``cached`` what a cached call returns."""

    reuses = False  # a cached call counts as reusing a kept result

    def __init__(self, name: str, act):
        self.name, self.act = name, act

    def full(self, previous: Any, out: Any, x: torch.Tensor, t: float, probe) -> tuple[Any, Any]:
        return None, out

    def cached(self, kept: _Kept, x: torch.Tensor, t: float, probe) -> Any:
        return placeholder(*kept.layout, torch.empty)


class Produce(Skip):
    """Its output is the feature a full call keeps (DeepCache's deep feature); a cached call hands out
    the act's result in its place (a copy: the model may modify it in place)."""

    reuses = True

    def full(self, previous: Any, out: Any, x: torch.Tensor, t: float, probe) -> tuple[Any, Any]:
        return self.act.keep(previous, out, t, probe), clone(out)

    def cached(self, kept: _Kept, x: torch.Tensor, t: float, probe) -> Any:
        return clone(self.act.give(kept.value, kept.layout, t, probe))


class Residual(Skip):
    """Keeps its output minus its input; a cached call adds the act's result to its new input."""

    reuses = True

    def full(self, previous: Any, out: Any, x: torch.Tensor, t: float, probe) -> tuple[Any, Any]:
        if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor) or out.shape != x.shape:
            raise TypeError(
                f"{self.name}: residual mode needs a tensor output shaped like the input "
                f"{tuple(getattr(x, 'shape', ()))}; use mode='output'"
            )
        return self.act.keep(previous, out - x, t, probe), out

    def cached(self, kept: _Kept, x: torch.Tensor, t: float, probe) -> Any:
        return x + self.act.give(kept.value, kept.layout, t, probe)


SKIP, PRODUCE, RESIDUAL = "skip", "produce", "residual"  # the roles' names in a cut (``Group.roles``)
ROLES = {SKIP: Skip, PRODUCE: Produce, RESIDUAL: Residual}


@dataclass(frozen=True)
class Group:
    """Modules that are full or cached together: ``roles`` maps module names (``get_submodule``
    paths) to ``SKIP``, ``PRODUCE`` or ``RESIDUAL``; ``policy`` decides each call."""

    roles: dict[str, str]
    policy: Policy

    def __post_init__(self) -> None:
        bad = {n: r for n, r in self.roles.items() if r not in ROLES}
        if bad:
            raise ValueError(f"roles must be one of {', '.join(ROLES)}; got {bad}")


# ----------------------------------------------------------------------------- decide
# (the decisions, FULL, CACHED, RUN and UNDECIDED, are ``cachediff.policy``'s)


@dataclass
class _Kept:
    """What one module call position keeps between calls."""

    key: tuple | None  # layout of the module's first input; a change makes the module run
    layout: tuple  # layout of its output (placeholders, zeros)
    value: Any = None  # what the act keeps


@dataclass
class _GroupState:
    """One group's state in one slot."""

    history: History = field(default_factory=History)
    shallow: torch.Tensor | None = None  # the probe's input on the previous call
    kept: dict = field(default_factory=dict)  # (module name, occurrence) -> _Kept


@dataclass
class _Slot:
    """The state of one call position within a step (usually the only one)."""

    key: tuple | None  # (shape, dtype, device) of the input sample; a change forces a full call
    groups: list[_GroupState]


@dataclass
class _Active:
    """The call in progress."""

    step: int
    time: float  # in the act's variable (step index or timestep)
    slot: _Slot
    decisions: list  # per group: FULL, CACHED, RUN, or UNDECIDED until the probe resolves it
    probed: list  # per group: whether the probe ran
    change: torch.Tensor | float | None = None
    reused: list = field(default_factory=list)  # names of the modules that reused their kept result
    occurrence: dict = field(default_factory=dict)
    fresh: list = field(default_factory=list)  # what this call kept (_Kept) or probed (_GroupState)


def to_host(value: torch.Tensor) -> float:
    """A 0-d tensor's value on the host: the only host synchronisation of the core (adaptive
    schedule only, once per call)."""
    return value.item()


# ----------------------------------------------------------------------------- the session
class Session(Installed):
    """Caching on one denoiser: hooks (``enable``, ``disable``, or ``with``), step clock, run
    statistics and the per-call slot.

    Args:
        model: the denoiser, left unmodified (hooks on instance methods, removed by ``disable``).
        groups: the cut and the policy of each group of modules; a module in several groups follows
            the first.
        act: what cached calls hand out (``cachediff.acts``: ``Replay()``, ``Forecast(order)``,
            ``Zeros()``; ``act_for`` by a configuration's fields).
        pipeline: optional owner of a ``.scheduler`` whose ``step`` calls count steps and whose
            ``set_timesteps`` calls start new runs (``cachediff.clock``). Without it every call is
            one step and ``reset()`` starts a new run.
        track_change: record the shallow feature's per-call change in ``stats`` (the adaptive
            policy always does; it costs one stored feature).

    A denoiser compiled into CUDA graphs (``cachediff.compile_denoiser`` with ``mode="reduce-overhead"``
    or ``"max-autotune"``) hands out tensors of its graphs' memory pool, which the next replay of the
    same graph overwrites: there, after each call and outside the graphs, the session copies what it
    keeps (the act's features, the probe's input) and the call's output out of the pool.
    """

    def __init__(self, model: torch.nn.Module, groups: Sequence[Group], act=REPLAY, pipeline=None,
                 track_change: bool = False):  # fmt: skip
        super().__init__(model)
        self.pipeline, self.track_change = pipeline, track_change
        self._skippable, self._local, self._graphs = Skippable(), threading.local(), False
        self.clock = StepClock(pipeline, on_new_run=self._new_run)
        self._set_plan(groups, act)
        self.reset()

    def _set_plan(self, groups: Sequence[Group], act) -> None:
        self._groups, self.act = list(groups), act
        self._modules: dict[str, tuple[int, Skip]] = {}  # module name -> (group index, its bound role)
        for g, group in enumerate(self._groups):
            for name, role in group.roles.items():
                self._modules.setdefault(name, (g, ROLES[role](name, act)))
        self.reused = dict.fromkeys(self._modules, 0)

    # ----------------------------------------------------------------- lifecycle (``hooks.Installed``)
    def _install(self, hooks: Hooks) -> None:
        self._graphs = runs_as_cuda_graphs(self.model)
        hooks.wrap(self.model, self._wrap_root)
        for name, (g, role) in self._modules.items():
            hooks.wrap(self.model.get_submodule(name), self._wrap_module(g, role))
        self._skippable = Skippable.of(self.model, self._modules)

    def _start(self) -> None:
        self.clock.start()  # a new run

    def _drop(self) -> None:
        """What is kept; ``stats`` still describes the last run."""
        self.clock.detach()
        clean(held(self.model, self.pipeline))  # copies made while enabled (Text2Video-Zero's scheduler)
        self._slots = {}

    def reset(self, num_steps: int | None = None) -> None:
        """Start a new run: step 0, nothing kept. ``num_steps`` is needed by policies that depend on
        the run length on a bare model (a pipeline's scheduler tells the session)."""
        self.clock.reset(num_steps)

    def advance(self) -> None:
        """End the current step (for callers that drive a bare model with several calls per step)."""
        self.clock.advance()

    def _new_run(self, num_steps: int | None) -> None:
        self._slots: dict[int, _Slot] = {}
        self._active: _Active | None = None
        self.stats = RunStats()
        self.reused = dict.fromkeys(self._modules, 0)
        for group in self._groups:
            group.policy.start(num_steps)

    # ----------------------------------------------------------------- measurements
    @property
    def cache_nbytes(self) -> int:
        """Bytes held between calls: what the act keeps and the probe's previous inputs."""
        groups = [state for slot in self._slots.values() for state in slot.groups]
        return tree_nbytes([([k.value for k in state.kept.values()], state.shallow) for state in groups])

    def twin(self, model: torch.nn.Module) -> Session:
        """The same cut and act on another model of the same architecture (a ``meta`` copy, say),
        with a policy that makes call 0 full and every later call cached: for counting per-call MACs."""
        first_full = Static(lambda n: lambda step: step == 0)
        return Session(model, [Group(g.roles, first_full) for g in self._groups], self.act)

    # ----------------------------------------------------------------- one denoiser call
    def _wrap_root(self, original: Callable) -> Callable:
        def forward(*args, **kwargs):
            with self.clock.lock:  # the run's state, taken at once: another thread may start a new run
                position = self.clock.begin(lambda: call_timestep(args, kwargs, anywhere=True))
                slots, stats, reused = self._slots, self.stats, self.reused
            if position is None:  # another thread's call while this run goes on: the original's
                return original(*args, **kwargs)
            step, index = position
            sample = args[0] if args else kwargs.get("sample", first_tensor(kwargs))  # (B, C, H, W)
            watch = Stopwatch(sample.device if isinstance(sample, torch.Tensor) else torch.device("cpu"))
            active = None
            try:
                # A call past the end of the scheduler's run is another pipeline's: the original's.
                if not self.clock.beyond_run(step):
                    self._active = active = self._decide(step, slots, index, sample, args, kwargs)
                out = original(*args, **kwargs)  # the module hooks act on the decisions
                return self._out_of_graphs(out, active)
            finally:
                if active is not None:  # record what was done
                    for state, decision in zip(active.slot.groups, active.decisions, strict=True):
                        state.history.record(decision is not CACHED)  # UNDECIDED: no module of it ran
                    for name in active.reused:
                        reused[name] += 1
                    self._active = None
                change = active and active.change
                stats.calls.append(Call(step, not (active and active.reused), change, watch.stop()))
                self.clock.end()

        return forward

    def _out_of_graphs(self, out: Any, active: _Active | None) -> Any:
        """Under CUDA graphs, copies of the call's output and of what the call kept (see the class)."""
        if not self._graphs:
            return out
        for item in active.fresh if active is not None else ():
            if isinstance(item, _Kept):
                item.value = clone(item.value)
            else:
                item.shallow = clone(item.shallow)
        return clone(out)

    def _decide(self, step: int, slots: dict, index: int, sample, args: tuple, kwargs: dict) -> _Active:
        """Each group's decision for this call: its policy's, but FULL wherever the slot is new or its
        input changed, or something reads a skipped module (``cachediff.guard``)."""
        key, slot = input_key(sample), slots.get(index)
        # every policy is asked, a new slot's too: a static rule is built (and a bad one reported) at once
        histories = [s.history for s in slot.groups] if slot is not None else [None] * len(self._groups)
        decisions = [
            _decision(g.policy.decide(step, h)) for g, h in zip(self._groups, histories, strict=True)
        ]
        if slot is None or slot.key != key:
            slot = slots[index] = _Slot(key, [_GroupState() for _ in self._groups])
            decisions = [FULL] * len(self._groups)
        if any(d is not FULL for d in decisions) and self._skippable.read():
            decisions = [FULL] * len(self._groups)
        time = self.clock.call_time(step, args, kwargs, self.act.time)
        return _Active(step, time, slot, decisions, probed=[False] * len(self._groups))

    @property
    def _active(self) -> _Active | None:
        """The call in progress in this thread (module hooks of other threads' calls see none)."""
        return getattr(self._local, "active", None)

    @_active.setter
    def _active(self, active: _Active | None) -> None:
        self._local.active = active

    def _probe(self, active: _Active, g: int, state: _GroupState, x: torch.Tensor) -> None:
        """The shallow feature's change since the previous call; it resolves an undecided call.

        The change stays on the device (recorded for ``stats``) unless the policy reads it: the
        adaptive policy's decision is the one host synchronisation of a call (``to_host``)."""
        policy, x, change = self._groups[g].policy, x.detach(), None
        if state.shallow is not None and state.shallow.shape == x.shape:
            change = relative_change(x, state.shallow)  # a 0-d tensor
            if policy.probes:
                change = to_host(change)
                state.history.observe(change)
        state.shallow, active.change, active.probed[g] = x.clone(), change, True
        active.fresh.append(state)
        if active.decisions[g] is UNDECIDED:
            active.decisions[g] = _decision(policy.resolve(active.step, state.history))

    def _probes(self, g: int) -> bool:
        return self.track_change or self._groups[g].policy.probes or self.act.probes

    def _wrap_module(self, g: int, role: Skip) -> Callable[[Callable], Callable]:
        def factory(original: Callable) -> Callable:
            def forward(*args, **kwargs):
                active = self._active
                if active is None:  # called outside a denoiser call: behave as the original
                    return original(*args, **kwargs)
                state, x = active.slot.groups[g], first_tensor((args, kwargs))
                if not active.probed[g] and self._probes(g) and x is not None:  # the group's first module
                    self._probe(active, g, state, x)
                if active.decisions[g] is UNDECIDED:  # the probe could not run (no tensor input): fail open
                    active.decisions[g] = FULL
                n = active.occurrence[role.name] = active.occurrence.get(role.name, -1) + 1
                kept, key = state.kept.get((role.name, n)), input_key(x)
                probe = state.shallow if active.probed[g] else None
                kept = kept if kept is not None and kept.key == key else None  # nothing kept for this input
                if active.decisions[g] is CACHED and kept is not None:
                    if role.reuses:  # counted after the call: no run-long state inside a compiled graph
                        active.reused.append(role.name)
                    return role.cached(kept, x, active.time, probe)
                out = original(*args, **kwargs)
                if active.decisions[g] is RUN and kept is not None:  # runs, keeps the last full call's
                    return out
                value, returned = role.full(kept.value if kept else None, out, x, active.time, probe)
                state.kept[(role.name, n)] = _Kept(key, layout(out), value)
                active.fresh.append(state.kept[(role.name, n)])
                return returned

            return forward

        return factory


#: Set on a denoiser by ``cachediff.compile_denoiser`` when its mode captures CUDA graphs.
CUDA_GRAPHS = "_cachediff_cuda_graphs"


def runs_as_cuda_graphs(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward was compiled (``cachediff.compile_denoiser``) into CUDA graphs."""
    return bool(getattr(model, CUDA_GRAPHS, False))


def _decision(value) -> bool | str | None:
    """A policy's answer as ``FULL``, ``CACHED``, ``RUN`` or ``UNDECIDED``."""
    return UNDECIDED if value is None else RUN if value is RUN else bool(value)
