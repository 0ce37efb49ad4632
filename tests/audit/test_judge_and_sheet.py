"""The judge rubric on a real tiny model, and the blinded human sheet round trip."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest
import torch

from audit.judge import judge_labels, label_scores, render_prompt
from capture import builtin, runtime

LABELS = {"inner": "inner-state register", "outer": "anything else"}
TEMPLATE = "label this text as {labels} : {text} label :"


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> Path:
    """A tiny model with a word-level tokenizer that knows the label words, saved as users save one."""
    root = tmp_path_factory.mktemp("judge")
    return builtin.ensure_builtin({"name": "tiny-qwen3_5-moe", "seed": 3, "plant": None}, root,
                                  extra_words={"inner", "outer", "label", "as", "this", "text"})


def rubric(judge_dir: Path) -> dict:
    return {"kind": "judge", "labels": LABELS, "target_label": "inner", "text_zone": "trimmed",
            "judge": {"model": str(judge_dir), "revision": "builtin", "template": TEMPLATE}}


TEXTS = pd.DataFrame({"prompt_id": ["a", "b", "c"], "text": ["i feel a quiet hum inside", "the server fan is loud", "calm presence"]})


def _load(judge_dir):
    tok, _ = runtime.load_tokenizer(judge_dir, list(LABELS))
    model = runtime.load_model(runtime.ModelSource(judge_dir, "local", None), dtype="float32", trust_remote_code=False, device_map=None)
    return tok, model


def test_render_prompt_does_not_interpret_braces():
    assert render_prompt("{text} / {labels}", "a {0} b", ["x", "y"]) == "a {0} b / x, y"


def test_scores_are_the_last_position_log_softmax_for_one_token_labels(judge_dir):
    tok, model = _load(judge_dir)
    prompt = render_prompt(TEMPLATE, TEXTS.text[0], list(LABELS))
    ids = torch.tensor([tok(prompt, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)  # by hand: one forward, read two entries
    expected = [float(logp[tok.convert_tokens_to_ids(label)]) for label in LABELS]
    assert label_scores(model, tok, prompt, list(LABELS)) == pytest.approx(expected, abs=1e-5)


def test_the_judge_follows_the_model(judge_dir, tmp_path):
    frame = judge_labels(TEXTS, rubric(judge_dir), tmp_path)
    assert set(frame.label) <= set(LABELS) and list(frame.prompt_id) == ["a", "b", "c"]
    # swap the two label rows of the output head: every decision must swap
    tok, model = _load(judge_dir)
    i, o = tok.convert_tokens_to_ids("inner"), tok.convert_tokens_to_ids("outer")
    with torch.no_grad():
        model.lm_head.weight[[i, o]] = model.lm_head.weight[[o, i]]
    swapped = tmp_path / "swapped"
    model.save_pretrained(swapped)
    tok.save_pretrained(swapped)
    flipped = judge_labels(TEXTS, rubric(swapped), tmp_path)
    assert list(flipped.label) == [{"inner": "outer", "outer": "inner"}[l] for l in frame.label]
    # a head that cannot tell labels apart: every call is a tie, which goes to the first label
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(swapped)
    assert set(judge_labels(TEXTS, rubric(swapped), tmp_path).label) == {"inner"}


# ---------------------------------------------------------------- the blinded human sheet

from lockstep.errors import SchemaError  # noqa: E402
from lockstep.gate import require_frozen  # noqa: E402
from lockstep.freeze import freeze  # noqa: E402
from studyrepo import commit_all, copy_study  # noqa: E402

HUMAN = """schema_version: 1
kind: human
text_zone: trimmed
labels:
  inner: "Dwells on inner-state words."
  outer: "Anything else."
target_label: inner
human:
  instructions: "Read each text and choose one label."
  labellers: 2
  seed: 7
