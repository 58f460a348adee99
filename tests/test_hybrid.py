"""Fusion of a dense and a BM25 ranking: hand-computed fused scores and orders, candidate gathering, CCPM choices."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from st_poetry.core.config import FusionOptions, QueryConfig
from st_poetry.retrieval.hybrid import (
    Candidates,
    candidates,
    fuse,
    fused_choice_scores,
    fused_ranking,
    ranking,
    top_ids,
)
from st_poetry.retrieval.lexical import bm25_scores, build_bm25, single_chars

# One query, four candidates (ids 0-3), and a second query with two candidates and two padding columns.
FOUND = Candidates(
    ids=np.array([[0, 1, 2, 3], [7, 8, -1, -1]]),
    dense=np.array([[0.9, 0.7, 0.5, 0.1], [0.2, 0.4, 0.0, 0.0]], dtype=np.float32),
    lexical=np.array([[0.0, 3.0, 1.0, 5.0], [2.0, 0.0, 0.0, 0.0]], dtype=np.float32),
)


def order(options: FusionOptions, found: Candidates = FOUND) -> list[list[int]]:
    return [[hit[0] for hit in hits] for hits in ranking(found, fuse(found, options), top_k=10)]


def test_interpolation_of_min_max_normalised_scores():
    # dense -> (x - 0.1) / 0.8 = [1, .75, .5, 0]; BM25 -> x / 5 = [0, .6, .2, 1]; alpha .5: [.5, .675, .35, .5]
    fused = fuse(FOUND, FusionOptions(alpha=0.5, depth=4))
    assert fused[0] == pytest.approx([0.5, 0.675, 0.35, 0.5])
    # ties (0 and 3; the second query's two lines, both .5) go to the higher dense score; padding is never a hit
    assert order(FusionOptions(alpha=0.5, depth=4)) == [[1, 0, 3, 2], [8, 7]]
    assert order(FusionOptions(alpha=1.0, depth=4))[0] == [0, 1, 2, 3]  # dense alone
    assert order(FusionOptions(alpha=0.0, depth=4))[0] == [3, 1, 2, 0]  # BM25 alone


def test_reciprocal_rank_fusion_leaves_out_a_side_that_did_not_list_the_line():
    fused = fuse(FOUND, FusionOptions(fusion="rrf", alpha=0.5, depth=4, rrf_k=60))
    # dense ranks 1..4; BM25 lists 3, 1, 2 (line 0 has no shared token, so no BM25 term)
    expected = [0.5 / 61, 0.5 / 62 + 0.5 / 62, 0.5 / 63 + 0.5 / 63, 0.5 / 64 + 0.5 / 61]
    assert fused[0] == pytest.approx(expected)
    assert order(FusionOptions(fusion="rrf", alpha=0.5, depth=4))[0] == [1, 3, 2, 0]


def test_candidates_outside_both_top_depths_are_dropped():
    # depth 1: dense's best is 0, BM25's is 3; normalised over those two alone they tie at .5
    fused = fuse(FOUND, FusionOptions(alpha=0.5, depth=1))
    assert np.isneginf(fused[0, [1, 2]]).all() and fused[0, [0, 3]] == pytest.approx([0.5, 0.5])
    assert order(FusionOptions(alpha=0.5, depth=1)) == [[0, 3], [8, 7]]


def test_candidates_are_the_union_of_both_top_lists_with_exact_scores_for_both_sides():
    texts = ["甲乙丙", "丁戊己", "庚辛壬", "子丑寅", "卯辰巳", "午未申"]
    vectors = np.random.default_rng(0).normal(size=(len(texts), 8)).astype(np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    bm25 = build_bm25(texts, single_chars)
    # the query's embedding is line 0's, its characters are line 5's: depth 1 finds both, and only them
    found = candidates(index, vectors[:1], bm25, [single_chars("午未申。")], depth=1)
    assert found.ids.tolist() == [[0, 5]]
    assert found.dense[0] == pytest.approx(vectors[[0, 5]] @ vectors[0])
    assert found.lexical[0] == pytest.approx(bm25_scores(bm25, single_chars("午未申"))[[0, 5]])
    assert found.lexical[0, 0] == 0 and found.lexical[0, 1] > 0
    # a query with no token in the index has dense candidates only
    dense_top = index.search(vectors[:1], 2)[1][0].tolist()
    assert candidates(index, vectors[:1], bm25, [[]], depth=2).ids.tolist() == [dense_top]


def test_a_search_gathers_at_least_as_deep_as_the_lines_it_returns():
    texts = ["甲乙丙", "丁戊己", "庚辛壬", "子丑寅", "卯辰巳", "午未申"]
    vectors = np.random.default_rng(1).normal(size=(len(texts), 8)).astype(np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    bm25 = build_bm25(texts, single_chars)
    tokens = [single_chars("午未申")]
    for fusion in ("interpolate", "rrf"):
        options = FusionOptions(fusion=fusion, depth=1)
        # depth 1: two candidates at most, whatever top_k asks
        shallow = ranking(found := candidates(index, vectors[:1], bm25, tokens, 1), fuse(found, options), top_k=4)
        assert len(shallow[0]) == 2
        (hits,) = fused_ranking(index, vectors[:1], bm25, tokens, options, top_k=4)
        assert len(hits) == 4 and len({hit[0] for hit in hits}) == 4
        assert len(fused_ranking(index, vectors[:1], bm25, tokens, options, top_k=100)[0]) == len(texts)
        # at top_k <= depth the search is the plain fusion of that depth
        options = FusionOptions(fusion=fusion, depth=3)
        deep = ranking(found := candidates(index, vectors[:1], bm25, tokens, 3), fuse(found, options), top_k=2)
        assert fused_ranking(index, vectors[:1], bm25, tokens, options, top_k=2) == deep


def test_ccpm_choices_are_fused_over_each_records_choices():
    dense = [np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.1])]
    lexical = [np.array([0.0, 5.0, 0.0, 0.0]), np.array([4.0, 0.0, 1.0])]
    pick = lambda options: [int(scores.argmax()) for scores in fused_choice_scores(dense, lexical, options)]  # noqa: E731
    assert pick(FusionOptions(alpha=1.0)) == [0, 1]
    assert pick(FusionOptions(alpha=0.0)) == [1, 0]
    # alpha .5, record 2: choice 0 = .5 * .8 + .5 * 1 = .9 beats choice 1 = .5 * 1 + 0
    assert pick(FusionOptions(alpha=0.5)) == [0, 0]
    assert [len(scores) for scores in fused_choice_scores(dense, lexical, FusionOptions(fusion="rrf"))] == [4, 3]


def test_fusion_options_are_checked_also_beside_a_configs_other_options():
    for bad in ({"alpha": 1.5}, {"depth": 0}, {"rrf_k": -1}, {"rrf_k": 10**30}):
        with pytest.raises(ValueError):
            FusionOptions(**bad)
    with pytest.raises(ValueError, match="alpha"):
        QueryConfig(alpha=-0.1)
    with pytest.raises(ValueError, match="rerank_top_k"):  # the reranking options' checks still run
        QueryConfig(rerank_top_k=0)


@pytest.mark.parametrize("k", [1, 10, 50, 999, 1000, 5000])
def test_top_ids_are_the_k_highest_scores_whatever_their_spread(k):
    """The sampled threshold keeps the exact top k: on scores mostly zero like BM25's, on scores whose top all
    fall between the samples, on ties, and when k is most or all of the array (a full partition)."""
    rng = np.random.default_rng(0)
    sparse = np.where(rng.random(4000) < 0.3, rng.random(4000), 0).astype(np.float32)
    hidden = np.zeros(4000, dtype=np.float32)
    hidden[1::32] = np.arange(125)  # every top score off the sample's stride
    tied = np.ones(4000, dtype=np.float32)
    for scores in (sparse, hidden, tied):
        found = top_ids(scores, k)
        assert len(found) == min(k, len(scores)) == len(set(found.tolist()))
        assert np.sort(scores[found]).tolist() == np.sort(scores)[::-1][: len(found)][::-1].tolist()
