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


@pytest.fixture
def human_study(repo):
    study = copy_study("demo", repo)
    (study / "rubric.yaml").write_text(HUMAN)
    commit_all(repo)
    freeze(study)
    run_dir = repo / "runs" / "demo" / "sampled"
    run_dir.mkdir(parents=True)
    texts = pd.DataFrame({"prompt_id": [f"p{i:02d}" for i in range(12)], "class": ["FIRE"] * 6 + ["NOFIRE"] * 6,
                          "trimmed_text": [f"text number {i} {'feel inside' if i % 3 == 0 else 'fan noise'}" for i in range(12)]})
    texts.to_parquet(run_dir / "texts.parquet", index=False)
    return require_frozen(study), run_dir, texts


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
