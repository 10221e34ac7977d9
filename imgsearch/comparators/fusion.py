"""Re-ranking: embedding similarity plus a bonus from confident comparator evidence.

The rule: evidence can only lift a candidate. A candidate's fused score is its embedding
similarity plus, for each comparator that is *confident* (score at or above its threshold),
weight x score. No evidence adds nothing and nothing is ever subtracted, so:

* candidates without evidence keep the embedding's order among themselves (a strong
  embedding match is never pushed below a weaker one just because a comparator was unsure
  or its features were poor: flat images, no keypoints, a heavy crop for SSIM...);
* a geometrically verified copy (verify: duplicate/edited, or many SIFT/ORB matches) gains
  more than the whole spread of cosine similarities among typical top-k hits, so it rises
  to the top even from 5th place.

Why not a weighted average of all scores? Because low scores are not evidence of
difference: SIFT finds nothing on a blurred copy, SSIM collapses on a crop, a histogram
shifts with a colour filter. Averaging them in would push the true match down. Appearance
comparators (histogram, ssim, basic) are weak evidence (two different beach photos share
colours), so they get small weights and high thresholds and can only reorder near-ties;
geometric ones (verify, sift, orb) are strong and get large weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .base import Score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evidence:
    """How much a comparator's confident score counts: `threshold` to count, `weight` x score."""

    threshold: float
    weight: float


# Thresholds from the comparators' calibration (14 scikit-image sample pictures: 182
# unrelated pairs, and generated copies of each): verify scores 0 unless the geometry checks
# out (then >= 0.5); sift/orb reach 0.5 at about 31/26 good matches, where unrelated pairs
# top out at 15/5; unrelated pairs reach histogram correlations of 0.74 and template/SSIM
# scores of 0.82/0.69, so only near-perfect appearance counts. Weights: verify alone
# (>= 0.5 x 2.0 = 1.0) outweighs any cosine gap between hits that look at all alike;
# appearance adds at most 0.12 in all, enough to reorder near-ties only.
DEFAULT_EVIDENCE: Mapping[str, Evidence] = MappingProxyType(
    {
        "verify": Evidence(threshold=0.5, weight=2.0),
        "sift": Evidence(threshold=0.5, weight=1.0),
        "orb": Evidence(threshold=0.5, weight=0.5),
        "basic": Evidence(threshold=0.95, weight=0.05),
        "ssim": Evidence(threshold=0.9, weight=0.05),
        "histogram": Evidence(threshold=0.95, weight=0.02),
    }
)
# Float noise allowed when checking that the input is in embedding order.
SIMILARITY_TOLERANCE = 1e-6
# A comparator not in the table (a plugin) counts as weak appearance evidence.
UNKNOWN_EVIDENCE = Evidence(threshold=0.9, weight=0.05)


@dataclass(frozen=True)
class Candidate:
    """One embedding hit to re-rank: its id, cosine similarity (-1..1) and comparator scores."""

    id: int
    similarity: float
    scores: Mapping[str, Score] = field(default_factory=dict)


@dataclass(frozen=True)
class Ranked:
    """A re-ranked hit: fused `score` (similarity + bonus) and 1-based `rank_before`."""

    id: int
    score: float
    similarity: float
    bonus: float
    rank_before: int
    scores: Mapping[str, Score]

    def as_json(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 6),
            "similarity": round(self.similarity, 6),
            "bonus": round(self.bonus, 6),
            "rank_before": self.rank_before,
            "comparators": {name: score.as_json() for name, score in self.scores.items()},
        }


def bonus(scores: Mapping[str, Score], evidence: Mapping[str, Evidence]) -> float:
    """Sum of weight x score over the comparators confident enough to count (>= 0)."""
    total = 0.0
    for name, score in scores.items():
        rule = evidence.get(name, UNKNOWN_EVIDENCE)
        if score.score >= rule.threshold:
            total += rule.weight * max(0.0, score.score)
    return total


def rerank(
    candidates: Sequence[Candidate], evidence: Mapping[str, Evidence] = DEFAULT_EVIDENCE
) -> list[Ranked]:
    """Re-order embedding hits (given best first) by fused score; ties keep embedding order.

    `rank_before` is the candidate's 1-based position in the input, i.e. the embedding rank.
    Raises ValueError if the input is not in embedding order (similarity non-increasing).
    """
    for before, after in zip(candidates, candidates[1:], strict=False):
        if after.similarity > before.similarity + SIMILARITY_TOLERANCE:
            raise ValueError("candidates must be in embedding order (best similarity first)")
    ranked = []
    for position, candidate in enumerate(candidates, start=1):
        extra = bonus(candidate.scores, evidence)
        ranked.append(
            Ranked(
                id=candidate.id,
                score=candidate.similarity + extra,
                similarity=candidate.similarity,
                bonus=extra,
                rank_before=position,
                scores=candidate.scores,
            )
        )
    # Sorting on (-score, rank_before) rather than a stable sort of scores alone: the input
    # order is the embedding order even where two similarities are equal.
    ranked.sort(key=lambda r: (-r.score, r.rank_before))
    return ranked
