"""lockstep statistics: effect sizes and intervals, permutation engines, the all-unit max-T baseline
(permutation null, or an equal-means null by residual resampling), the variance diagnostic, W/S/Q,
register vs prompt class, reproduction and ablation summaries.

Every public function validates its input (``ValueError`` naming the parameter in backticks) and
returns a frozen dataclass with ``.to_frame()``.
"""

from stats._common import Flag, parse_unit_id, unit_id
from stats.ablation import (
    AblationResult,
    ablation_summary,
    control_adjusted_baseline,
    describe_margins,
    slot_rankings,
)
from stats._torch import use_backend
from stats.baseline import BaselineResult, all_unit_baseline
from stats.effects import TwoGroupResult, cohen_d, compare_groups, d_interval, hedges_g
from stats.permutation import (
    PermutationResult,
    paired_permutation_test,
    permutation_test,
)
from stats.rank import RankInterval, rank_interval
from stats.register import RegisterResult, crosses, register_analysis
from stats.reproduction import ReproductionResult, compare_runs
from stats.tables import UnitTable, pivot_units
from stats.variance import VarianceCheckResult, variance_check
from stats.wsq import WSQResult, wsq_decomposition

__all__ = [
    "AblationResult",
    "BaselineResult",
    "Flag",
    "PermutationResult",
    "RankInterval",
    "RegisterResult",
    "ReproductionResult",
    "TwoGroupResult",
    "UnitTable",
    "VarianceCheckResult",
    "WSQResult",
    "ablation_summary",
    "control_adjusted_baseline",
    "describe_margins",
    "slot_rankings",
    "all_unit_baseline",
    "cohen_d",
    "compare_groups",
    "compare_runs",
    "d_interval",
    "hedges_g",
    "paired_permutation_test",
    "parse_unit_id",
    "permutation_test",
    "pivot_units",
    "crosses",
    "rank_interval",
    "register_analysis",
    "unit_id",
    "use_backend",
    "variance_check",
    "wsq_decomposition",
]
