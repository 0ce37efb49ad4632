"""Adversarial studies at prereg (tests/adversarial/prereg/*.yaml): a hypothesis whose structure contradicts
the analysis that tests it must not freeze. Each case is the demo plan edited as a careless or hostile
researcher would; `lockstep validate` must refuse it with exit 1 and name the field. Each honest twin,
and the unedited demo, must validate."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from adversarial.cases import cases, write_case
from lockstep.cli import cli
from lockstep.errors import SchemaError
from lockstep.study import load_study
from studyrepo import commit_all, copy_study

PREREG = cases("prereg")


@pytest.mark.parametrize("name", sorted(PREREG))
def test_each_adversarial_plan_gets_the_outcome_its_words_call_for(repo, name):
    case = PREREG[name]
    study = write_case(copy_study(case["base"], repo, as_name=name.replace("_", "-")), case)
    expect = case["expect"]
    if expect.get("validates"):
        load_study(study)
        return
    with pytest.raises(SchemaError) as info:
        load_study(study)
    problems = [(p.pointer, p.message) for p in info.value.problems]
    assert any(p == expect["refused_at"] and expect["message"] in m for p, m in problems), problems


def test_the_command_refuses_with_the_field_and_a_nonzero_exit(repo):
    """As a researcher meets it: the CLI names file, field and fix, exits 2, prints no traceback."""
    case = PREREG["claim_favours_the_other_group"]
    study = write_case(copy_study("demo", repo), case)
    commit_all(repo, "a plan whose words favour the other group")
    result = CliRunner().invoke(cli, ["validate", str(study)])
    assert result.exit_code == 1, result.output  # 1: the study is invalid (lockstep.errors.SchemaError)
    assert "Traceback" not in result.output
    assert "/hypotheses/0/claim" in result.output and "swap the groups or the direction" in result.output
    freeze = CliRunner().invoke(cli, ["prereg", str(study)])
    assert freeze.exit_code == 1 and not (study / "prereg.lock.json").exists()


def test_every_case_says_what_it_attacks():
    for name, case in PREREG.items():
        assert case.get("about") and case.get("base") and case.get("expect"), name