"""


def _study_with_texts(repo, rubric: str):
    """The demo with ``rubric``, frozen, and a made-up captured run of 12 texts (a capture entry records it):
    the lexicon labels p00, p03, p06, p09 inner (two inner-state words), the rest outer."""
    study = copy_study("demo", repo)
    (study / "rubric.yaml").write_text(rubric)
    commit_all(repo)
    freeze(study)
    run_dir = repo / "runs" / "demo" / "sampled"
    run_dir.mkdir(parents=True)
    texts = pd.DataFrame({"prompt_id": [f"p{i:02d}" for i in range(12)], "class": ["FIRE"] * 6 + ["NOFIRE"] * 6,
                          "trimmed_text": [f"text number {i} {'feel inside' if i % 3 == 0 else 'fan noise'}" for i in range(12)]})
    texts.to_parquet(run_dir / "texts.parquet", index=False)
    # the label stage reads texts only on the digest a capture entry recorded
    from lockstep.fsio import sha256_file
    from lockstep.journal import append_entry
    from lockstep.lock import current_lock_digest

    append_entry(study, "capture", inputs={}, outputs={"runs/demo/sampled/texts.parquet": sha256_file(run_dir / "texts.parquet")},
                 access_level="nothing_run", lock_digest=current_lock_digest(study),
                 details={"runs": ["sampled"], "design": "routing", "runs_root": "runs"})
    return require_frozen(study), run_dir, texts


@pytest.fixture
def human_study(repo):
    return _study_with_texts(repo, HUMAN)


def _read_sheet(path: Path) -> list[dict]:
    lines = path.read_text().splitlines(keepends=True)
    assert lines[0] == "# labels: inner | outer\n"
    return list(csv.DictReader(lines[1:]))


def test_sheet_is_blinded_shuffled_and_round_trips(human_study, tmp_path):
    from audit.label import export_sheet, import_sheet

    frozen, run_dir, texts = human_study
    sheet = export_sheet(frozen, "sampled", run_dir, tmp_path / "sheet.csv")
    rows = _read_sheet(sheet)
    assert [r["code"] for r in rows] == [f"T{i:04d}" for i in range(1, 13)]
    assert not any("p0" in value or "FIRE" in value for r in rows for value in r.values())  # ids and classes hidden
    by_text = dict(zip(texts.trimmed_text, texts.prompt_id))
    assert [by_text[r["text"]] for r in rows] != sorted(by_text.values())  # shuffled
    truth = {pid: ("inner" if "feel" in text else "outer") for text, pid in by_text.items()}
    out = io.StringIO()
    out.write("# labels: inner | outer\n")
    writer = csv.DictWriter(out, fieldnames=["code", "text", "label"])
    writer.writeheader()
    for r in rows:
        writer.writerow(r | {"label": truth[by_text[r["text"]]]})
    (tmp_path / "filled.csv").write_text(out.getvalue())
    result = import_sheet(frozen, "sampled", run_dir, tmp_path / "filled.csv")
    labels = pd.read_parquet(result.path)
    assert dict(zip(labels.prompt_id, labels.label)) == truth
    assert result.entry["stage"] == "label" and result.entry["access_level"] == "labels_frozen"


def test_a_bad_sheet_lists_every_problem(human_study, tmp_path):
    from audit.label import export_sheet, import_sheet

    frozen, run_dir, _ = human_study
    rows = _read_sheet(export_sheet(frozen, "sampled", run_dir, tmp_path / "sheet.csv"))
    rows[0]["label"] = "inward"
    rows[1]["code"] = "T9999"
    del rows[2]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["code", "text", "label"])
    writer.writeheader()
    writer.writerows([r | {"label": r["label"] or "outer"} for r in rows])
    (tmp_path / "bad.csv").write_text(out.getvalue())
    with pytest.raises(SchemaError) as info:
        import_sheet(frozen, "sampled", run_dir, tmp_path / "bad.csv")
    messages = [p.message for p in info.value.problems]
    assert any("'inward' is not a label" in m for m in messages)
    assert any("unknown code 'T9999'" in m for m in messages)
    assert any("code T0002 has no row" in m for m in messages) and any("code T0003 has no row" in m for m in messages)
    assert not (run_dir / "labels.parquet").exists()


# ---------------------------------------------------------------- the human arm beside the lexicon (rubric human_arm)

ARMED = """schema_version: 1
kind: lexicon
text_zone: trimmed
labels:
  inner: "Dwells on inner-state words."
  outer: "Anything else."
