"""Model variants: the main model (``base``) and the others a study declares for a basin comparison.

A study names its model once (``/model``); ``/model/variants`` adds other variants by name, each setting
only what differs (weights, revision, dtype, a builtin option, and its runtime surface: chat template,
thinking, system prompt). A run names its variant (``/runtime/runs/*/variant``, default ``base``).

Runs of different variants are kept apart unless compared (the routing journal's caveat 6): every
analysis that reads two runs, except a comparison kind (:data:`COMPARISONS`), must read runs of one
identity. The plan is checked at validate (:func:`plan_difference`), the captured manifests at audit
(:func:`manifest_difference`); both name the field that differs.
"""

from __future__ import annotations

from typing import Any

BASE = "base"
"""The name of the variant ``/model`` itself describes."""

COMPARISONS = ("basin_comparison",)
"""Analysis kinds that compare variants; every other kind refuses runs of different identities."""

# What makes a variant's identity in the plan: fields of the merged model block, then the runtime surface.
MODEL_FIELDS = ("id", "source", "path", "revision", "dtype", "weights_sha256", "tokenizer_sha256", "builtin", "trust_remote_code")
SURFACE_FIELDS = ("chat_template", "enable_thinking", "system_prompt")

# What makes a run's identity in its manifest: (label, path in the manifest).
MANIFEST_FIELDS = (
    ("model id", ("model", "id")),
    ("revision", ("model", "revision")),
    ("weights digest", ("model", "weights_sha256")),
    ("dtype", ("model", "dtype")),
    ("tokenizer digest", ("model", "tokenizer_sha256")),
    ("chat template", ("runtime_surface", "chat_template")),
    ("thinking", ("runtime_surface", "enable_thinking")),
    ("system prompt", ("runtime_surface", "system_prompt")),
    ("template digest", ("tokenizer", "template", "sha256")),
)


def variant_name(run: dict) -> str:
    """The variant a run uses (``base`` when it names none)."""
    return run.get("variant") or BASE


def model_of(spec: dict, name: str) -> dict:
    """The model block of variant ``name``: ``/model`` with the variant's own fields over it."""
    base = {k: v for k, v in spec["model"].items() if k != "variants"}
    if name == BASE:
        return base
    own = {k: v for k, v in spec["model"]["variants"][name].items() if k != "runtime"}
    if isinstance(base.get("builtin"), dict) and isinstance(own.get("builtin"), dict):
        own["builtin"] = {**base["builtin"], **own["builtin"]}  # a builtin variant names only the options it changes
    return {**base, **own}


def runtime_of(spec: dict, name: str) -> dict:
    """The runtime block a variant runs under: ``/runtime`` with the variant's surface over it."""
    own = {} if name == BASE else spec["model"]["variants"][name].get("runtime", {})
    return {**spec["runtime"], **own}


def spec_for(spec: dict, name: str) -> dict:
    """``spec`` as if variant ``name`` were the study's model: what capture reads to load and render it."""
    return {**spec, "model": model_of(spec, name), "runtime": runtime_of(spec, name)}


def identity_of(spec: dict, name: str) -> dict[str, Any]:
    """The planned identity of a variant: model fields then runtime-surface fields (``/runtime/...``)."""
    model, runtime = model_of(spec, name), runtime_of(spec, name)
    out = {f"/model/{k}": model.get(k) for k in MODEL_FIELDS if k != "builtin"}
    builtin = model.get("builtin") or {}
    out.update({f"/model/builtin/{k}": builtin.get(k) for k in ("name", "seed", "plant", "perturb", "rewire")})
    out.update({f"/runtime/{k}": runtime.get(k) for k in SURFACE_FIELDS})
    return out


def plan_difference(spec: dict, a: str, b: str) -> list[str]:
    """The fields (JSON pointers) in which variants ``a`` and ``b`` differ in the plan; empty when the same."""
    ia, ib = identity_of(spec, a), identity_of(spec, b)
    return [k for k in ia if ia[k] != ib[k]]


