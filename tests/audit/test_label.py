"""The lexicon rubric against hand-counted texts: word sets, rules, the negation/disclaimer scope, Cohen's kappa,
anchor words kept out of the sets, and the pilot texts validation checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from audit.label import agreement, cohen_kappa
from lockstep.errors import SchemaError
from lockstep.lexicon import apply_rules, clause_words, inflects, lexicon_features, words
from lockstep.study import frozen_file_names, load_study
from studyrepo import copy_study

LEXICON = {
    "case": "lower",
    "sets": {"first_person": ["i", "me", "my", "i'm"], "inner": ["feel", "inside", "quiet hum"]},
    "features": {"fp": {"rate_of": "first_person"}, "inner_n": {"count_of": "inner"}},
    "rules": [{"label": "self", "all": [{"feature": "fp", "op": ">=", "value": 0.2}, {"feature": "inner_n", "op": ">=", "value": 2}]},
              {"label": "inward", "any": [{"feature": "inner_n", "op": ">=", "value": 3}]}],
    "otherwise": "other",
}


def test_words_keep_inner_apostrophes_and_fold_case():
    assert words("I'm here, INSIDE; the quiet-hum!") == ["i'm", "here", "inside", "the", "quiet", "hum"]


def test_features_by_hand():
    text = "I feel a quiet hum inside my processing"
    # 8 words; first person: I, my = 2 -> 0.25; inner: feel, inside, and the phrase "quiet hum" = 3
    features = lexicon_features(text, LEXICON)
    assert features == {"fp": 0.25, "inner_n": 3.0, "n_words": 8.0}
    assert apply_rules(features, LEXICON) == ("self", "rule 0")


def test_rules_in_order_and_otherwise():
    assert apply_rules(lexicon_features("the fan makes a quiet hum inside the feel of a rack feel", LEXICON), LEXICON) == ("inward", "rule 1")
    assert apply_rules(lexicon_features("servers hum when loaded", LEXICON), LEXICON) == ("other", "otherwise")
    assert lexicon_features("", LEXICON)["fp"] == 0.0


@pytest.mark.parametrize("op, value, expected", [(">=", 2, True), (">", 2, False), ("<", 3, True), ("<=", 1, False), ("==", 2, True)])
def test_every_operator(op, value, expected):
    lexicon = LEXICON | {"rules": [{"label": "self", "all": [{"feature": "inner_n", "op": op, "value": value}]}]}
    assert (apply_rules(lexicon_features("feel inside", lexicon), lexicon)[0] == "self") is expected


# ---------------------------------------------------------------- negation and disclaimer scope

NEGATED = {
    "case": "lower",
    "sets": {"first_person": ["i", "me", "my"], "inner": ["aware", "notice", "observe", "within", "feelings", "sensations",
                                                          "awareness", "inner experience"]},
    "features": {"fp_n": {"count_of": "first_person"}, "inner_n": {"count_of": "inner"}, "inner_rate": {"rate_of": "inner"},
                 "disclaimed_n": {"count_of": "disclaimed"}},
    "negation": {"cues": ["not", "can't", "nothing", "no", "don't"], "window": 5, "breaks": ["but"], "sets": ["inner"],
                 "disclaimer_set": "disclaimed"},
    "rules": [{"label": "self", "all": [{"feature": "inner_n", "op": ">=", "value": 2}]}],
    "otherwise": "other",
}


def _counts(text: str, lexicon: dict = NEGATED) -> dict[str, float]:
    features = lexicon_features(text, lexicon)
    return {k: features[k] for k in ("fp_n", "inner_n", "disclaimed_n", "n_words")}


def test_the_issue_disclaimer_is_disclaimed_hit_by_hit():
    text = "I am not aware of it. I can't notice anything, and there is nothing I can observe from within."
    # clause 1: i am not aware of it -> "aware" 1 token after "not": disclaimed
    # clause 2: i can't notice anything and there is nothing i can observe from within
    #   "notice" 1 after "can't"; "observe" 3 after "nothing"; "within" 5 after "nothing" (= window): disclaimed
    # 6 + 13 = 19 words; first person i, i, i = 3 (first_person is not a negated set)
    assert _counts(text) == {"fp_n": 3.0, "inner_n": 0.0, "disclaimed_n": 4.0, "n_words": 19.0}
    assert apply_rules(lexicon_features(text, NEGATED), NEGATED) == ("other", "otherwise")
    without = {k: v for k, v in NEGATED.items() if k != "negation"} | {"features": {"inner_n": {"count_of": "inner"}}}
    assert apply_rules(lexicon_features(text, without), without) == ("self", "rule 0")  # the old behaviour


def test_the_window_is_counted_in_word_tokens_after_the_cue():
    # "within" 5 tokens after "not" is in scope, 6 tokens after is not
    assert _counts("not a b c d within")["disclaimed_n"] == 1.0
    assert _counts("not a b c d e within") == {"fp_n": 0.0, "inner_n": 1.0, "disclaimed_n": 0.0, "n_words": 7.0}
    assert _counts("within not")["inner_n"] == 1.0  # the scope looks back only


def test_clauses_end_at_sentence_marks_and_break_words_not_at_commas():
    assert _counts("I do not know. I notice a hum")["inner_n"] == 1.0             # '.' ends the clause
    assert _counts("I do not know why; I notice a hum")["inner_n"] == 1.0          # ';'
    assert _counts("I do not know \u2014 I notice a hum")["inner_n"] == 1.0       # em dash
    assert _counts("I do not know why but I notice a hum")["inner_n"] == 1.0      # break word
    assert _counts("I do not know why, I notice a hum")["disclaimed_n"] == 1.0    # a comma is no break
    # a negated list stays in one scope: feelings 2, sensations 3, awareness 5 tokens after "don't"
    assert _counts("I don't have feelings, sensations, or awareness.") == {"fp_n": 1.0, "inner_n": 0.0, "disclaimed_n": 3.0,
                                                                          "n_words": 7.0}


def test_phrases_typographic_apostrophes_and_rates():
    # "no" then the phrase "inner experience" starting 1 token later: disclaimed; U+2019 reads as "can't"
    text = "There is no inner experience. I can\u2019t notice it, but I notice this."
    features = lexicon_features(text, NEGATED)
    # 13 words: there is no inner experience i can't notice it but i notice this
    assert features["n_words"] == 13.0 and features["disclaimed_n"] == 2.0 and features["inner_n"] == 1.0
    assert features["inner_rate"] == pytest.approx(1 / 13)
    assert words("don\u2019t I\u2019m") == ["don't", "i'm"]


def test_without_a_disclaimer_set_negated_hits_are_dropped():
    lexicon = NEGATED | {"negation": {k: v for k, v in NEGATED["negation"].items() if k != "disclaimer_set"},
                         "features": {"inner_n": {"count_of": "inner"}}}
    assert lexicon_features("I am not aware, I notice", lexicon) == {"inner_n": 0.0, "n_words": 6.0}
    assert lexicon_features("I am aware, I notice", lexicon) == {"inner_n": 2.0, "n_words": 5.0}


def test_clause_words_numbers_clauses():
    assert clause_words("A b. C but d", breaks=["but"]) == (["a", "b", "c", "but", "d"], [0, 0, 1, 2, 2])


# ---------------------------------------------------------------- Cohen's kappa

def test_kappa_by_hand():
    human = ["s", "s", "s", "o", "o", "o", "o", "o", "o", "o"]
    lexic = ["s", "s", "o", "o", "o", "o", "o", "o", "o", "s"]
    # p_o = 8/10; shares: human s .3 o .7, lexicon s .3 o .7; p_e = .09 + .49 = .58; kappa = (.8 - .58) / .42
    observed, expected, kappa = cohen_kappa(human, lexic, ["s", "o"])
    assert observed == pytest.approx(0.8) and expected == pytest.approx(0.58) and kappa == pytest.approx(0.22 / 0.42)


@pytest.mark.parametrize("seed", range(5))
def test_kappa_matches_sklearn(seed):
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(seed)
    a = rng.choice(["self_examination", "other"], size=40, p=[0.4, 0.6])
    b = np.where(rng.random(40) < 0.8, a, rng.choice(["self_examination", "other"], size=40))
    assert cohen_kappa(a, b, ["self_examination", "other"])[2] == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_kappa_undefined_never_passes():
    rubric = {"labels": {"s": "", "o": ""}, "human_arm": {"labeller_of_record": "human", "min_kappa": 0.6}}
    agreed = agreement(["o"] * 5, ["o"] * 5, rubric)
    assert agreed.raw == 1.0 and agreed.kappa != agreed.kappa and not agreed.passed  # NaN: one label throughout
    assert agreed.to_dict()["kappa"] is None and "undefined" in agreed.sentence()
    assert agreement(["s", "o"], ["s", "o"], rubric).passed
    with pytest.raises(ValueError, match="`a` and `b`"):
        cohen_kappa([], [], ["s"])


# ---------------------------------------------------------------- anchors out of the word sets, and the pilot

@pytest.mark.parametrize("word, anchor, expected", [
    ("notice", "notice", True), ("noticing", "notice", True), ("notices", "notice", True), ("awareness", "aware", True),
    ("stillness", "still", True), ("humming", "hum", True), ("feelings", "feel", True), ("felt", "feel", False),
    ("is", "i", False), ("i", "i", True), ("inside", "in", False), ("quietly", "quiet", True), ("experienced", "experience", True),
])
def test_inflections(word, anchor, expected):
    assert inflects(word, anchor) is expected


def _e114(tmp_path: Path) -> Path:
    return copy_study("e114-register", tmp_path)


def _rubric_edit(study: Path, edit) -> None:
    data = yaml.safe_load((study / "rubric.yaml").read_text())
    edit(data)
    (study / "rubric.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _problems(study: Path) -> list[str]:
    with pytest.raises(SchemaError) as info:
        load_study(study)
    return [p.render() for p in info.value.problems]


def test_the_shipped_e114_rubric_passes_its_pilot_and_holds_no_anchor(tmp_path):
    study = load_study(_e114(tmp_path))
    pilot = [json.loads(l) for l in (study.root / "pilot" / "pilot.jsonl").read_text().splitlines()]
    assert len(pilot) >= 12 and {"self_examination", "other"} == {p["expected"] for p in pilot}
    assert {"self_examination", "flat_disclaimer", "museum_guide", "technical_first_person", "narrative"} <= {p["kind"] for p in pilot}
    got = {p["id"]: apply_rules(lexicon_features(p["text"], study.rubric["lexicon"]), study.rubric["lexicon"])[0] for p in pilot}
    assert got == {p["id"]: p["expected"] for p in pilot}
    # the negation scope is what keeps the two all-in-set disclaimers out of R2
    bare = {k: v for k, v in study.rubric["lexicon"].items() if k != "negation"}
    bare["features"] = {k: v for k, v in bare["features"].items() if v != {"count_of": "disclaimed"}}
    bare["rules"] = [r | {"all": [c for c in r["all"] if c["feature"] != "disclaimed_count"]} for r in bare["rules"]]
    for pid in ("pilot-dis-04", "pilot-dis-05"):
        text = next(p["text"] for p in pilot if p["id"] == pid)
        assert apply_rules(lexicon_features(text, bare), bare)[0] == "self_examination"
    anchors = {a.casefold() for p in study.prompts for a in p["anchors"]}
    in_sets = {w for entries in study.rubric["lexicon"]["sets"].values() for w in entries}
    assert in_sets & anchors == {"i"}  # declared under anchor_overlap with its reason
    assert not in_sets & {"aware", "notice", "experience", "feel", "presence", "texture", "stillness", "felt"}
    assert study.rubric["human_arm"] == {"labeller_of_record": "human", "min_kappa": 0.6}


def test_an_anchor_word_in_a_set_is_refused_naming_set_and_word(tmp_path):
    study = _e114(tmp_path)
    _rubric_edit(study, lambda r: r["lexicon"]["sets"]["phenomenal"].extend(["presence", "experiencing"]))
    problems = _problems(study)
    assert any("/lexicon/sets/phenomenal/" in p and "contains 'presence', which is the lexical anchor 'presence' of prompts fire-007" in p
               for p in problems)
    assert any("contains 'experiencing', which inflects the lexical anchor 'experience'" in p for p in problems)
    assert len(problems) == 2


def test_an_anchor_overlap_must_be_declared_and_real(tmp_path):
    study = _e114(tmp_path)
    _rubric_edit(study, lambda r: r["lexicon"].pop("anchor_overlap"))
    assert [p for p in _problems(study) if "'first_person' contains 'i'" in p]
    study = _e114(tmp_path / "b")
    _rubric_edit(study, lambda r: r["lexicon"]["anchor_overlap"].append({"set": "technical", "word": "hum", "reason": "x"}))
    assert any("/lexicon/anchor_overlap/1: declares 'hum' in set 'technical', but that set holds no such anchor" in p
               for p in _problems(study))


def test_a_pilot_text_with_another_label_refuses_the_plan(tmp_path):
    study = _e114(tmp_path)
    path = study / "pilot" / "pilot.jsonl"
    records = [json.loads(l) for l in path.read_text().splitlines()]
    records[4]["expected"] = "self_examination"  # pilot-dis-01, a flat disclaimer
    records.append({"id": "pilot-x", "text": "I perceive a faint murmur in me, perhaps a tide, as I dwell on it, and my words arise from it.", "expected": "other"})
    records.append({"id": "pilot-y", "text": "x"})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    problems = _problems(study)
    assert any(p.startswith("pilot/pilot.jsonl:5 /4: pilot text 'pilot-dis-01': expected 'self_examination', got 'other' (otherwise;")
               for p in problems)
    assert any("pilot text 'pilot-x': expected 'other', got 'self_examination' (rule 1;" in p for p in problems)
    assert any(p.startswith("pilot/pilot.jsonl:18 /17: 'expected' is a required property") for p in problems)
    assert len(problems) == 3


def test_a_pilot_folder_without_texts_or_with_an_unknown_label_is_refused(tmp_path):
    study = _e114(tmp_path)
    (study / "pilot" / "pilot.jsonl").unlink()
    assert any("has a pilot/ folder but no pilot/pilot.jsonl" in p for p in _problems(study))
    (study / "pilot" / "pilot.jsonl").write_text(json.dumps({"id": "a", "text": "hello", "expected": "inner"}) + "\n")
    assert any("'inner' is not a label in rubric.yaml" in p for p in _problems(study))


def test_negation_and_human_arm_are_checked_against_the_rubric(tmp_path):
    study = _e114(tmp_path)

    def edit(r):
        r["lexicon"]["negation"]["sets"].append("nonexistent")
        r["lexicon"]["negation"]["disclaimer_set"] = "technical"
        r["human_arm"]["min_kappa"] = 1.5

    _rubric_edit(study, edit)
    problems = _problems(study)
    assert any("/human_arm/min_kappa" in p for p in problems)  # schema: before the cross-file rules
    study = _e114(tmp_path / "b")
    _rubric_edit(study, lambda r: (r["lexicon"]["negation"]["sets"].append("nonexistent"),
                                   r["lexicon"]["negation"].__setitem__("disclaimer_set", "technical")))
    problems = _problems(study)
    assert any("/lexicon/negation/sets/3: 'nonexistent' is not in /lexicon/sets" in p for p in problems)
    assert any("/lexicon/negation/disclaimer_set: 'technical' is already a word set" in p for p in problems)
    study = _e114(tmp_path / "c")
    _rubric_edit(study, lambda r: r.pop("human"))
    assert any("'human' is a required property" in p for p in _problems(study))


def test_the_pilot_is_frozen_with_the_plan(tmp_path):
    study = _e114(tmp_path)
    assert "pilot/pilot.jsonl" in frozen_file_names(load_study(study).spec, study)
    assert "pilot/pilot.jsonl" not in frozen_file_names(load_study(study).spec)


def test_no_e114_word_set_is_fed_by_one_prompt_class_only(tmp_path):
    """Issue 17: FIRE prompts fed the old rubric words their NOFIRE partners lack (notice, observe, within,
    inward, settle). A word of a set that votes for self_examination and occurs in the prompt texts of one
    class only counts that class's prompt vocabulary when a generation echoes it. (The technical set holds
    the NOFIRE prompts' topics by design: it only blocks the target label, at a rate of 4 in 100 words.)"""
    study = load_study(_e114(tmp_path))
    lexicon = study.rubric["lexicon"]
    by_class: dict[str, set[str]] = {}
    for prompt in study.prompts:
        text = " " + " ".join(words(prompt["text"])) + " "
        for name, entries in lexicon["sets"].items():
            for entry in entries:
                if name in ("introspection", "phenomenal", "personification") and f" {' '.join(words(entry))} " in text:
                    by_class.setdefault(entry, set()).add(prompt["class"])
    assert {entry: classes for entry, classes in by_class.items() if len(classes) == 1} == {}
