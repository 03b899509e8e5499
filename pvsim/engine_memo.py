"""One engine per distinct engine state, not one per device: a hash-consed, memoized Updater.

Between two `handle` calls an Updater is a value (`Updater.fingerprint`). Devices that booted the
same way and then received the same events hold equal engines, and in a fleet almost all of them do.
So the fleet keeps one `EngineState` per distinct engine and, on each, the answer to every event it
has been fed: a device steps by a dict lookup, (state, event) -> (next state, commands). The engine
still decides everything: each transition is computed once, by `Updater.handle` on a copy of the
shared engine, and the copy is interned by its fingerprint.

Events that carry figures of one device (storage in MetadataReceived, GcDone and WaitTick; the
uptime in ContainerExited) rarely repeat. For them the engine says what decides its answer
(`Updater.memo_key`): a metadata answer whose objects fit is remembered without its storage
figures; the others are computed on a copy and the result interned, which is where devices meet
again.

With `shared=False` (PVSIM_ENGINE_MEMO=0) every device gets its own Updater, stepped in place: the
same results, without the sharing (tests/test_sim_perf.py compares the two).
"""

from __future__ import annotations

from typing import Any

from shared.engine import events as E

# events whose fields belong to one device: looked up never, interned always (callers that look up
# `EngineState.after` themselves, to save a call on the hot path, skip these kinds)
PER_DEVICE = _PER_DEVICE = frozenset({E.MetadataReceived, E.GcDone, E.WaitTick, E.ContainerExited})


class EngineState:
    """A device's engine as the simulator sees it; never mutated while shared."""

    __slots__ = ("updater", "after", "after_id", "watches_hub", "accepts_remote_steps")

    def __init__(self, updater: Any) -> None:
        self.updater = updater
        self.after: dict[Any, tuple[EngineState, list]] = {}
        # the same answers by id(event), for events that are interned for the whole run (a caller
        # that knows which fills it): hashing a frozen dataclass event (a PendingSteps holds a
        # whole State) costs more than the step it looks up
        self.after_id: dict[int, tuple[EngineState, list]] = {}
        self.refresh()

    def refresh(self) -> None:
        # read on every poll and wake: plain attributes, not the Updater's properties
        self.watches_hub = self.updater.watches_hub
        self.accepts_remote_steps = self.updater.accepts_remote_steps


class EngineMemo:
    def __init__(self, updater_class: Any, config: Any, *, shared: bool = True) -> None:
        self.Updater = updater_class
        self.config = config
        self.shared = shared
        self.states: dict[tuple, EngineState] = {}
        self.computed = 0  # transitions computed by the engine (the rest were looked up)

    def boot(self, view: E.DiskView) -> tuple[EngineState, list]:
        updater, commands = self.Updater.boot(view, self.config)
        self.computed += 1
        return self._intern(updater), commands

    def handle(self, state: EngineState, event: Any) -> tuple[EngineState, list]:
        if not self.shared:
            commands = state.updater.handle(event)
            state.refresh()
            return state, commands
        key: Any = event
        kind = type(event)
        if kind in _PER_DEVICE:
            key = state.updater.memo_key(event)
            if key is None:
                return self._compute(state, event)
            key = (kind, key)  # never equal to an event
        hit = state.after.get(key)
        if hit is None:
            hit = state.after[key] = self._compute(state, event)
        return hit

    def peek(self, state: EngineState, event: Any) -> tuple[EngineState, list]:
        """The step `handle` takes, with `state` left as it is (unshared, `handle` steps it in place)."""
        return self.handle(state, event) if self.shared else self._compute(state, event)

    def _compute(self, state: EngineState, event: Any) -> tuple[EngineState, list]:
        updater = state.updater.copy()
        commands = updater.handle(event)
        self.computed += 1
        return self._intern(updater), commands

    def _intern(self, updater: Any) -> EngineState:
        if not self.shared:
            return EngineState(updater)
        key = updater.fingerprint()
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = EngineState(updater)
        return state
