import numpy as np
import pytest

from stats import (
    ablation_summary,
    all_unit_baseline,
    compare_groups,
    compare_runs,
    paired_permutation_test,
    parse_unit_id,
    permutation_test,
    register_analysis,
    variance_check,
    wsq_decomposition,
)

X = np.arange(12.0).reshape(6, 2)
G = np.array([1, 1, 1, 0, 0, 0], bool)


@pytest.mark.parametrize("call,match", [
    (lambda: permutation_test(X, G, statistic="auc"), "`statistic` must be one of"),
    (lambda: permutation_test(X, G, alternative="up"), "`alternative` must be one of"),
    (lambda: permutation_test(X, G[:5]), "`group` must be a boolean mask"),
    (lambda: permutation_test(X, [1, 0, 0, 0, 0, 0]), "`group` must put at least 2 items"),
    (lambda: permutation_test(X, G, batch=0), "`batch` must be None or a positive integer"),
    (lambda: permutation_test(X, G, n_resamples=0), "`n_resamples` must be a positive integer"),
    (lambda: permutation_test(np.r_[np.nan, 1, 2, 3, 4, 5], G), "`x` contains NaN"),
    (lambda: permutation_test(X, G, dtype=np.int32), "`dtype` must be numpy.float32"),
    (lambda: paired_permutation_test(X, np.ones((5, 2))), "`y` must have the shape of `x`"),
    (lambda: paired_permutation_test(X, statistic="welch_t"), "`statistic` must be one of"),
    (lambda: all_unit_baseline(X, G, target="L1E1"), "`target` 'L1E1' is not among `unit_ids`"),
    (lambda: all_unit_baseline(X, G, unit_ids=["a", "a"]), "`unit_ids` must be unique"),
    (lambda: all_unit_baseline(X, G, alpha=1.5), "`alpha` must be strictly between"),
    (lambda: all_unit_baseline(np.ones((6, 2)), G), "`x` has no unit that varies"),
    (lambda: all_unit_baseline(X, G, nan_policy="omit"), "`nan_policy` must be 'raise' or 'drop_units'"),
    (lambda: compare_groups([1.0], [1.0, 2.0]), "`a` and `b` must each hold at least 2 values"),
    (lambda: compare_groups([1.0, 2.0], [1.0, 2.0], ci_method="wald"), "`ci_method` must be"),
    (lambda: compare_groups([1.0, 2.0], [1.0, 2.0], confidence=95), "`confidence` must be"),
    (lambda: compare_groups([1.0, 2.0], [1.0, 2.0], n_boot=10), "`n_boot` must be an integer"),
    (lambda: wsq_decomposition([0.5, 2.0, 0.1, 0.1], [0.1] * 4, [1, 1, 0, 0]), "`s` must be selection rates"),
    (lambda: wsq_decomposition([0.5] * 4, [0.1] * 3, [1, 1, 0, 0]), "`q` must have the shape of `s`"),
    (lambda: register_analysis([1.0, 2.0, 3.0, 4.0], ["F"] * 3, ["t"] * 4), "`prompt_class` must have one label"),
    (lambda: register_analysis([1.0] * 4, ["F"] * 4, ["t"] * 4, cov_type="HC9"), "`cov_type` must be one of"),
    (lambda: ablation_summary([1.0, 2.0], [1.0]), "`ablated_margin` must have the shape"),
    (lambda: ablation_summary([1.0, 2.0], [0.0, 1.0], control_baseline=[1.0, 2.0]), "`control_baseline` and `control_ablated` go together"),
    (lambda: ablation_summary([1.0, 2.0], [0.0, 1.0], relative_definition="median"), "`relative_definition` must be"),
    (lambda: compare_runs(((1, 2),)), "`runs` must be two"),
    (lambda: parse_unit_id("E114"), "`unit` 'E114' is not a unit id"),
    (lambda: permutation_test(X, G, null="same_median"), "`null` must be None, 'exchangeable' or 'equal_means'"),
    (lambda: permutation_test(X, G, resampling="wild"), "`resampling` must be None or 'permutation' with null='exchangeable'"),
    (lambda: permutation_test(X, G, null="equal_means", resampling="jackknife"), "`resampling` must be None or one of"),
    (lambda: paired_permutation_test(X, null="equal_means"), "`null` must be None or 'symmetric' for a paired design"),
    (lambda: all_unit_baseline(X, None, statistic="mean", null="equal_means"), "`null` must be None or 'symmetric'"),
    (lambda: all_unit_baseline(X, G, null="exchangable"), "`null` must be None, 'exchangeable' or 'equal_means'"),
    (lambda: permutation_test(np.ones((40, 2)) * np.arange(40)[:, None], np.arange(40) < 20, exact_cap=10 ** 12), "`exact_cap`=1,000,000,000,000 asks for exact enumeration"),
    (lambda: variance_check(X, G[:4]), "`group` must be a boolean mask"),
    (lambda: variance_check(np.r_[np.nan, 1, 2, 3, 4, 5], G), "`x` contains NaN"),
    (lambda: variance_check(X, G, unit_ids=["a"]), "`unit_ids` must have one id per unit"),
])
def test_input_validation_messages(call, match):
    with pytest.raises(ValueError, match=match):
        call()
