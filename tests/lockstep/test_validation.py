"""Validation: the shipped studies pass, broken ones are rejected with every problem and pinned messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lockstep.errors import SchemaError
from lockstep.study import load_study, normalise_text
from studyrepo import STUDIES, copy_study

SHIPPED = sorted(p.name for p in STUDIES.iterdir() if (p / "study.yaml").exists())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_studies_validate(name, tmp_path):
    study = load_study(copy_study(name, tmp_path))
    assert study.study_id == name
    assert study.design in ("routing", "ablation")
    assert all(h["analysis"] in {a["id"] for a in study.spec["analyses"]} for h in study.spec["hypotheses"])


def test_shipped_studies_are_the_three_the_design_names():
    assert {"demo", "e114-register", "l31h14-ablation"} <= set(SHIPPED)


def test_e114_register_has_matched_classes_of_at_least_24(tmp_path):
    study = load_study(copy_study("e114-register", tmp_path))
    assert len(study.prompts_in(cls="FIRE")) >= 24 and len(study.prompts_in(cls="NOFIRE")) >= 24
    assert {t["id"] for t in study.spec["units"]["targets"]} >= {"L14E114"}


def test_l31h14_has_headline_and_control_pairs_and_the_card_threshold(tmp_path):
    study = load_study(copy_study("l31h14-ablation", tmp_path))
    assert len(study.prompts_in(cls="headline")) >= 40 and len(study.prompts_in(cls="control")) >= 8
    assert 1.5 in study.thresholds.values()
    assert {t["id"] for t in study.spec["units"]["targets"]} >= {"L31H14", "L23H0", "L26H17", "L19H11", "L23H8", "L27H11"}


def _edit_yaml(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _edit_prompts(path: Path, edit) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    edit(records)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _problems(study_dir: Path) -> list[str]:
    with pytest.raises(SchemaError) as info:
        load_study(study_dir)
    return [p.render() for p in info.value.problems]


@pytest.fixture
def demo(tmp_path) -> Path:
    return copy_study("demo", tmp_path)


def test_unknown_key_names_the_pointer_and_the_allowed_keys(demo):
    _edit_yaml(demo / "study.yaml", lambda d: d["runtime"].update(temprature=0.7))
    [problem] = _problems(demo)
    assert problem.startswith("study.yaml:")
    assert "/runtime: Additional properties are not allowed ('temprature' was unexpected)" in problem
    assert "allowed keys: batch_invariance_check, batch_size, chat_template" in problem


def test_wrong_type_says_what_was_expected(demo):
    _edit_yaml(demo / "study.yaml", lambda d: d["runtime"].update(batch_size="eight"))
    [problem] = _problems(demo)
    assert "/runtime/batch_size: expected integer, found str 'eight'" in problem


def test_every_problem_is_reported_at_once(demo):
    _edit_yaml(demo / "study.yaml", lambda d: (d["runtime"].update(batch_size=0), d["model"].update(dtype="fp8")))
    _edit_yaml(demo / "thresholds.yaml", lambda d: d["thresholds"]["alpha"].pop("description"))
    problems = _problems(demo)
    assert len(problems) == 3
    assert any("/model/dtype: 'fp8' is not allowed; expected one of 'float32'" in p for p in problems)
    assert any(p.startswith("thresholds.yaml") and "'description' is a required property" in p for p in problems)


def test_duplicate_yaml_key_is_an_error_with_both_lines(demo):
    text = (demo / "thresholds.yaml").read_text()
    (demo / "thresholds.yaml").write_text(text + "schema_version: 1\n")
    [problem] = _problems(demo)
    assert problem.startswith(f"thresholds.yaml:{len(text.splitlines()) + 1} /schema_version: duplicate key 'schema_version' (first at line 1)")


def test_malformed_yaml_names_the_line(demo):
    (demo / "rubric.yaml").write_text("schema_version: 1\nkind: [lexicon\n")
    [problem] = _problems(demo)
    assert problem.startswith("rubric.yaml:3 /: not valid YAML")


def test_yaml_is_read_safely_no_python_objects(demo):
    (demo / "rubric.yaml").write_text("schema_version: 1\nkind: !!python/object/apply:os.system ['true']\n")
    [problem] = _problems(demo)
    assert "not valid YAML" in problem and "python/object" in problem


def test_malformed_jsonl_line_is_located(demo):
    lines = (demo / "prompts.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-1]
    (demo / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    [problem] = _problems(demo)
    assert problem.startswith("prompts.jsonl:3 /2: not valid JSON")


def test_missing_file_says_which(demo):
    (demo / "rubric.yaml").unlink()
    [problem] = _problems(demo)
    assert "rubric.yaml /: missing file" in problem


def test_non_utf8_file(demo):
    (demo / "rubric.yaml").write_bytes(b"schema_version: 1\nkind: \xff\n")
    [problem] = _problems(demo)
    assert "not UTF-8 text (byte 24)" in problem


def test_anchor_must_occur_as_a_whole_word(demo):
    # "hum" occurs inside "human" but not as a word: still an error.
    _edit_prompts(demo / "prompts.jsonl", lambda r: r[0].update(text="a human processing question", anchors=["hum"]))
    [problem] = _problems(demo)
    assert problem == "prompts.jsonl:1 /0/anchors/0: anchor 'hum' does not occur in the prompt text of 'fire-01'; an anchor must appear as a whole word or phrase"


def test_split_overlap_exact_and_after_normalisation(demo):
    def edit(records):
        heldout = next(r for r in records if r["split"] == "heldout" and r["class"] == "NOFIRE")
        discovery = [r for r in records if r["split"] == "discovery"]
        discovery[0]["text"] = heldout["text"]
        discovery[1]["text"] = "  " + heldout["text"].upper().replace(" ", "   ") + " "
    _edit_prompts(demo / "prompts.jsonl", edit)
    problems = _problems(demo)
    assert any("has the same text as" in p and "splits must not overlap" in p for p in problems)
    assert any("the same text after case and whitespace normalisation" in p for p in problems)


def test_normalise_text():
    assert normalise_text("  I   FEEL\tthe Hum ") == "i feel the hum"
    assert normalise_text("ﬁne") == "fine"  # NFKC folds the ligature


def test_duplicate_ids(demo):
    _edit_prompts(demo / "prompts.jsonl", lambda r: r[1].update(id=r[0]["id"]))
    _edit_yaml(demo / "study.yaml", lambda d: d["hypotheses"][1].update(id="H1"))
    problems = _problems(demo)
    assert any("prompts.jsonl:2 /1/id: duplicate id 'fire-01'" in p for p in problems)
    assert any("/hypotheses/1/id: duplicate id 'H1'" in p for p in problems)


def test_references_between_files(demo):
    _edit_yaml(demo / "study.yaml", lambda d: (d["hypotheses"][0].update(thresholds=["alpha", "min_effect"]),
                                               d["analyses"][0].update(unit="L9E9", run="beam")))
    problems = _problems(demo)
    assert any("/hypotheses/0/thresholds/1: names threshold 'min_effect', which is not in thresholds.yaml" in p for p in problems)
    assert any("/analyses/0/unit: names unit 'L9E9'" in p for p in problems)
    assert any("/analyses/0/run: names run 'beam'" in p for p in problems)


def test_target_id_must_match_its_layer_and_expert(demo):
    _edit_yaml(demo / "study.yaml", lambda d: d["units"]["targets"][0].update(expert=6))
    [problem] = _problems(demo)
    assert "/units/targets/0/id: 'L1E5' does not match layer 1 expert 6; expected 'L1E6'" in problem


def test_extra_file_outside_the_study_is_refused(demo):
    _edit_yaml(demo / "study.yaml", lambda d: d.update(files=["../../secrets.txt"]))
    [problem] = _problems(demo)
    assert "/files/0: '../../secrets.txt' points outside the study folder" in problem


def test_study_id_must_match_folder(demo):
    _edit_yaml(demo / "study.yaml", lambda d: d.update(study_id="other"))
    [problem] = _problems(demo)
    assert "/study_id: is 'other' but the folder is 'demo'" in problem


def test_unpinned_hub_revision_needs_a_policy(demo):
    _edit_yaml(demo / "study.yaml", lambda d: d["model"].update(source="hub", revision="main"))
    [problem] = _problems(demo)
    assert "/model/revision: 'main' is not a 40-hex commit" in problem


def test_unicode_prompts_are_fine(demo):
    _edit_prompts(demo / "prompts.jsonl", lambda r: r[0].update(text="¿Qué hum siento? 处理 processing — ✓", anchors=["hum", "processing"]))
    assert load_study(demo).prompts[0]["text"].startswith("¿Qué")


def test_rubric_rules_reference_defined_features_and_labels(demo):
    _edit_yaml(demo / "rubric.yaml", lambda d: (d["lexicon"]["rules"][0].update(label="inward"),
                                                d["lexicon"]["rules"][0]["all"][0].update(feature="fp_rate")))
    problems = _problems(demo)
    assert any("/lexicon/rules/0/label: 'inward' is not one of the labels" in p for p in problems)
    assert any("/lexicon/rules/0/all/0/feature: 'fp_rate' is not in /lexicon/features" in p for p in problems)


def test_judge_template_must_show_the_text(demo):
    (demo / "rubric.yaml").write_text(
        "schema_version: 1\nkind: judge\ntext_zone: trimmed\nlabels: {inner: a, outer: b}\ntarget_label: inner\n"
        "judge: {model: judges/tiny, revision: v1, template: 'Label it: {labels}'}\n")
    [problem] = _problems(demo)
    assert problem == "rubric.yaml:6 /judge/template: has no {text} placeholder; the judge must see the text it labels"


def test_a_schema_error_does_not_hide_cross_file_errors(demo):
    # one schema error (a type) and two cross-file errors in the parts that parsed: a hypothesis naming a threshold
    # thresholds.yaml lacks, and a claim whose direction contradicts its analysis' tails
    def edit(d):
        d["runtime"]["batch_size"] = "eight"
        d["hypotheses"][0]["thresholds"].append("min_effect_typo")
        d["hypotheses"][0]["direction"] = "less"
    _edit_yaml(demo / "study.yaml", edit)
    problems = _problems(demo)
    assert any("/runtime/batch_size: expected integer" in p for p in problems)
    assert any("/hypotheses/0/thresholds/3: names threshold 'min_effect_typo', which is not in thresholds.yaml" in p
               for p in problems)
    assert any("/hypotheses/0/direction: is 'less' but analysis 'A1' tests tails 'greater'" in p for p in problems)


def test_a_schema_error_in_a_block_skips_only_the_rules_that_read_it(demo):
    # /runtime/runs is broken (a run without its id): the rules reading runs cannot run, the others still do
    _edit_yaml(demo / "study.yaml", lambda d: (d["runtime"]["runs"][0].pop("id"), d["hypotheses"][1].update(analysis="A9")))
    problems = _problems(demo)
    assert any("/runtime/runs/0: 'id' is a required property" in p for p in problems)
    assert any("/hypotheses/1/analysis: names analysis 'A9', which is not defined" in p for p in problems)


@pytest.mark.parametrize("value", [0.5, 0, -0.05, 0.21])
def test_alpha_outside_0_to_0_2_is_refused_naming_the_field(demo, value):
    _edit_yaml(demo / "thresholds.yaml", lambda d: d["thresholds"]["alpha"].update(value=value))
    [problem] = _problems(demo)
    assert problem.startswith("thresholds.yaml:")
    assert f"/thresholds/alpha/value: is {value}, but a significance level must lie in (0, 0.2]" in problem


@pytest.mark.parametrize("name,value,words", [
    ("max_target_rank", -3, "'max_target_rank' bounds 'target_rank', a rank among the units (1 is the best unit), "
                            "which runs from 1 up in whole numbers"),
    ("max_target_rank", 0, "runs from 1 up in whole numbers"),
    ("max_target_rank", 2.5, "runs from 1 up in whole numbers"),
    ("reproduction_ratio_tolerance", -0.1, "a tolerance is at least 0"),
])
def test_a_bound_outside_its_quantitys_range_is_refused(demo, name, value, words):
    # a rank bound of -3 is never met (every verdict falls), a negative tolerance passes nothing:
    # the verdict would not depend on the data
    _edit_yaml(demo / "thresholds.yaml", lambda d: d["thresholds"][name].update(value=value))
    [problem] = _problems(demo)
    assert problem.startswith("thresholds.yaml:")
    assert f"/thresholds/{name}/value: is {value}, but" in problem and words in problem


@pytest.mark.parametrize("name,value", [("max_target_rank", 1), ("max_target_rank", 10240),
                                        ("reproduction_ratio_tolerance", 0)])
def test_a_bound_inside_its_quantitys_range_is_accepted(demo, name, value):
    _edit_yaml(demo / "thresholds.yaml", lambda d: d["thresholds"][name].update(value=value))
    assert load_study(demo).thresholds[name] == value


@pytest.mark.parametrize("value", [0.2, 0.001])
def test_alpha_inside_the_range_is_accepted(demo, value):
    _edit_yaml(demo / "thresholds.yaml", lambda d: d["thresholds"]["alpha"].update(value=value))
    assert load_study(demo).thresholds["alpha"] == value


def test_a_threshold_no_hypothesis_uses_is_a_validate_warning(demo):
    from studyrepo import invoke

    _edit_yaml(demo / "thresholds.yaml",
               lambda d: d["thresholds"].update(min_unused_gap={"value": 0.3, "description": "never listed"}))
    result = invoke("validate", str(demo), cwd=demo.parent)
    assert result.exit_code == 0, result.output
    assert "warning: threshold 'min_unused_gap' in thresholds.yaml is used by no hypothesis" in result.stderr
    as_json = json.loads(invoke("validate", str(demo), "--json", cwd=demo.parent).stdout)
    assert any("'min_unused_gap'" in w for w in as_json["warnings"])
    clean = invoke("validate", str(copy_study("demo", demo.parent / "other")), cwd=demo.parent)
    assert "is used by no hypothesis" not in clean.stderr


@pytest.mark.parametrize(("contrast", "expected"), [
    ({"a": "FOO", "b": "FOO"}, [("/discovery/contrast: compares class 'FOO' with itself (and the discovery split "
                                 "'discovery' has no prompt of it); name two different classes of the split (it has FIRE, NOFIRE)")]),
    ({"a": "FIRE", "b": "FIRE"}, [("/discovery/contrast: compares class 'FIRE' with itself; name two different classes "
                                   "of the split (it has FIRE, NOFIRE)")]),
    ({"a": "FIRE", "b": "NOFRE"}, [("/discovery/contrast/b: names class 'NOFRE', which the discovery split 'discovery' "
                                    "has no prompt of (it has FIRE, NOFIRE)")]),
    ({"a": "FIRE", "b": "NOFIRE", "c": "X"}, [("/discovery/contrast: Additional properties are not allowed ('c' was unexpected); "
                                               "allowed keys: a, b")]),
    ({"a": "FIRE", "b": 3}, ["/discovery/contrast/b: expected string, found int 3"]),
])
def test_a_bad_contrast_class_is_one_problem(tmp_path, contrast, expected):
    """A routing scan's contrast: each bad class is reported once (a class on both sides, or a key the
    schema already refuses, is not reported again by the cross-file rule)."""
    study = copy_study("demo-trained-moe", tmp_path)
    _edit_yaml(study / "study.yaml", lambda d: d["discovery"].__setitem__("contrast", contrast))
    assert [p.split(" ", 1)[1] for p in _problems(study)] == expected
