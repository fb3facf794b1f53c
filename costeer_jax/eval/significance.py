"""Paired t-tests between two methods on the same examples (CoSteer App. B.3, Table 7)."""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

SIGNIFICANCE_LEVEL = 0.05


@dataclasses.dataclass(frozen=True)
class PairedTest:
    num_pairs: int
    mean_difference: float  # mean of (method - baseline) over the paired examples
    t_statistic: float
    p_value: float  # two-sided; nan when undefined (fewer than 2 pairs or identical scores)

    def improves(self, level: float = SIGNIFICANCE_LEVEL) -> bool:
        """Higher on average and significant at `level`."""
        return self.mean_difference > 0 and not math.isnan(self.p_value) and self.p_value < level


def paired_t_test(method_scores: Sequence[float], baseline_scores: Sequence[float]) -> PairedTest:
    """scipy's ttest_rel on aligned per-example scores."""
    from scipy import stats

    if len(method_scores) != len(baseline_scores):
        raise ValueError(f"paired test needs aligned scores: {len(method_scores)} vs {len(baseline_scores)}")
    pairs = len(method_scores)
    mean_difference = (sum(m - b for m, b in zip(method_scores, baseline_scores)) / pairs) if pairs else math.nan
    if pairs < 2:
        return PairedTest(pairs, mean_difference, math.nan, math.nan)
    result = stats.ttest_rel(method_scores, baseline_scores)
    return PairedTest(pairs, mean_difference, float(result.statistic), float(result.pvalue))


def paired_t_test_by_id(method_scores: Mapping[str, float | None],
                        baseline_scores: Mapping[str, float | None]) -> PairedTest:
    """Pairs two {example id: score} maps on the ids both scored (None means unscored)."""
    shared = [key for key in method_scores
              if key in baseline_scores and method_scores[key] is not None and baseline_scores[key] is not None]
    return paired_t_test([method_scores[key] for key in shared], [baseline_scores[key] for key in shared])


def significance_marker(tests: Sequence[PairedTest], level: float = SIGNIFICANCE_LEVEL) -> str:
    """Table 7's asterisk: the method beats every baseline, each significantly."""
    return "*" if tests and all(test.improves(level) for test in tests) else ""
