"""Adversarial studies: a hypothesis whose structure contradicts the analysis that tests it must not
freeze. Each case edits the demo plan the way a careless or hostile researcher would; validation must
refuse it and name the field. The unedited demo, and each case's honest twin, must validate."""

from __future__ import annotations

import json

import pytest
import yaml

from lockstep.errors import SchemaError
from lockstep.study import load_study


def _edit(study, edit_spec=None, edit_prompts=None):
    path = study / "study.yaml"
    spec = yaml.safe_load(path.read_text())
    if edit_spec:
        edit_spec(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    if edit_prompts:
        lines = [json.loads(l) for l in (study / "prompts.jsonl").read_text().splitlines() if l.strip()]
        lines = edit_prompts(lines)
        (study / "prompts.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return study


def _hyp(spec, hid):
    return next(h for h in spec["hypotheses"] if h["id"] == hid)


def _analysis(spec, aid):
    return next(a for a in spec["analyses"] if a["id"] == aid)


def _set(d, **values):
    d.update(values)


CASES = {
    # direction and tails disagree
    "less_claim_greater_tails": (lambda s: _set(_hyp(s, "H1"), direction="less"), "/hypotheses/0/direction", "tests tails 'greater'"),
    "directional_claim_two_sided_test": (lambda s: _set(_analysis(s, "A1"), tails="two-sided"), "/hypotheses/0/direction",
                                         "a directional claim is tested in its own direction"),
    "none_expected_one_sided": (lambda s: _set(_hyp(s, "H1"), direction="none_expected"), "/hypotheses/0/direction",
                                "needs a two-sided test"),
    # the claim names a unit the analysis does not score
    "claim_names_another_unit": (lambda s: (s["units"]["targets"].append({"id": "L2E11", "layer": 2, "expert": 11}),
                                            _set(_hyp(s, "H1"), claim=_hyp(s, "H1")["claim"].replace("L1E5", "L2E11"))),
                                 "/hypotheses/0/claim", "names L2E11, but analysis 'A1' tests L1E5"),
    # a claim about generated text scored on the prefill zone; a trimmed claim on the untrimmed zone
    "generated_claim_prefill_zone": (lambda s: (_set(_analysis(s, "A1"), zone="prefill"),
                                                _set(_hyp(s, "H1"), claim="L1E5 carries more W on FIRE prompts in generated text.")),
                                     "/hypotheses/0/claim", "scores the prefill zone"),
    "trimmed_claim_generated_zone": (lambda s: _set(_analysis(s, "A1"), zone="generated"), "/hypotheses/0/claim",
                                     "speaks of trimmed text, but analysis 'A1' scores the generated zone"),
    # "reproduced under greedy decoding" on two sampled runs
    "greedy_claim_sampled_runs": (lambda s: _set(_analysis(s, "A3"), runs=["sampled", "sampled"]), "/analyses/2/runs",
                                  "a reproduction compares two different runs"),
    # a threshold the analysis never computes
    "rank_bound_on_two_group": (lambda s: _hyp(s, "H1")["thresholds"].append("max_target_rank"), "/hypotheses/0/thresholds/3",
                                "which a two_group analysis does not compute"),
    # a confirmatory claim with no decision criterion
    "confirmatory_without_criteria": (lambda s: _set(_hyp(s, "H1"), thresholds=[]), "/hypotheses/0/thresholds",
                                      "needs at least one decision criterion"),
    # "no separation" that can never be rejected, or confirmed by a mere failure to reject
    "none_expected_without_alpha": (lambda s: (_set(_hyp(s, "H1"), direction="none_expected", kind="exploratory",
                                                    thresholds=["max_ratio"]), _set(_analysis(s, "A1"), tails="two-sided")),
                                    "/hypotheses/0/thresholds", "must list alpha"),
    "confirmatory_none_expected_without_bound": (lambda s: (_set(_hyp(s, "H1"), direction="none_expected", thresholds=["alpha"]),
                                                            _set(_analysis(s, "A1"), tails="two-sided")),
                                                 "/hypotheses/0/thresholds", "needs an equivalence-style bound"),
    # plan counts that disagree with the prompt file
    "plan_counts_disagree": (lambda s: _set(s["sampling_plan"], classes={"FIRE": 40, "NOFIRE": 12}),
                             "/sampling_plan/classes/FIRE", "says 40, but prompts.jsonl has 12"),
}


def test_the_demo_plan_validates(demo_study):
    load_study(demo_study)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_claim_that_contradicts_its_analysis_is_refused(demo_study, case):
    edit, pointer, words = CASES[case]
    _edit(demo_study, edit)
    with pytest.raises(SchemaError) as info:
        load_study(demo_study)
    problems = [(p.pointer, p.message) for p in info.value.problems]
    assert any(p == pointer and words in m for p, m in problems), problems


def test_reproduction_under_greedy_decoding_needs_a_greedy_run(demo_study):
    """Two different runs, but neither greedy: the claim's words ask for what the runs cannot show."""
    def edit(spec):
        spec["runtime"]["runs"].append({"id": "sampled2", "decoding": "sample", "seed": 7, "temperature": 0.7, "top_p": 0.9})
        _set(_analysis(spec, "A3"), runs=["sampled", "sampled2"])

    _edit(demo_study, edit)
    with pytest.raises(SchemaError, match="speaks of greedy decoding, but analysis 'A3' reads runs decoded by sample"):
        load_study(demo_study)


def test_honest_twins_validate(demo_study):
    """The same edits made consistently are accepted: the checks read the structure, not a fixed plan."""
    def honest(spec):
        _set(_hyp(spec, "H1"), direction="less",
             claim="In trimmed generated text, L1E5 carries less W on FIRE prompts than on matched NOFIRE prompts.")
        _set(_analysis(spec, "A1"), tails="less")
        _set(_analysis(spec, "A2"), zone="generated")
        _set(_hyp(spec, "H2"), claim="L1E5 is the best-separating unit among all layers and experts in generated text.")

    _edit(demo_study, honest)
    load_study(demo_study)
