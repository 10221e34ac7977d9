"""Re-ranking rule: confident evidence lifts a candidate; missing evidence never pushes one down."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgsearch.comparators import DEFAULT_EVIDENCE, Candidate, Evidence, Score, rerank
from imgsearch.comparators.fusion import bonus


def verified(verdict: str = "duplicate", inliers: int = 200) -> dict[str, Score]:
    score = 0.97 if verdict == "duplicate" else 0.7
    extra = {"inliers": inliers, "inlier_ratio": 0.9, "verdict": verdict}
    return {"verify": Score(float(inliers), score, extra), "sift": Score(300.0, 0.99)}


def nothing() -> dict[str, Score]:
    """Comparators ran but found nothing: not evidence either way."""
    extra = {"inliers": 0, "inlier_ratio": 0.0, "verdict": "similar"}
    return {"verify": Score(0.0, 0.0, extra), "sift": Score(3.0, 0.0)}


def test_verified_copy_moves_from_fifth_to_first() -> None:
    candidates = [Candidate(i, s, nothing()) for i, s in enumerate([0.95, 0.93, 0.9, 0.88])]
    candidates.append(Candidate(99, 0.62, verified("edited", 40)))
    ranked = rerank(candidates)
    assert [r.id for r in ranked] == [99, 0, 1, 2, 3]
    assert ranked[0].rank_before == 5  # 1-based embedding rank
    assert [r.rank_before for r in ranked[1:]] == [1, 2, 3, 4]
    assert ranked[0].score > ranked[1].score


def test_strong_match_without_evidence_keeps_its_place() -> None:
    candidates = [
        Candidate(1, 0.97, {}),  # strong, no comparator scores at all
        Candidate(2, 0.80, nothing()),
        Candidate(3, 0.78, verified()),
        Candidate(4, 0.60, nothing()),
        Candidate(5, 0.59, {"histogram": Score(0.2, 0.2)}),  # weak, under threshold
    ]
    ranked = rerank(candidates)
    assert [r.id for r in ranked] == [3, 1, 2, 4, 5]
    for r in ranked:
        if r.id != 3:
            assert r.bonus == 0.0 and r.score == r.similarity


def test_appearance_evidence_only_reorders_near_ties() -> None:
    perfect = {name: Score(1.0, 1.0) for name in ("histogram", "ssim", "basic")}
    ranked = rerank([Candidate(1, 0.90, {}), Candidate(2, 0.75, perfect)])
    assert [r.id for r in ranked] == [1, 2]
    ranked = rerank([Candidate(1, 0.90, {}), Candidate(2, 0.88, perfect)])
    assert [r.id for r in ranked] == [2, 1]


def test_unknown_comparators_count_as_weak_evidence() -> None:
    assert bonus({"plugin": Score(1.0, 1.0)}, DEFAULT_EVIDENCE) <= 0.1
    assert bonus({"plugin": Score(1.0, 0.5)}, DEFAULT_EVIDENCE) == 0.0
    custom = {"plugin": Evidence(threshold=0.5, weight=3.0)}
    assert bonus({"plugin": Score(1.0, 0.5)}, custom) == 1.5


def test_rerank_wants_embedding_order() -> None:
    assert rerank([]) == []
    with pytest.raises(ValueError):
        rerank([Candidate(1, 0.5), Candidate(2, 0.9)])
    ties = rerank([Candidate(1, 0.5), Candidate(2, 0.5), Candidate(3, 0.5)])
    assert [r.id for r in ties] == [1, 2, 3]


def test_ranked_as_json() -> None:
    (ranked,) = rerank([Candidate(7, 0.5, verified())])
    out = ranked.as_json()
    assert out["rank_before"] == 1 and out["score"] > out["similarity"] == 0.5
    assert out["comparators"]["verify"]["verdict"] == "duplicate"


_scores = st.fixed_dictionaries(
    {},
    optional={name: st.floats(0.0, 1.0).map(lambda s: Score(s, s)) for name in DEFAULT_EVIDENCE},
)


@given(st.lists(st.tuples(st.floats(-1.0, 1.0), _scores), max_size=12))
def test_evidence_only_ever_lifts(items: list[tuple[float, dict[str, Score]]]) -> None:
    items.sort(key=lambda item: -item[0])
    ranked = rerank([Candidate(i, s, scores) for i, (s, scores) in enumerate(items)])
    position = {r.id: n for n, r in enumerate(ranked)}
    gained = {r.id: r.bonus for r in ranked}
    assert sorted(position) == list(range(len(items)))
    for a in range(len(items)):
        assert gained[a] >= 0.0
        for b in range(a + 1, len(items)):
            # a was above b in embedding order; with at least as much evidence it stays above.
            if gained[a] >= gained[b]:
                assert position[a] < position[b]