def _get(record: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def manifest_difference(first: dict, second: dict) -> list[tuple[str, Any, Any]]:
    """How two run manifests differ in identity: ``[(field, first's value, second's value)]``."""
    out = []
    for label, path in MANIFEST_FIELDS:
        x, y = _get(first, path), _get(second, path)
        if x != y:
            out.append((label, x, y))
    return out


def pooling_refusal(analysis: dict, manifests: dict[str, dict]) -> str | None:
    """Why an analysis that is not a comparison may not read these runs together (None when it may).

    ``manifests``: run id -> manifest, in the order the analysis names its runs.
    """
    if analysis["kind"] in COMPARISONS or len(manifests) < 2:
        return None
    (first, m1), *rest = manifests.items()
    for second, m2 in rest:
        found = manifest_difference(m1, m2)
        if found:
            what = "; ".join(f"{label} {x!r} in {first} but {y!r} in {second}" for label, x, y in found)
            return (f"runs {first} and {second} were captured on different model variants ({what}): a {analysis['kind']} "
                    f"analysis does not pool variants; compare them with a basin_comparison analysis instead")
    return None


def check_plan(spec: dict, design, problem) -> None:
    """The cross-file rules of variants, teacher-forced runs and the analyses that read two runs.

    ``problem(pointer, message)`` records one problem of study.yaml; ``design`` is the study's record.
    """
    variants = (spec["model"].get("variants") or {})
    runs = {r["id"]: (i, r) for i, r in enumerate(spec["runtime"]["runs"])}
    compares = any(kind in design.analysis_kinds for kind in COMPARISONS)
    if variants and not compares:
        problem("/model/variants", f"a {design.name} study offers no comparison of variants ({', '.join(COMPARISONS)}); "
                "remove /model/variants")
    for name in variants:
        model = model_of(spec, name)
        if model.get("source") == "path" and not model.get("path"):
            problem(f"/model/variants/{name}", "has source 'path' but no path (set /model/variants/"
                    f"{name}/path to the variant's folder)")
        if model.get("source") == "builtin" and not model.get("builtin"):
            problem(f"/model/variants/{name}", "has source 'builtin' but no builtin block")
        builtin = model.get("builtin") or {}
        if builtin.get("rewire") and not builtin.get("plant"):
            problem(f"/model/variants/{name}/builtin/rewire", "moves the planted expert's routing, but the builtin model "
                    "has no plant")
        if not plan_difference(spec, BASE, name):
            problem(f"/model/variants/{name}", "is the same model and runtime surface as /model; a variant must differ in "
                    "something (weights, revision, dtype, a builtin option, or its runtime)")
    for i, run in enumerate(spec["runtime"]["runs"]):
        at = f"/runtime/runs/{i}"
        name = variant_name(run)
        if name != BASE and name not in variants:
            known = ", ".join([BASE, *sorted(variants)])
            problem(f"{at}/variant", f"names variant {name!r}, which /model/variants does not declare (known: {known})")
        if run["decoding"] != "teacher_forced":
            continue
        if not compares:
            problem(f"{at}/decoding", f"teacher_forced runs serve a comparison of variants, which a {design.name} study "
                    "does not offer")
        source = runs.get(run.get("source_run"))
        if source is None or source[1]["id"] == run["id"]:
            problem(f"{at}/source_run", f"names {run.get('source_run')!r}, which is not another run in /runtime/runs")
        elif source[1]["decoding"] not in ("greedy", "sample"):
            problem(f"{at}/source_run", f"names run {source[1]['id']!r} (decoding {source[1]['decoding']}); a teacher-forced "
                    "run re-reads the texts of a run that generated them (greedy or sample)")
    for i, analysis in enumerate(spec["analyses"]):
        _check_analysis_runs(spec, i, analysis, runs, problem)


def _same_rule(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "id"} == {k: v for k, v in b.items() if k != "id"}


def _check_analysis_runs(spec: dict, i: int, analysis: dict, runs: dict, problem) -> None:
    at = f"/analyses/{i}"
    kind = analysis.get("kind")
    named = [r for r in analysis.get("runs", []) if r in runs]
    declared = {BASE, *(spec["model"].get("variants") or {})}
    if any(variant_name(runs[r][1]) not in declared for r in named):
        return  # an undeclared variant: reported with its run
    if kind in ("basin_comparison", "duplicate_check"):
        if "runs" not in analysis or len(set(analysis["runs"])) != 2:
            problem(f"{at}/runs" if "runs" in analysis else at, f"a {kind} analysis names two different runs in `runs`")
            return
        if len(named) < 2:
            return  # an unknown run: reported by the reference check
        (_, a), (_, b) = runs[named[0]], runs[named[1]]
        if kind == "basin_comparison":
            if "unit" not in analysis:
                problem(at, "a basin_comparison names the target `unit` whose rank it reports in each variant")
            if b["decoding"] != "teacher_forced" or b.get("source_run") != a["id"]:
                problem(f"{at}/runs", f"compares {a['id']!r} with {b['id']!r}, but routing is compared on identical tokens: "
                        f"the second run must re-read the first (decoding: teacher_forced, source_run: {a['id']})")
            return
        fields = plan_difference(spec, variant_name(a), variant_name(b))
        if fields:
            problem(f"{at}/runs", f"reads runs {a['id']!r} (variant {variant_name(a)}) and {b['id']!r} (variant "
                    f"{variant_name(b)}), which differ in {', '.join(fields)}: a duplicate_check compares two runs of one variant")
        elif not _same_rule({**a, "variant": None}, {**b, "variant": None}):
            differ = sorted(k for k in set(a) | set(b) if k not in ("id", "variant") and a.get(k) != b.get(k))
            problem(f"{at}/runs", f"{a['id']!r} and {b['id']!r} differ in {', '.join(differ)}; a duplicate_check compares two "
                    "runs of one variant under one decoding rule")
        return
    if kind in COMPARISONS or len(set(named)) < 2:
        return
    names = [variant_name(runs[r][1]) for r in named]
    for other, other_name in zip(named[1:], names[1:]):
        fields = plan_difference(spec, names[0], other_name)
        if fields:
            problem(f"{at}/runs", f"reads runs {named[0]!r} (variant {names[0]}) and {other!r} (variant {other_name}), "
                    f"which differ in {', '.join(fields)}: a {kind} analysis does not pool model variants (compare them "
                    "with a basin_comparison analysis)")
