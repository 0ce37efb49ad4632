"""Per-design audit: one module per design, found by the design's name (``audit/designs/<name>.py``).

A design module supplies:

``read_run(run_id, run_dir)``
    the captured run's tables (the checks its record calls for ran first: :func:`audit.data.load_run`).
``ANALYSES``
    ``{kind: function(frozen, analysis, runs, settings) -> Outcome}`` for every kind its record lists.
``evidence_facts(hypothesis, analysis, outcome, study_outcomes, study)``
    ``{point: (met, fact)}`` for the points of the evidence standard its record says apply (point 8,
    the scope lint, is the verdict's own).
``exclusions(frozen, run)``
    ``[{"rule", "description", "ids"}]``: the prompts or pairs of a run its analyses leave out, by rule
    (the report's first screen).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lockstep.designs import DESIGNS, design_of

PARTS = ("read_run", "ANALYSES", "evidence_facts", "exclusions")


def audit_design(name: str) -> ModuleType:
    """The audit module of design ``name`` (KeyError for a design with no record)."""
    design_of(name)
    return importlib.import_module(f"{__name__}.{name}")


def registered() -> dict[str, ModuleType]:
    """Every registered design's audit module, by name."""
    return {name: audit_design(name) for name in sorted(DESIGNS)}
