"""The page allocator: refcounts, free-queue order, prefix hashes and eviction. Plain Python, fast."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from jllm.block_manager import BlockManager, hash_page
from jllm.sequence import Sequence

_ids = itertools.count()


def make_seq(tokens: list[int], request_id: str | None = None, sample_index: int = 0) -> Sequence:
    seq_id = next(_ids)
    return Sequence(
        seq_id=seq_id,
        request_id=request_id or f"r{seq_id}",
        sample_index=sample_index,
        prompt_token_ids=list(tokens),
        sampling_params=SimpleNamespace(max_tokens=16, n=1),
        arrival_time=0.0,
        sampling_seed=0,
    )


def compute(bm: BlockManager, seq: Sequence, num_new: int | None = None) -> None:
    """What a scheduled step does to the allocator: pages, then K/V written, then hashes."""
    num_new = seq.num_tokens - seq.num_computed_tokens if num_new is None else num_new
    assert bm.allocate(seq, num_new)
    seq.num_computed_tokens += num_new
    bm.cache_full_pages(seq)


def assert_pool_whole(bm: BlockManager) -> None:
    bm.check_invariants([])
    assert bm.num_free_pages == bm.num_usable_pages
    assert bm.num_allocated_pages == 0 and bm.usage == 0.0


def test_page_zero_is_never_handed_out() -> None:
    bm = BlockManager(num_pages=5, page_size=4, enable_prefix_caching=False)
    seq = make_seq(list(range(16)))
    assert bm.allocate(seq, 16)
    assert sorted(seq.block_table) == [1, 2, 3, 4]
    assert bm.num_free_pages == 0 and bm.usage == 1.0
    bm.check_invariants([seq])


def test_allocate_is_all_or_nothing() -> None:
    bm = BlockManager(num_pages=4, page_size=4, enable_prefix_caching=False)
    a, b = make_seq(list(range(8))), make_seq(list(range(8)))
    assert bm.allocate(a, 8)
    assert not bm.allocate(b, 8)  # needs 2, only 1 free
    assert b.block_table == [] and bm.num_free_pages == 1
    assert bm.allocate(b, 4)
    bm.check_invariants([a, b])


def test_allocate_grows_only_by_missing_pages() -> None:
    bm = BlockManager(num_pages=8, page_size=4, enable_prefix_caching=False)
    seq = make_seq(list(range(10)))
    compute(bm, seq, 3)
    assert len(seq.block_table) == 1
    assert bm.allocate(seq, 1)  # token 3 still fits page 0 of the table
    assert len(seq.block_table) == 1
    assert bm.allocate(seq, 6)  # tokens 3..8 need 3 pages in all
    assert len(seq.block_table) == 3
    assert bm.num_pages_needed(9) == 3 and bm.num_pages_needed(8) == 2


def test_free_restores_pool_and_refcounts() -> None:
    bm = BlockManager(num_pages=10, page_size=4, enable_prefix_caching=True)
    seqs = [make_seq(list(range(i, i + 9))) for i in range(3)]
    for seq in seqs:
        compute(bm, seq)
    bm.check_invariants(seqs)
    assert bm.num_allocated_pages == 9
    for seq in seqs:
        bm.free(seq)
        assert seq.block_table == []
    assert_pool_whole(bm)


def test_free_queue_takes_empty_pages_before_cached_ones() -> None:
    bm = BlockManager(num_pages=7, page_size=2, enable_prefix_caching=True)
    cached = make_seq([1, 2, 3, 4, 5])  # 2 full pages get hashes, the third holds 1 token
    compute(bm, cached)
    table = list(cached.block_table)
    bm.free(cached)
    # The unhashed tail page goes to the front; the hashed ones to the back, tail first.
    fresh = make_seq([9] * 8)
    assert bm.allocate(fresh, 2)
    assert fresh.block_table == [table[2]]
    assert bm.allocate(fresh, 8)  # 3 more pages: the 3 never-used ones, before any cached page
    assert set(fresh.block_table[1:]) == {4, 5, 6}
    assert bm.num_cached_pages == 2
    more = make_seq([7] * 2)
    assert bm.allocate(more, 2)
    assert more.block_table == [table[1]]  # the cached tail is evicted before the cached head
    assert bm.num_cached_pages == 1


def test_chained_hash_depends_on_parent() -> None:
    page = [5, 6, 7, 8]
    assert hash_page(None, page) == hash_page(None, list(page))
    assert hash_page(hash_page(None, [1, 2, 3, 4]), page) != hash_page(hash_page(None, [0, 2, 3, 4]), page)
    assert hash_page(None, page) != hash_page(hash_page(None, []), page)

    bm = BlockManager(num_pages=16, page_size=4, enable_prefix_caching=True)
    first = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    compute(bm, first)
    other = make_seq([0, 2, 3, 4, 5, 6, 7, 8, 9])  # same second page, different parent
    assert bm.match_prefix(other) == 0
    assert other.block_table == []


def test_second_request_hits_shared_prefix() -> None:
    bm = BlockManager(num_pages=32, page_size=4, enable_prefix_caching=True)
    system = list(range(100, 120))  # 5 full pages
    first = make_seq(system + [1, 2, 3])
    assert bm.match_prefix(first) == 0
    compute(bm, first)
    second = make_seq(system + [7, 8])
    assert bm.match_prefix(second) == 20
    second.num_computed_tokens = 20  # the scheduler counts the covered tokens as computed
    assert second.block_table == first.block_table[:5]
    assert all(bm.ref_count(p) == 2 for p in second.block_table)
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (23 + 22, 20)
    compute(bm, second)
    bm.check_invariants([first, second])
    bm.free(first)
    bm.free(second)
    assert_pool_whole(bm)


def test_a_cache_salt_shares_pages_only_with_prompts_of_the_same_salt() -> None:
    """vLLM's ``cache_salt``: the salt starts the chain of page hashes, so a prompt finds only its salt's pages."""
    bm = BlockManager(num_pages=32, page_size=4, enable_prefix_caching=True)
    system = list(range(100, 112))  # 3 full pages
    owner = make_seq(system + [1])
    owner.cache_salt = "tenant-a"
    compute(bm, owner)
    for salt, hit in ((None, 0), ("tenant-b", 0), ("tenant-a", 12)):
        seq = make_seq(system + [2])
        seq.cache_salt = salt
        assert bm.match_prefix(seq) == hit, salt
        bm.free(seq)
    unsalted = make_seq(system + [3])
    compute(bm, unsalted)
    salted = make_seq(system + [4])
    salted.cache_salt = "tenant-b"
    assert bm.match_prefix(salted) == 0  # nor does a salted prompt find an unsalted one's
    for seq in (owner, unsalted, salted):
        bm.free(seq)
    assert_pool_whole(bm)


def test_freed_cached_pages_are_found_again_until_evicted() -> None:
    bm = BlockManager(num_pages=5, page_size=2, enable_prefix_caching=True)
    a = make_seq([1, 2, 3, 4, 5])
    compute(bm, a)
    bm.free(a)
    again = make_seq([1, 2, 3, 4, 6])
    assert bm.match_prefix(again) == 4  # taken back off the free queue
    assert bm.num_free_pages == 2
    bm.free(again)
    evictor = make_seq([9] * 7)
    compute(bm, evictor)  # needs all 4 pages: both cached ones are evicted
    bm.free(evictor)
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 5])) == 0


def test_lru_evicts_least_recently_freed_prefix_first() -> None:
    bm = BlockManager(num_pages=9, page_size=2, enable_prefix_caching=True)
    old, new = make_seq([1, 1, 1, 1, 1]), make_seq([2, 2, 2, 2, 2])
    compute(bm, old)
    compute(bm, new)
    bm.free(old)
    bm.free(new)
    filler = make_seq([3] * 12)
    compute(bm, filler)  # 2 partial pages, 2 never-used pages, then old's tail page, then old's head page
    assert bm.match_prefix(make_seq([1, 1, 1, 1, 1])) == 0
    probe = make_seq([2, 2, 2, 2, 2])
    assert bm.match_prefix(probe) == 4


def test_lru_evicts_tail_before_head_of_a_prefix() -> None:
    bm = BlockManager(num_pages=5, page_size=2, enable_prefix_caching=True)
    a = make_seq([1, 2, 3, 4, 5, 6, 7])  # 3 full hashed pages + 1 partial
    compute(bm, a)
    bm.free(a)
    b = make_seq([9, 9])
    compute(bm, b)  # takes the partial page
    c = make_seq([8, 8])
    compute(bm, c)  # evicts a's tail (third) page
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 5, 6, 7])) == 4


def test_match_never_covers_every_token() -> None:
    bm = BlockManager(num_pages=16, page_size=4, enable_prefix_caching=True)
    exact = make_seq(list(range(8)))
    compute(bm, exact)
    same = make_seq(list(range(8)))
    assert bm.match_prefix(same) == 4  # the last token must be computed to sample from
    longer = make_seq(list(range(9)))
    assert bm.match_prefix(longer) == 8
    single = make_seq([0])
    assert bm.match_prefix(single) == 0


def test_disabled_prefix_caching_matches_nothing() -> None:
    bm = BlockManager(num_pages=16, page_size=4, enable_prefix_caching=False)
    a = make_seq(list(range(12)))
    compute(bm, a)
    b = make_seq(list(range(12)))
    assert bm.match_prefix(b) == 0
    assert bm.num_cached_pages == 0 and bm.prefix_cache_queries == 0


def test_twin_pages_computed_concurrently_keep_pool_consistent() -> None:
    bm = BlockManager(num_pages=16, page_size=4, enable_prefix_caching=True)
    a, b = make_seq(list(range(9))), make_seq(list(range(9)))
    compute(bm, a)
    compute(bm, b)  # same content, own pages: the first stays the findable one
    assert bm.num_cached_pages == 2
    bm.check_invariants([a, b])
    bm.free(b)
    bm.free(a)
    assert_pool_whole(bm)
    assert bm.match_prefix(make_seq(list(range(9)))) == 8


@pytest.mark.parametrize("caching", [True, False])
def test_fork_shares_full_prompt_pages(caching: bool) -> None:
    bm = BlockManager(num_pages=16, page_size=4, enable_prefix_caching=caching)
    prompt = list(range(10))
    parent, child = make_seq(prompt, "req", 0), make_seq(prompt, "req", 1)
    compute(bm, parent)
    parent.output_token_ids.append(42)
    assert bm.fork(parent, child) == 8
    assert child.block_table == parent.block_table[:2]
    child.num_computed_tokens = 8  # the scheduler counts the covered tokens as computed
    assert [bm.ref_count(p) for p in parent.block_table] == [2, 2, 1]
    compute(bm, child)  # the tail goes to the child's own page
    assert child.block_table[2] != parent.block_table[2]
    bm.check_invariants([parent, child])
    bm.free(parent)
    assert [bm.ref_count(p) for p in child.block_table] == [1, 1, 1]
    bm.free(child)
    assert_pool_whole(bm)


def test_fork_of_page_aligned_prompt_leaves_last_token_to_compute() -> None:
    bm = BlockManager(num_pages=16, page_size=4, enable_prefix_caching=False)
    parent, child = make_seq(list(range(8)), "req", 0), make_seq(list(range(8)), "req", 1)
    compute(bm, parent)
    assert bm.fork(parent, child) == 4


def test_fork_rejects_different_prompts() -> None:
    bm = BlockManager(num_pages=16, page_size=4, enable_prefix_caching=False)
    parent = make_seq(list(range(8)))
    compute(bm, parent)
    with pytest.raises(ValueError, match="prompts differ"):
        bm.fork(parent, make_seq(list(range(1, 9))))


def test_constructor_rejects_empty_pool() -> None:
    with pytest.raises(ValueError, match="page 0 is reserved"):
        BlockManager(num_pages=1, page_size=4, enable_prefix_caching=True)
