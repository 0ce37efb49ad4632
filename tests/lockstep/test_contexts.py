"""lockstep.contexts: the per-token weight of a routed unit and the text window around a token,
shared by the discovery scan and the audit (checked here by hand)."""

import numpy as np

from lockstep.contexts import token_text, unit_weight, window


def test_unit_weight_sums_the_slots_that_name_the_expert():
    # 3 tokens × 2 MoE layers × top-2; expert 5 at layer index 1
    idx = np.array([[[0, 1], [5, 2]],
                    [[5, 5], [3, 4]],     # expert 5 only at layer index 0: weight 0 at index 1
                    [[1, 2], [2, 5]]])
    weight = np.array([[[.6, .4], [.7, .3]],
                       [[.5, .5], [.9, .1]],
                       [[.5, .5], [.8, .2]]], dtype=np.float32)
    np.testing.assert_allclose(unit_weight(idx, weight, 1, 5), [0.7, 0.0, 0.2], rtol=1e-6)
    np.testing.assert_allclose(unit_weight(idx, weight, 0, 5), [0.0, 1.0, 0.0], rtol=1e-6)


def test_window_reads_as_the_passage_and_stops_at_the_edges():
    text = token_text({1: "the", 2: "cat", 3: "sat", 4: "on", 5: "mats"})
    ids = np.array([1, 2, 3, 4, 9])
    w = window(ids, 2, 1, text, " ")
    assert w == {"before": "cat ", "token": "sat", "after": " on"}
    assert w["before"] + w["token"] + w["after"] == "cat sat on"
    assert window(ids, 0, 3, text, " ") == {"before": "", "token": "the", "after": " cat sat on"}
    assert window(ids, 4, 2, text, "") == {"before": "saton", "token": "<9>", "after": ""}
