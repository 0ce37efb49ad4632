"""The designs: one record each, and every stage asks the record instead of branching on a design's name.

A design is a kind of study. Its record says what the core needs to know before any model runs: the
prompt schema its ``prompts.jsonl`` follows, whether its generated text gets labels, the unit kind its
ids name, the tables a captured run holds (the audit reads them only on the digests the journal
recorded), the analysis kinds that apply and their defaults (filled in once, when the plan loads, and
recorded as resolved in the ledger), the evidence type of its data, and which points of the evidence
standard apply.

The per-design work lives in the stage packages, found by the design's name:

- ``capture/designs/<name>.py``: how a run is captured (:mod:`capture.designs`);
- ``audit/designs/<name>.py``: how a captured run is loaded, its analyses, and its evidence facts
  (:mod:`audit.designs`).

Adding a design touches: one record here, one branch of ``schemas/study.schema.json`` (its ``design``
enum value and the block it requires), ``schemas/prompt-<name>.schema.json`` if its prompts differ,
``capture/designs/<name>.py``, ``audit/designs/<name>.py``, and their tests. Nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from . import artifacts

# The analysis settings every kind reads, and their defaults where the design does not set one.
ANALYSIS_DEFAULTS: Mapping[str, Mapping[str, object]] = MappingProxyType({
    "two_group": {"statistic": "welch_t", "tails": "two-sided", "test": "permutation", "null": "exchangeable"},
    "all_unit_baseline": {"statistic": "welch_t", "tails": "two-sided", "correction": "maxT_stepdown",
                          "family": "all_units", "test": "permutation", "null": "exchangeable"},
    "reproduction": {"statistic": "welch_t", "tails": "two-sided", "test": "permutation", "null": "exchangeable"},
    "register_vs_class": {"cov_type": "nonrobust"},
    "wsq_decomposition": {"statistic": "welch_t", "tails": "greater", "test": "permutation", "null": "exchangeable"},
    "ablation_drop": {"pairs": "headline", "mode": "combined", "tails": "greater", "correction": "none",
                      "test": "paired_sign_flip"},
    "specificity": {"pairs": "headline", "control": "control", "mode": "combined", "tails": "greater",
                    "statistic": "mean_diff", "test": "permutation", "null": "exchangeable"},
    # one SAE feature knocked down at a time (error term kept), max-T over the features tested
    "sae_knockdown": {"pairs": "headline", "position": "last", "features": "all_active", "min_active_pairs": 2,
                      "tails": "greater", "statistic": "mean_drop", "test": "paired_sign_flip", "null": "symmetric",
                      "correction": "maxT_stepdown", "min_variance_explained": 0.7},
    "basin_comparison": {"zone": "trimmed"},
    "duplicate_check": {},
    # residual patching clean -> corrupted at each (source layer, position) of a grid, at the target slot and the margin
    "source_trace": {"pairs": "headline", "metric": "margin_restored", "source_layers": "all", "positions": "all",
                     "tails": "greater", "test": "paired_sign_flip", "null": "symmetric"},
})


# What each analysis kind computes (quantities a threshold may bound: ``alpha`` bounds ``p``; ``min_<q>``,
# ``max_<q>``, ``<q>_tolerance`` bound ``q``) and the parameters it reads by threshold-name prefix.
ANALYSIS_OUTPUTS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "two_group": {"quantities": ("p", "ratio", "cohen_d", "hedges_g", "auc", "mean_diff"), "parameters": ()},
    "all_unit_baseline": {"quantities": ("p", "target_rank", "target_percentile"), "parameters": ()},
    "reproduction": {"quantities": ("p", "ratio", "cohen_d", "reproduction_ratio", "reproduction_d"), "parameters": ()},
    "register_vs_class": {"quantities": ("p", "register_effect", "class_effect", "register_minus_class"), "parameters": ()},
    "wsq_decomposition": {"quantities": ("s_share", "p"), "parameters": ()},
    "ablation_drop": {"quantities": ("p", "mean_drop", "relative_drop"), "parameters": ()},
    # the claim's feature: adjusted p, mean drop over its active pairs, how many; and the SAE's quality
    "sae_knockdown": {"quantities": ("p", "mean_drop", "active_pairs", "variance_explained", "splice_margin_change"),
                      "parameters": ()},
    # a comparison of two model variants on identical tokens (the second run re-reads the first's texts)
    "basin_comparison": {"quantities": ("rank_correlation", "correlation", "rank_correlation_s", "correlation_s", "jaccard",
                                        "worst_layer_jaccard", "target_rank_a", "target_rank_b"), "parameters": ()},
    # two runs of one variant must agree token by token (generated ids and top-k sets exactly; weights within a bound)
    "duplicate_check": {"quantities": ("mismatched_tokens", "mismatched_topk", "weight_diff"), "parameters": ()},
    # at the preregistered cell: mean restored fraction over pairs, its bootstrap interval, sign-flip p of mean > 0
    "source_trace": {"quantities": ("p", "restored_fraction", "restored_fraction_ci_low", "restored_fraction_ci_high"),
                     "parameters": ()},
    "specificity": {"quantities": ("p", "specificity_ratio", "mean_drop", "control_mean_drop", "relative_drop",
                                   "control_relative_drop"),
                    "parameters": ("control_drop_floor",)},
})


def threshold_quantity(name: str) -> tuple[str | None, list[str]]:
    """The bound a threshold's name sets: (``"<="``/``">="``, candidate quantity names), or (None, [])
    for a name that bounds nothing (a parameter)."""
    if name == "alpha":
        return "<=", ["p"]
    if name.startswith("min_"):
        op, quantity = ">=", name[4:]
    elif name.startswith("max_"):
        op, quantity = "<=", name[4:]
    elif name.endswith("_tolerance"):
        op, quantity = "<=", name[: -len("_tolerance")]
    else:
        return None, []
    candidates = [quantity, quantity.removesuffix("_logits")]
    if "_" in quantity:
        candidates.append(quantity.split("_", 1)[1])
    return op, candidates


@dataclass(frozen=True)
class Design:
    """What the core knows of one design (see the module docstring)."""

    name: str
    description: str
    prompt_schema: str                 # schemas/<prompt_schema>.schema.json, one record per line
    needs_labels: bool                 # generated text is labelled with the frozen rubric before scores
    unit_kind: str                     # /units/kind: expert | head
    run_tables: tuple[str, ...]        # tables of a complete run folder the audit reads (digests checked)
    optional_tables: tuple[str, ...]   # tables present only when an analysis asks for them
    analysis_kinds: tuple[str, ...]    # kinds of /analyses that apply
    evidence_type: str                 # natural (observed activity) | intervention (ablation, steering)
    evidence_points: tuple[int, ...]   # points of the evidence standard that apply (others: not applicable)
    plan_block: str                    # the block of study.yaml the design requires (its schema branch)
    anchored_prompts: bool             # prompts carry lexical anchors that must occur in their text, and pairs
    analysis_overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    shardable: bool = False            # capture can split a run across processes (--shard i/n)
    # Points whose being unmet caps a directional claim at partly_held: the points that are properties of
    # the claim's own analysis. Points an other analysis establishes (a register contrast, a reproduction)
    # are claims of their own in the ledger and are recorded, not capping; point 8 is the scope lint, which
    # makes a claim unsupported.
    capping_points: tuple[int, ...] = ()
    # Quantities an analysis kind computes in this design beyond ANALYSIS_OUTPUTS (a bound on them is
    # checked at prereg against this design's list, so no design is promised what only another computes).
    extra_quantities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Defaults that apply instead when an analysis names a field: kind -> (field, defaults). The ablation
    # all-slot baseline with a `control` class compares two groups of pairs (headline drop minus control drop).
    analysis_overrides_when: Mapping[str, tuple[str, Mapping[str, object]]] = field(default_factory=dict)
    # What `lockstep discover` runs on a study of this design (None: no discovery): "probes" (attribution
    # patching of head slots on contrastive pairs) or "scan" (the routing journal's scan), and the fields of
    # the study's `discovery` block that apply to it.
    discovery: str | None = None
    discovery_fields: tuple[str, ...] = ()

    def outputs(self, kind: str) -> dict[str, tuple[str, ...]]:
        """What analysis ``kind`` computes in this design: ``{"quantities": ..., "parameters": ...}``."""
        base = ANALYSIS_OUTPUTS[kind]
        return {"quantities": base["quantities"] + tuple(self.extra_quantities.get(kind, ())), "parameters": base["parameters"]}

    def analysis_defaults(self, kind: str) -> dict[str, object]:
        """The defaults of an analysis kind in this design (overrides win over the shared ones)."""
        return {**ANALYSIS_DEFAULTS.get(kind, {}), **self.analysis_overrides.get(kind, {})}

    def resolve_analysis(self, analysis: dict, spec: dict) -> dict:
        """``analysis`` with every default filled in: the spec each stage reads and the ledger records."""
        defaults = self.analysis_defaults(analysis["kind"])
        when = self.analysis_overrides_when.get(analysis["kind"])
        if when is not None and when[0] in analysis:
            defaults = {**defaults, **when[1]}
        resolved = {**defaults, **analysis}
        runs = (spec.get("runtime") or {}).get("runs") or []
        if "run" not in resolved and "runs" not in resolved and len(runs) == 1 and isinstance(runs[0], dict):
            resolved["run"] = runs[0].get("id")  # a study with one run: the analysis reads it (validate refuses otherwise)
        if analysis["kind"] == "ablation_drop" and "relative_drop" not in analysis:
            resolved["relative_drop"] = spec.get("ablation", {}).get("relative_drop", "ratio_of_means")
        if "kind" in (spec.get("ablation") or {}) and analysis["kind"] in self.analysis_kinds and "ablation_kind" not in analysis:
            resolved["ablation_kind"] = spec["ablation"]["kind"]
        return resolved


ROUTING = Design(
    name="routing",
    description="W/S/Q of routed experts between prompt classes and generated registers",
    prompt_schema="prompt-routing",
    needs_labels=True,
    unit_kind="expert",
    run_tables=(artifacts.MANIFEST, artifacts.TEXTS, artifacts.UNITS, artifacts.LABELS),
    optional_tables=(),
    analysis_kinds=("two_group", "all_unit_baseline", "reproduction", "register_vs_class", "wsq_decomposition",
                    "basin_comparison", "duplicate_check"),
    evidence_type="natural",
    evidence_points=(1, 2, 3, 4, 5, 6, 7, 8),
    plan_block="capture",
    anchored_prompts=True,
    shardable=True,
    capping_points=(1, 2, 3, 6),
    extra_quantities={"all_unit_baseline": ("target_rank_upper", "p_target_first")},
    discovery="scan",
    discovery_fields=("max_new_tokens", "decoding", "top_units", "contexts", "window", "contrast"),
)

ABLATION = Design(
    name="ablation",
    description="head-slot ablation on contrastive pairs: logit-difference margins and their drop",
    prompt_schema="prompt-ablation",
    needs_labels=False,
    unit_kind="head",
    run_tables=(artifacts.MANIFEST, artifacts.PAIRS, artifacts.ABLATIONS),
    optional_tables=(artifacts.BASELINE, artifacts.SAE_KNOCKDOWN, artifacts.SOURCE_TRACE),
    analysis_kinds=("ablation_drop", "specificity", "all_unit_baseline", "sae_knockdown", "source_trace"),
    evidence_type="intervention",
    evidence_points=(8,),
    plan_block="ablation",
    anchored_prompts=False,
    analysis_overrides={"all_unit_baseline": {"statistic": "mean_drop", "tails": "greater", "pairs": "headline",
                                              "test": "paired_sign_flip", "null": "symmetric"}},
    analysis_overrides_when={"all_unit_baseline": ("control", {"statistic": "welch_t", "test": "permutation",
                                                               "null": "equal_means"})},
    discovery="probes",
    discovery_fields=("pairs", "probes", "top_k", "exact_check"),
)

DESIGNS: Mapping[str, Design] = MappingProxyType({d.name: d for d in (ROUTING, ABLATION)})


def design_of(name: str) -> Design:
    """The record of design ``name``; KeyError naming the registered designs otherwise."""
    try:
        return DESIGNS[name]
    except KeyError:
        raise KeyError(f"no design {name!r}; registered: {', '.join(sorted(DESIGNS))}") from None