target_label: inner
human_arm:
  labeller_of_record: {record}
  min_kappa: 0.6
lexicon:
  sets:
    inner_state: [feel, inside]
  features:
    inner_count: {{count_of: inner_state}}
  rules:
    - label: inner
      all: [{{feature: inner_count, op: ">=", value: 2}}]
  otherwise: outer
human:
  instructions: "Read each text and choose one label."
  seed: 7
"""


def _armed_study(repo, record: str):
    return _study_with_texts(repo, ARMED.format(record=record))


def _fill(sheet: Path, texts: pd.DataFrame, human: dict[str, str], out: Path) -> Path:
    rows = _read_sheet(sheet)
    by_text = dict(zip(texts.trimmed_text, texts.prompt_id))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["code", "text", "label"])
    writer.writeheader()
    for r in rows:
        writer.writerow(r | {"label": human[by_text[r["text"]]]})
    out.write_text(buffer.getvalue())
    return out


def test_the_human_arm_is_the_labeller_of_record_and_its_kappa_is_recorded(repo, tmp_path):
    from sklearn.metrics import cohen_kappa_score

    from audit.label import LockstepError, export_sheet, import_sheet, label_run, run_agreement

    frozen, run_dir, texts = _armed_study(repo, "human")
    with pytest.raises(LockstepError, match="declares a human arm"):
        label_run(frozen, "sampled", run_dir)  # the lexicon alone may not freeze this run's labels
    lexicon = {f"p{i:02d}": "inner" if i % 3 == 0 else "outer" for i in range(12)}
    human = dict(lexicon) | {"p01": "inner", "p02": "inner"}  # two disagreements: 10 of 12 agree
    sheet = export_sheet(frozen, "sampled", run_dir, tmp_path / "sheet.csv")
    result = import_sheet(frozen, "sampled", run_dir, _fill(sheet, texts, human, tmp_path / "filled.csv"))
    labels = pd.read_parquet(result.path)
    assert dict(zip(labels.prompt_id, labels.label)) == human            # the labeller of record
    assert dict(zip(labels.prompt_id, labels.lexicon_label)) == lexicon  # the lexicon, on the same texts
    assert set(labels.rule) == {"human"}
    ids = sorted(human)
    # by hand: p_o = 10/12; human inner 6/12, lexicon inner 4/12: p_e = .5*(4/12) + .5*(8/12) = .5; kappa = (5/6 - .5)/.5 = 2/3
    expected = cohen_kappa_score([human[i] for i in ids], [lexicon[i] for i in ids])
    assert expected == pytest.approx(2 / 3)
    assert result.agreement.kappa == pytest.approx(expected) and result.agreement.raw == pytest.approx(10 / 12)
    assert result.agreement.passed  # 0.667 >= 0.6
    recorded = result.entry["details"]["agreement"]
    assert recorded["kappa"] == pytest.approx(2 / 3) and recorded["passed"] is True and recorded["labeller_of_record"] == "human"
    assert run_agreement(require_frozen(frozen.root), run_dir).to_dict() == recorded  # what the audit reads back


def test_labels_below_the_minimum_kappa_are_frozen_and_flagged(repo, tmp_path):
    from audit.label import export_sheet, import_sheet

    frozen, run_dir, texts = _armed_study(repo, "lexicon")
    lexicon = {f"p{i:02d}": "inner" if i % 3 == 0 else "outer" for i in range(12)}
    human = dict(lexicon) | {"p00": "outer", "p01": "inner", "p02": "inner"}  # 9 of 12 agree
    sheet = export_sheet(frozen, "sampled", run_dir, tmp_path / "sheet.csv")
    result = import_sheet(frozen, "sampled", run_dir, _fill(sheet, texts, human, tmp_path / "filled.csv"))
    labels = pd.read_parquet(result.path)
    assert dict(zip(labels.prompt_id, labels.label)) == lexicon  # labeller of record: the lexicon
    assert dict(zip(labels.prompt_id, labels.human_label)) == human
    assert set(labels.rule) == {"rule 0", "otherwise"}
    # p_o = 9/12; human inner 5/12, lexicon inner 4/12: p_e = (5*4 + 7*8)/144 = 76/144; kappa = (108/144 - 76/144)/(68/144) = 32/68
    assert result.agreement.kappa == pytest.approx(32 / 68) and not result.agreement.passed
    assert result.entry["details"]["agreement"]["passed"] is False
    assert "is BELOW the preregistered minimum 0.6" in result.agreement.sentence()


def test_claims_on_flagged_register_labels_are_not_established():
    from audit.label import LOW_AGREEMENT, agreement, annotate_run_cards, hold_on_agreement

    rubric = {"labels": {"inner": "", "outer": ""}, "human_arm": {"labeller_of_record": "human", "min_kappa": 0.6}}
    low = agreement(["inner", "outer", "outer", "inner"], ["outer", "outer", "inner", "inner"], rubric)  # kappa 0
    good = agreement(["inner", "outer"], ["inner", "outer"], rubric)
    claim = {"status": "held", "reason": "all criteria met", "warnings": [], "warning_codes": []}
    by_label = {"kind": "two_group", "run": "sampled", "groups": {"by": "register_label", "a": "inner", "b": "outer"}}
    by_class = {"kind": "two_group", "run": "sampled", "groups": {"by": "prompt_class", "a": "FIRE", "b": "NOFIRE"}}
    model = {"kind": "register_vs_class", "runs": ["greedy", "sampled"], "register": {"target": "inner", "other": "outer"}}
    held = hold_on_agreement(claim, by_label, {"sampled": low})
    assert held["status"] == "not_established" and held["warning_codes"] == [LOW_AGREEMENT]
    assert "run sampled: human vs lexicon on 4 texts: Cohen's kappa 0.000" in held["reason"] and "held: all criteria met" in held["reason"]
    assert hold_on_agreement(claim, model, {"sampled": low, "greedy": good})["status"] == "not_established"
    assert hold_on_agreement(claim, by_class, {"sampled": low}) is claim      # the class grouping reads no label
    assert hold_on_agreement(claim, by_label, {"sampled": good}) is claim
    # a claim whose words ask too much stays unsupported, whatever its labels
    unsupported = claim | {"status": "unsupported"}
    assert hold_on_agreement(unsupported, by_label, {"sampled": low}) is unsupported
    # what the ledger reads to hand an analysis on flagged labels to its preregistered fallback
    from audit.label import low_agreement

    assert low_agreement(by_label, {"sampled": low}).startswith("register labels not corroborated (run sampled")
    assert low_agreement(by_class, {"sampled": low}) is None and low_agreement(by_label, {"sampled": good}) is None
    cards = [{"run_id": "sampled", "status": "pass", "warnings": []}, {"run_id": "greedy", "status": "fail", "warnings": []}]
    annotate_run_cards(cards, {"sampled": low, "greedy": good})
    assert cards[0]["status"] == "pass_with_warnings" and cards[0]["warnings"][0].startswith("labels flagged: ")
    assert cards[0]["labelling"]["passed"] is False and cards[1]["labelling"]["kappa"] == 1.0 and cards[1]["warnings"] == []
