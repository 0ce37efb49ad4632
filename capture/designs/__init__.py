"""Per-design capture: one module per design, found by the design's name (``capture/designs/<name>.py``).

The orchestrator (:func:`capture.run.run_capture`) runs the same loop for every design: check the
request, load, refuse or record deviations, prepare, then for each preregistered run skip it if complete,
else capture it. A design module supplies the steps:

``OPTIONS``
    the design-specific options it accepts (e.g. ``slots_per_forward``); others are refused.
``check_request(frozen, runs, *, shard, options)``
    refuse what cannot be captured, before any model loads.
``setup(frozen, source, identity, overrides, device_map, options) -> Setup``
    load the model the orchestrator resolved and identified (:func:`capture.runtime.load`);
    ``Setup.ld`` is the :class:`capture.runtime.Loaded`.
``prepare(frozen, setup, overrides) -> work``
    what every run shares (encoded prompts), or None.
``capture_run(frozen, run, setup, work, store, *, shard, progress, deviations) -> bool``
    capture one run into ``store`` (resumable); True once the run is complete.
``journal_details(paths) -> dict``
    what the capture's journal entry records beyond the runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lockstep.designs import DESIGNS, design_of

STEPS = ("OPTIONS", "check_request", "setup", "prepare", "capture_run", "journal_details")


def capture_design(name: str) -> ModuleType:
    """The capture module of design ``name`` (KeyError for a design with no record)."""
    design_of(name)
    return importlib.import_module(f"{__name__}.{name}")


def registered() -> dict[str, ModuleType]:
    """Every registered design's capture module, by name."""
    return {name: capture_design(name) for name in sorted(DESIGNS)}
