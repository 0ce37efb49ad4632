"""The lexicon rubric and the blinded human sheet, against hand-counted texts."""

from __future__ import annotations

import pytest

from audit.label import apply_rules, lexicon_features, words

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
