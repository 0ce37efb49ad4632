"""The write-up check on hand-made ledgers: the routing journal's own numbers, rounding, arithmetic."""

from __future__ import annotations

from audit.writeup import check_writeup, cite


def _ledger(**numbers):
    claim = {"hypothesis": "H1", "kind": "confirmatory", "claim": "L14E114 carries more W on FIRE.", "status": "held",
             "numbers": numbers, "criteria": [], "evidence_standard": [{"point": 1, "name": "generation-side", "met": True}]}
    return {"study_id": "e114", "lock_digest": "ab" * 32, "tool_version": "0.1.0", "synthetic": False, "claims": [claim], "runs": []}


# the journal's heldout numbers: W 0.067450 vs 0.003111, ratio 21.68, d 2.94; S = 75/108, W = S x Q
JOURNAL = _ledger(mean_a=0.067450, mean_b=0.003111, ratio=21.681131, cohen_d=2.9412, s=0.694444, q=0.120066, w=0.083379)


def test_the_journals_numbers_trace_and_its_arithmetic_holds():
    text = ("Heldout W was 0.067450 (FIRE) vs 0.003111 (NOFIRE): ratio 21.68x, Cohen's d 2.94.\n"
            "Check: 0.067450 / 0.003111 = 21.68; W = S × Q: 0.694444 × 0.120066 = 0.083379; S = 75/108 = 0.694444.\n")
    report = check_writeup(text, JOURNAL)
    assert report.ok, report.render()
    assert {path for _, path, _ in report.matched} >= {"claims[0].numbers.mean_a", "claims[0].numbers.ratio", "claims[0].numbers.cohen_d"}
    assert len(report.checks) == 4 and all(c.holds for c in report.checks)   # /, ×, /, and the ratio from the quoted means


def test_an_altered_number_and_wrong_arithmetic_are_named():
    text = "Ratio 21.86x (d 2.94); 0.694444 × 0.120066 = 0.083479; 75 / 108 (64.4%) of tokens.\n"
    report = check_writeup(text, JOURNAL)
    assert not report.ok
    assert [q.text for q in report.untraceable] == ["21.86x"]
    assert [c.holds for c in report.checks] == [False, False]


def test_rounding_is_read_from_the_printed_digits():
    ledger = _ledger(p_value=0.000649505, ratio=3.46193)
    assert check_writeup("p = 0.0006495 and p = 6.495e-4; ratio 3.46, 3.5, 3.462", ledger).ok
    assert not check_writeup("ratio 3.47", ledger).ok          # 3.46193 prints 3.46 at two decimals
    assert check_writeup("a share of 35%", _ledger(share=0.3462)).ok


def test_names_dates_and_list_markers_are_not_numbers():
    report = check_writeup("1. L14E114 and fire-03 on 2026-11-30 (H1, A2, Qwen3.5)\n## 2 Results\n", _ledger())
    assert report.matched == [] and report.untraceable == []


def test_the_citation_sentence_quotes_the_ledger():
    (sentence,) = cite(JOURNAL)
    assert "H1 (confirmatory" in sentence and "was held" in sentence and "ratio 21.68" in sentence
    assert check_writeup(sentence, JOURNAL).untraceable == []   # every number of the draft traces back
