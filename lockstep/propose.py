"""``lockstep propose``: a draft confirmatory study from a discovery run (``lockstep discover``).

The draft names what discovery ranked best as its targets and nothing else it saw: its prompts are the
discovery study's pairs of every split but the discovery split (so the confirmatory analyses read pairs
discovery never read), its hypotheses are the ablation card's three tests of the proposed slots
(combined necessity, specificity against the control pairs where the study has them, the all-slot
baseline rank of the best slot), and its thresholds are left empty unless given (``--set NAME=VALUE``):
a number a verdict depends on is the researcher's to choose, and validation refuses an empty one.

The draft records where it came from (``discovery_source``: the discovery study, the seq and sha256 of
its ``discover`` journal entry, the sha256 of the ``discovery.json`` it wrote, the probe and the ranking),
and that block is frozen with the rest of the plan. ``lockstep verify`` on the confirmatory study
checks it: the entry exists in an intact journal, it was written before this study's freeze, and no pair
of this study has the content of a pair discovery read.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from . import artifacts
from .errors import ChainBroken, StageRefused, UsageError
from .fsio import atomic_write, canonical_json, sha256_bytes, sha256_file
from .gate import require_frozen
from .journal import read_journal

RECORD = "discovery.json"
PROBES = ("head_attribution", "exact")
THRESHOLDS = {
    "alpha": "Significance level of every test (sign-flip, permutation, max-T step-down).",
    "min_ratio": "Minimum ratio of the two groups' mean W (routing).",
    "min_cohen_d": "Minimum Cohen's d between the two groups (routing).",
    "reproduction_ratio_tolerance": "Largest allowed difference between the two runs' W ratios (routing reproduction).",
    "min_mean_drop_logits": "Minimum mean heldout headline drop, in logits, when the proposed slots are ablated together.",
    "min_specificity_ratio": "Minimum ratio of mean headline drop to mean control drop (denominator floored at control_drop_floor_logits).",
    "control_drop_floor_logits": "Floor, in logits, for the mean control drop in the specificity ratio.",
    "max_target_rank": "Worst rank of the best proposed slot among all slots in the all-slot baseline (ties ranked pessimistically).",
}


def pair_digest(record: dict) -> str:
    """The content digest of a prompt record (its texts and answers, not its id, class, split or note): the
    fence compares a confirmatory study's pairs with the pairs discovery read by this, so a renamed copy of
    a discovery pair is caught."""
    keep = {k: record[k] for k in ("clean", "corrupted", "answer", "wrong_answer", "text") if k in record}
    return sha256_bytes(canonical_json(keep))


TEXT_FIELDS = ("clean", "corrupted", "text")


def text_digests(record: dict) -> list[str]:
    """The digests of a prompt's texts (clean, corrupted, or its one text), each normalised as the split-overlap
    rule normalises (case-folded, NFKC, whitespace collapsed): the fence refuses a confirmatory prompt with any
    text discovery read, so a doubled space or a reused clean prompt with a new corrupted one is caught."""
    from .study import normalise_text

    return [sha256_bytes(normalise_text(record[k]).encode()) for k in TEXT_FIELDS if isinstance(record.get(k), str)]


def check_discovery_source(repo_root: Path | None, spec: dict, prompts: list[dict], *, frozen_at: str | None = None,
                           base: Path | None = None) -> str:
    """Check a study's ``discovery_source`` against the discovery study's journal; return what was established.

    The entry it names exists at that seq in an intact journal with that sha256 and is a ``discover``
    entry that wrote the record it names; it finished before ``frozen_at`` (this study's freeze, when
    known); no prompt of this study has the content of a pair it read (the digests it journaled); and
    the weights it screened are the weights this study pins. ChainBroken naming the first problem."""
    source = spec.get("discovery_source")
    if source is None:
        return "not derived from a discovery run"
    where = Path(base if base is not None else repo_root or ".") / source["study"]
    if not (where / "JOURNAL.jsonl").is_file():
        raise ChainBroken(f"discovery_source names {source['study']}, but {source['study']}/JOURNAL.jsonl is not here",
                          hint="restore it (commit the discovery study's journal after `lockstep discover`; it is what "
                               "proves the order), or verify the bundle, which carries it")
    journal = read_journal(where)
    seq = source["journal_seq"]
    if seq >= len(journal.entries):
        raise ChainBroken(f"discovery_source names entry {seq} of {source['study']}, whose journal has {len(journal.entries)}")
    entry, line = journal.entries[seq], journal.lines[seq]
    if entry["stage"] != "discover" or sha256_bytes(line) != source["entry_sha256"]:
        raise ChainBroken(f"entry {seq} of {source['study']} is not the discover entry discovery_source recorded "
                          f"(stage {entry['stage']}, sha256 {sha256_bytes(line)[:12]} vs {source['entry_sha256'][:12]})")
    if source["record_sha256"] not in entry["outputs"].values():
        raise ChainBroken(f"the discover entry {seq} of {source['study']} did not write the record discovery_source names")
    if frozen_at is not None and not entry["finished_utc"] < frozen_at:
        raise ChainBroken(f"the discovery run (entry {seq}, finished {entry['finished_utc']}) did not finish before this "
                          f"study was frozen ({frozen_at})")
    read = set(entry.get("details", {}).get("pair_digests", []))
    texts = entry.get("details", {}).get("text_digests", {})
    touched = []
    for p in prompts:
        hit = next((texts[d] for d in text_digests(p) if d in texts), None)
        if hit is not None:
            touched.append(f"{p['id']} (has a text of discovery pair {hit})")
        elif pair_digest(p) in read:
            touched.append(p["id"])
    if touched:
        raise ChainBroken(f"{len(touched)} prompt(s) of this study were read by discovery: {', '.join(touched[:5])}; "
                          "confirmation must read prompts discovery never read (texts compared after case, NFKC and "
                          "whitespace normalisation)", hint="remove them from prompts.jsonl (and the sampling plan's counts)")
    screened = entry.get("details", {}).get("weights_sha256")
    pinned = spec.get("model", {}).get("weights_sha256")
    if screened and pinned and screened != pinned:
        raise ChainBroken(f"discovery screened weights {screened[:12]}, but this study pins {pinned[:12]}")
    when = f"finished {entry['finished_utc']}" + (f", before the freeze at {frozen_at}" if frozen_at else "")
    return (f"proposed from {source['study_id']} discover entry {seq} ({when}); fence: none of its {len(prompts)} prompt(s) "
            f"was among the {len(read)} discovery read")


def latest_discovery(frozen) -> tuple[dict, bytes, dict, Path]:
    """The newest ``discover`` journal entry of a frozen study, its line, the record it wrote (checked against
    the entry's digest) and that record's path."""
    journal = read_journal(frozen.root)
    entries = [(e, line) for e, line in zip(journal.entries, journal.lines) if e["stage"] == "discover"]
    if not entries:
        raise StageRefused(f"{frozen.study_id} has no discovery run in its journal",
                           hint=f"run `lockstep discover {frozen.root}` first")
    entry, line = entries[-1]
    base = Path(frozen.repo_root)
    rel = next((p for p in entry["outputs"] if p.endswith("/" + RECORD)), None)
    path = artifacts.from_journal(base, rel) if rel else None
    if path is None or not path.is_file():
        raise StageRefused(f"the discovery record {rel} of journal entry {entry['seq']} is missing",
                           hint=f"run `lockstep discover {frozen.root}` again")
    if sha256_file(path) != entry["outputs"][rel]:
        raise StageRefused(f"{rel} differs from the digest journal entry {entry['seq']} recorded",
                           hint=f"run `lockstep discover {frozen.root}` again")
    return entry, line, json.loads(path.read_bytes()), path


NAMES = {"probes": ("alpha", "min_mean_drop_logits", "min_specificity_ratio", "control_drop_floor_logits", "max_target_rank"),
         "scan": ("alpha", "min_ratio", "min_cohen_d", "max_target_rank", "reproduction_ratio_tolerance")}


def _parse_sets(values: tuple[str, ...], allowed: tuple[str, ...]) -> dict[str, float]:
    """``NAME=VALUE`` pairs for this draft's thresholds: finite numbers; ``alpha`` in (0, 0.2]; a rank a whole number >= 1."""
    import math

    out: dict[str, float] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or name not in allowed:
            raise UsageError(f"--set {item!r}: expected NAME=VALUE with NAME one of this draft's thresholds: {', '.join(allowed)}")
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"--set {item!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise UsageError(f"--set {item!r}: a threshold is a finite number")
        if name == "max_target_rank":
            if number != int(number) or number < 1:
                raise UsageError(f"--set {item!r}: a rank is a whole number of at least 1")
            number = int(number)
        elif name == "alpha" and not 0 < number <= 0.2:
            raise UsageError(f"--set {item!r}: alpha is a significance level in (0, 0.2]")
        out[name] = number
    return out


def _targets(record: dict, probe: str, top: int) -> list[str]:
    ranked = record.get("ranked_exact" if probe == "exact" else "ranked") or []
    if len(ranked) < top:
        raise StageRefused(f"the discovery ranked {len(ranked)} slot(s) by {probe}; cannot propose {top}",
                           hint="lower --top, or rerun discovery with a larger exact_check.top")
    return ranked[:top]


def _routing_hypotheses(unit: str, groups: tuple[str, str], runs: list[dict], split: str) -> tuple[list[dict], list[dict], list[str]]:
    run = runs[0]["id"]
    a, b = groups
    common = {"metric": "W", "zone": "trimmed", "run": run, "split": split, "groups": {"by": "prompt_class", "a": a, "b": b},
              "statistic": "welch_t", "test": "permutation", "tails": "greater"}
    hyps = [
        {"id": "H1", "kind": "confirmatory", "direction": "greater", "analysis": "A1",
         "thresholds": ["alpha", "min_ratio", "min_cohen_d"],
         "claim": f"In trimmed generated text, {unit} carries more routed weight (W) on {a} prompts than on matched {b} prompts."},
        {"id": "H2", "kind": "confirmatory", "direction": "greater", "analysis": "A2", "thresholds": ["alpha", "max_target_rank"],
         "claim": f"{unit} is the best-separating unit among all layers and experts in the trimmed zone."},
    ]
    analyses = [{"id": "A1", "kind": "two_group", "unit": unit, **common},
                {"id": "A2", "kind": "all_unit_baseline", "unit": unit, **common, "correction": "maxT_stepdown", "family": "all_units"}]
    names = ["alpha", "min_ratio", "min_cohen_d", "max_target_rank"]
    greedy = next((r["id"] for r in runs[1:] if r.get("decoding") == "greedy"), None)
    if greedy is not None:  # the seeds' objection: a sampled separation must survive greedy decoding
        hyps.append({"id": "H3", "kind": "confirmatory", "direction": "greater", "analysis": "A3",
                     "thresholds": ["reproduction_ratio_tolerance"],
                     "claim": f"The {a}/{b} separation of {unit} is reproduced under greedy decoding."})
        analyses.append({"id": "A3", "kind": "reproduction", "unit": unit, **{k: v for k, v in common.items() if k != "run"},
                         "runs": [run, greedy]})
        names.append("reproduction_ratio_tolerance")
    return hyps, analyses, names


#: how a claim names the replacement the study's ablation arm uses (the claim-word rules check it)
ARM_WORDS = {"mean": ("Mean-ablating", "mean-ablated"), "zero": ("Zero-ablating", "zero-ablated")}


def _hypotheses(targets: list[str], has_control: bool, split: str, kind: str = "mean") -> tuple[list[dict], list[dict], list[str]]:
    listed = ", ".join(targets)
    verb, done = ARM_WORDS[kind]
    hyps = [{
        "id": "H1", "kind": "confirmatory", "direction": "greater", "analysis": "B1", "evidence_type": "intervention",
        "thresholds": ["alpha", "min_mean_drop_logits"],
        "claim": (f"{verb} the proposed slots ({listed}) together at the input of the attention output "
                  "projection reduces the clean logit-difference margin on headline pairs by at least "
                  "min_mean_drop_logits on average, with a sign-flip test of mean drop > 0 below alpha."),
    }]
    analyses = [{"id": "B1", "kind": "ablation_drop", "metric": "margin_drop", "mode": "combined", "targets": list(targets),
                 "run": "forward", "split": split, "pairs": "headline", "relative_drop": "ratio_of_means",
                 "statistic": "mean_drop", "test": "paired_sign_flip", "tails": "greater", "correction": "none"}]
    names = ["alpha", "min_mean_drop_logits"]
    if has_control:
        hyps.append({
            "id": "H2", "kind": "confirmatory", "direction": "greater", "analysis": "B2", "evidence_type": "intervention",
            # "specific to" presupposes an effect to be specific: the headline drop is bounded too, or a floored
            # denominator would let a drop of noise (a null model's) be "five times" a control drop of nothing
            "thresholds": ["alpha", "min_mean_drop_logits", "min_specificity_ratio", "control_drop_floor_logits"],
            "claim": ("The combined ablation is specific to the headline facts: the mean headline drop is at least "
                      "min_mean_drop_logits and at least min_specificity_ratio times the mean control drop (floored "
                      "at control_drop_floor_logits), and headline drops exceed control drops in a permutation test "
                      "below alpha."),
        })
        analyses.append({"id": "B2", "kind": "specificity", "metric": "margin_drop", "mode": "combined",
                         "targets": list(targets), "run": "forward", "split": split, "pairs": "headline",
                         "control": "control", "statistic": "mean_diff", "test": "permutation", "tails": "greater"})
        names += ["min_specificity_ratio", "control_drop_floor_logits"]
    n = len(hyps) + 1
    hyps.append({
        "id": f"H{n}", "kind": "confirmatory", "direction": "greater", "analysis": "B3", "evidence_type": "intervention",
        "thresholds": ["alpha", "max_target_rank"],
        "claim": (f"In the all-slot baseline, where each head slot is {done} alone and scored by its mean "
                  f"headline drop, {targets[0]} has a max-T step-down adjusted sign-flip p below alpha and ranks at "
                  "most max_target_rank."),
    })
    analyses.append({"id": "B3", "kind": "all_unit_baseline", "metric": "margin_drop", "mode": "individual",
                     "unit": targets[0], "run": "forward", "split": split, "pairs": "headline",
                     "statistic": "mean_drop", "test": "paired_sign_flip", "tails": "greater",
                     "correction": "maxT_stepdown", "family": "all_units"})
    names.append("max_target_rank")
    return hyps, analyses, names


def propose(study_dir: Path, out: Path, *, study_id: str | None = None, top: int = 3, probe: str = "head_attribution",
            split: str = "heldout", sets: tuple[str, ...] = (), groups: tuple[str, str] | None = None) -> dict[str, Any]:
    """Write a draft confirmatory study to ``out`` from the newest discovery run of ``study_dir``; return a
    summary (``targets``, ``missing`` thresholds, ``folder``). Refuses an ``out`` that exists.

    An ablation discovery proposes its ``top`` best slots (by ``probe``); a routing scan proposes the unit
    with the highest pooled W of its layer's best, compared between ``groups`` (two prompt classes; the
    study's two classes when it has exactly two)."""
    if probe not in PROBES:
        raise UsageError(f"--probe {probe!r}: expected one of {', '.join(PROBES)}")
    if top < 1:
        raise UsageError("--top must be at least 1")
    frozen = require_frozen(study_dir)
    if "discovery" not in frozen.spec or frozen.design_record.discovery is None:
        raise UsageError(f"{frozen.study_id} is not a discovery study (no `discovery` block)",
                         hint="a discovery study is frozen with its `discovery` block; start one (`lockstep new`) and add it")
    values = _parse_sets(sets, NAMES[frozen.design_record.discovery])
    if groups is not None and frozen.design_record.discovery != "scan":
        raise UsageError("--groups applies to a routing scan's draft (two prompt classes); this draft compares pairs")
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} exists; propose writes a new study folder", hint="name another --out, or delete it")
    entry, line, record, record_path = latest_discovery(frozen)
    routing = frozen.design_record.discovery == "scan"  # a routing scan proposes a unit, the probes head slots
    targets = (record.get("ranked") or [])[:1] if routing else _targets(record, probe, top)
    if not targets:
        raise StageRefused("the discovery ranked no unit", hint=f"rerun `lockstep discover {frozen.root}`")
    disc_split = record["split"]
    if split == disc_split:
        raise UsageError(f"--split {split!r} is the discovery split; confirmation reads a split discovery never read",
                         hint="e.g. --split heldout")
    prompts = [p for p in frozen.prompts if p["split"] != disc_split]
    reads = "headline" if not routing else None  # an ablation draft's analyses read the split's headline pairs
    if not any(p["split"] == split and (reads is None or p["class"] == reads) for p in prompts):
        raise UsageError(f"--split {split!r}: the discovery study has no {'headline pair' if reads else 'prompt'} in that split",
                         hint="name the split the confirmatory analyses should read (e.g. heldout)")
    spec = copy.deepcopy(frozen.spec)
    spec.pop("discovery", None)
    new_id = study_id or out.name
    spec["study_id"] = new_id
    spec["title"] = f"Confirmation of {', '.join(targets)}, proposed by discovery on {frozen.study_id}"
    spec["description"] = (
        f"Drafted by `lockstep propose` from the discovery run of {frozen.study_id} (journal entry {entry['seq']}): "
        f"the {top} head slot(s) ranked best by {probe} on the discovery split ({len(record['pairs_read'])} pairs) are "
        f"tested on the {split} split, which discovery never read. Review every field, set the thresholds, then "
        "freeze it (`lockstep prereg`).")
    model = spec["model"]
    if model.get("source") == "builtin":  # its vocabulary is built from the prompts: keep the words the draft drops
        from .lexicon import builtin_words

        fields = ("text", "clean", "corrupted", "answer", "wrong_answer")
        texts = lambda records: [r[k] for r in records for k in fields if isinstance(r.get(k), str)]  # noqa: E731
        dropped = builtin_words(texts(frozen.prompts)) - builtin_words(texts(prompts))
        if dropped:
            model["builtin"]["vocabulary_words"] = sorted(set(model["builtin"].get("vocabulary_words", [])) | dropped)
    for key in ("weights_sha256", "tokenizer_sha256"):
        if record.get("model", {}).get(key):
            model[key] = record["model"][key]  # the confirmation is about the weights discovery screened
    ranks = {u: i + 1 for i, u in enumerate(record.get("ranked_exact" if probe == "exact" else "ranked", []))}
    if routing:
        probe = "pooled_weight"
        classes = sorted({p["class"] for p in prompts if p["split"] == split})
        pair = tuple(groups) if groups else (tuple(classes) if len(classes) == 2 else None)
        if pair is None or any(c not in classes for c in pair):
            raise UsageError(f"--groups: name the two prompt classes to compare (the {split} split has {', '.join(classes)})")
        if not groups and set(pair) == {"FIRE", "NOFIRE"}:
            pair = ("FIRE", "NOFIRE")
        layer, expert = int(targets[0][1:targets[0].index("E")]), int(targets[0][targets[0].index("E") + 1:])
        spec["units"]["targets"] = [{"id": targets[0], "layer": layer, "expert": expert,
                                     "note": f"highest pooled W of its layer's best in the discovery scan of {frozen.study_id}"}]
        spec["hypotheses"], spec["analyses"], names = _routing_hypotheses(targets[0], pair, spec["runtime"]["runs"], split)
    else:
        spec["units"]["targets"] = [
            {"id": t, "layer": int(t[1:t.index("H")]), "head": int(t[t.index("H") + 1:]),
             "note": f"ranked {ranks[t]} by {probe} on the discovery split of {frozen.study_id}"} for t in targets]
        spec.setdefault("ablation", {})["combined"] = list(targets)
        has_control = any(p["class"] == "control" and p["split"] == split for p in prompts)
        spec["hypotheses"], spec["analyses"], names = _hypotheses(targets, has_control, split,
                                                                  spec["ablation"].get("kind", "mean"))
    counts: dict[str, dict[str, int]] = {"classes": {}, "splits": {}}
    for p in prompts:
        counts["classes"][p["class"]] = counts["classes"].get(p["class"], 0) + 1
        counts["splits"][p["split"]] = counts["splits"].get(p["split"], 0) + 1
    spec["sampling_plan"] = {**spec.get("sampling_plan", {}), **counts}
    spec["sampling_plan"]["stopping_rule"] = (
        f"Fixed sample: every prompt outside the discovery split of {frozen.study_id} is run once per preregistered "
        "run (an ablation pair once unablated and once per ablation); the exclusions below apply mechanically.")
    floor = spec["sampling_plan"].get("min_after_exclusions") or {}
    if any(c not in counts["classes"] for c in floor):
        spec["sampling_plan"].pop("min_after_exclusions")
    spec["inference"]["exploratory_note"] = "Every hypothesis is confirmatory; the discovery it came from is exploratory."
    spec["discovery_source"] = {
        "study": artifacts.repo_relative(frozen.root, frozen.repo_root), "study_id": frozen.study_id,
        "journal_seq": entry["seq"], "entry_sha256": sha256_bytes(line), "record_sha256": sha256_file(record_path),
        "probe": probe, "ranked": list(targets),
    }
    thresholds = {"schema_version": 1, "thresholds": {
        n: {"value": values.get(n, frozen.thresholds.get(n) if n == "alpha" else None), "description": THRESHOLDS[n]}
        for n in names}}
    missing = [n for n, t in thresholds["thresholds"].items() if t["value"] is None]
    out.mkdir(parents=True)
    try:
        atomic_write(out / "study.yaml", _yaml(spec).encode())
        atomic_write(out / "thresholds.yaml", _yaml(thresholds).encode())
        atomic_write(out / "prompts.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts).encode())
        for name in ("rubric.yaml",):
            src = Path(frozen.files.get(name, frozen.root / name))
            atomic_write(out / name, src.read_bytes())
    except BaseException:
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # never a half-written draft
        raise
    return {"folder": out, "targets": targets, "missing": missing, "entry": entry["seq"], "study_id": new_id}


class _Plain(yaml.SafeDumper):
    """No anchors or aliases: lockstep plan files may not use them (a value shared in memory is written out twice)."""

    def ignore_aliases(self, data):
        return True


def _yaml(data: dict) -> str:
    return yaml.dump(data, Dumper=_Plain, sort_keys=False, allow_unicode=True, width=110)
