"""Time every forward of a module called from outside any other module: the stages of a call.

These are the roots torch's ModuleTracker sees, so they match `FlopCount.by_stage()`: Whisper's
`generate` calls WhisperEncoder once per window batch and WhisperForConditionalGeneration once per
decoder step (decoder + LM head); a CTC model is one root per call. Global forward hooks keep a
depth count; the engine's `synchronize()` runs when a root starts and when it ends, so a root's
interval holds its own device work and nothing queued before it. Hook overhead is one Python call
per module forward (~1 us), a fraction of a percent of a decoder step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Invocation:
    """One root forward: which module, when it started and ended (perf_counter seconds)."""

    module: Any  # the nn.Module object (identity tells repeated calls of one module apart)
    name: str  # its class name, as ModuleTracker names a root
    start_s: float
    end_s: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)  # filled by an `on_end` callback

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


# on_end(invocation, args, kwargs, output, ran) -- `ran` lists (module, args) of every forward
# inside the root, the root first (only when track_modules is on)
EndCallback = Callable[[Invocation, tuple, dict, Any, list[tuple[Any, tuple]]], None]


class RootCalls:
    """Context manager recording every root forward as an `Invocation`, in call order."""

    def __init__(self, synchronize: Callable[[], None] = lambda: None,
                 on_start: Callable[[Invocation], None] | None = None,
                 on_end: EndCallback | None = None, track_modules: bool = False) -> None:
        self.synchronize = synchronize
        self.on_start, self.on_end = on_start, on_end
        self.track_modules = track_modules
        self.invocations: list[Invocation] = []
        self._depth = 0
        self._ran: list[tuple[Any, tuple]] = []
        self._handles: list[Any] = []

    def _pre(self, module: Any, args: tuple) -> None:
        if self._depth == 0:
            self.synchronize()
            inv = Invocation(module, type(module).__name__, time.perf_counter())
            self.invocations.append(inv)
            self._ran = []
            if self.on_start is not None:
                self.on_start(inv)
        self._depth += 1
        if self.track_modules:
            self._ran.append((module, args))

    def _post(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.synchronize()
            inv = self.invocations[-1]
            inv.end_s = time.perf_counter()
            if self.on_end is not None:
                self.on_end(inv, args, kwargs, output, self._ran)
            self._ran = []

    def __enter__(self) -> "RootCalls":
        from torch.nn.modules import module as nn_module

        self._handles = [
            nn_module.register_module_forward_pre_hook(self._pre),
            # always_call: the depth count stays right when a forward raises
            nn_module.register_module_forward_hook(self._post, with_kwargs=True, always_call=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._depth = 0


def runs(invocations: list[Invocation]) -> list[list[Invocation]]:
    """Maximal stretches of consecutive invocations of the same module (a decoder's steps for one window)."""
    out: list[list[Invocation]] = []
    for inv in invocations:
        if out and out[-1][-1].module is inv.module:
            out[-1].append(inv)
        else:
            out.append([inv])
    return out


def step_intervals(invocations: list[Invocation], step_module: Any) -> list[list[float]]:
    """Per run of `step_module`: each step's inter-token interval in seconds.

    A step's interval runs from the end of the root forward before it (the previous step, or the
    encoder for the first step) to the end of its own forward: the step's forward plus everything
    generate does between forwards (logits processors, token choice, beam bookkeeping, cache
    reordering, stopping checks). That is the per-token latency a streaming consumer sees; the
    last token's selection after its forward (one argmax) is left out.
    """
    out: list[list[float]] = []
    prev_end: float | None = None
    prev_module: Any = None
    for inv in invocations:
        if inv.module is step_module:
            if prev_module is not step_module:
                out.append([])
            start = prev_end if prev_end is not None else inv.start_s
            out[-1].append(inv.end_s - start)
        prev_end, prev_module = inv.end_s, inv.module
    return out
