"""The paged KV allocator with automatic prefix caching: plain Python, no JAX.

Pages are opaque ids into the KV pool. Page 0 is reserved (padded tokens write there), so pages 1..num_pages-1 are
handed out. A page's reference count is the number of sequences whose block table lists it; at 0 it sits in the free
queue. A full page whose tokens are computed gets a chained hash (vLLM's scheme: the parent page's hash and this
page's token ids), so one hash names the whole prefix up to the page's end; a sequence under a LoRA adapter chains
from the adapter's own root, so its pages never serve the base model or another adapter.

A freed page that is findable by hash keeps its K/V: it goes to the back of the free queue and a later request can
take it back (a prefix-cache hit) until the allocator reuses it. Freed pages without a hash go to the front, and
allocation takes from the front, so empty pages are used before cached ones and cached ones are evicted least
recently freed first.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from typing import NoReturn

from jllm.sequence import Sequence

PageHash = bytes


def hash_page(parent: PageHash | None, token_ids: list[int]) -> PageHash:
    """sha256, not ``hash()``: stable across processes (every host makes the same decisions) and collision-resistant,
    so no request can read another's K/V through a hash clash."""
    h = hashlib.sha256(parent or b"")
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def _hash_root(seq: Sequence) -> PageHash | None:
    """Where a sequence's chain of page hashes starts: K/V computed under a LoRA adapter differ from the base
    model's, so its pages chain from the adapter's own root and never serve another adapter's prompt; a prompt's
    ``cache_salt`` (vLLM's) chains them from the salt too, so only prompts of the same salt share pages (no tenant
    learns from its time to first token what another one asked). A longrope model's sequence past its original
    context turns its tokens by the long factors (``Sequence.long_rope``): its pages chain apart from the short's."""
    root = None if seq.lora_request is None else seq.lora_request.prefix_hash_root
    if seq.long_rope:
        root = hashlib.sha256((root or b"") + b"long_rope").digest()
    if seq.cache_salt is None:
        return root
    return hashlib.sha256((root or b"") + b"cache_salt:" + seq.cache_salt.encode()).digest()


class BlockManager:
    """Owns which page belongs to whom; the KV pool arrays themselves live in ``kv_cache.py``."""

    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True) -> None:
        if num_pages < 2:
            raise ValueError(
                f"num_pages={num_pages} leaves no usable page: page 0 is reserved, so at least 2 are needed"
            )
        if page_size < 1:
            raise ValueError(f"page_size={page_size} must be at least 1 token")
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_pages
        self._page_hashes: list[PageHash | None] = [None] * num_pages
        self._cached: dict[PageHash, int] = {}  # hash -> the one page findable under it
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_pages))  # front is allocated first
        self.prefix_cache_queries = 0  # tokens looked up at admission (vLLM's metric)
        self.prefix_cache_hits = 0  # of those, tokens served from cached pages

    # ---- sizes ----
    @property
    def num_usable_pages(self) -> int:
        return self.num_pages - 1

    @property
    def num_free_pages(self) -> int:
        """Free pages, cached ones included: they are evictable."""
        return len(self._free)

    @property
    def num_allocated_pages(self) -> int:
        return self.num_usable_pages - len(self._free)

    @property
    def usage(self) -> float:
        return self.num_allocated_pages / self.num_usable_pages

    @property
    def num_cached_pages(self) -> int:
        return len(self._cached)

    def num_pages_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def ref_count(self, page: int) -> int:
        return self._ref_counts[page]

    # ---- the engine's contract ----
    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow ``seq.block_table`` to hold its computed tokens plus ``num_new_tokens``; all or nothing."""
        need = self.num_pages_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if need > len(self._free):
            return False
        for _ in range(need):
            page, _ = self._free.popitem(last=False)
            self._forget_hash(page)  # evicts a cached prefix if the page held one
            self._ref_counts[page] = 1
            seq.block_table.append(page)
        return True

    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached pages covering the longest cached prefix of a page-less ``seq``; returns the tokens they
        cover, which the scheduler counts as computed.

        Never covers every token: the last one must be computed to give logits for the next.
        """
        if seq.block_table:
            raise ValueError(f"match_prefix on sequence {seq.seq_id} that already holds {len(seq.block_table)} pages")
        if not self.enable_prefix_caching:
            return 0
        ps, tokens = self.page_size, seq.token_ids
        parent = _hash_root(seq)
        pages: list[int] = []
        for i in range((len(tokens) - 1) // ps):
            parent = hash_page(parent, tokens[i * ps : (i + 1) * ps])
            page = self._cached.get(parent)
            if page is None:
                break
            pages.append(page)
        for page in pages:
            self._acquire(page)
        seq.block_table.extend(pages)
        covered = len(pages) * ps
        self.prefix_cache_queries += len(tokens)
        self.prefix_cache_hits += covered
        return covered

    def cache_full_pages(self, seq: Sequence) -> None:
        """Make the pages that became full of computed tokens findable by hash.

        Walks back from the last full page to the last hashed one, so a decode step costs O(1) and pages from a
        prefix hit or a fork (already hashed) are not hashed again.
        """
        if not self.enable_prefix_caching:
            return
        table, ps = seq.block_table, self.page_size
        # Computed and known: under async scheduling a launched step may compute a token the host has not seen yet.
        num_full = min(min(seq.num_computed_tokens, seq.num_tokens) // ps, len(table))
        start = num_full
        while start > 0 and self._page_hashes[table[start - 1]] is None:
            start -= 1
        if start == num_full:
            return
        parent = self._page_hashes[table[start - 1]] if start else _hash_root(seq)
        tokens = seq.token_ids
        for i in range(start, num_full):
            parent = hash_page(parent, tokens[i * ps : (i + 1) * ps])
            self._page_hashes[table[i]] = parent
            self._cached.setdefault(
                parent, table[i]
            )  # a twin computed elsewhere keeps the entry; this one stays private

    def fork(self, parent: Sequence, child: Sequence) -> int:
        """Share ``parent``'s computed full prompt pages with a page-less sibling; returns the tokens they cover.

        Works with prefix caching off too: n samples of one prompt prefill it once. Shared pages are full and
        computed, so nobody writes them again; the child computes its own tail into its own pages.
        """
        if child.block_table:
            raise ValueError(f"fork into sequence {child.seq_id} that already holds {len(child.block_table)} pages")
        if child.prompt_token_ids != parent.prompt_token_ids:
            raise ValueError(f"fork of sequence {parent.seq_id} into {child.seq_id}: their prompts differ")
        num_shared = min(parent.num_computed_tokens, child.num_prompt_tokens, child.num_tokens - 1) // self.page_size
        pages = parent.block_table[:num_shared]
        for page in pages:
            self._acquire(page)
        child.block_table.extend(pages)
        return num_shared * self.page_size

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s claim on its pages, tail first, so a cached prefix's tail is evicted before its head."""
        for page in reversed(seq.block_table):
            self._ref_counts[page] -= 1
            if self._ref_counts[page] > 0:
                continue
            h = self._page_hashes[page]
            self._free[page] = None
            if h is None or self._cached.get(h) != page:
                self._forget_hash(page)
                self._free.move_to_end(page, last=False)
        seq.block_table.clear()

    def reset_prefix_cache(self) -> None:
        """Forget every cached page that nobody holds (vLLM's ``reset_prefix_cache``); held pages stay findable."""
        for page in list(self._free):
            if self._page_hashes[page] is not None:
                self._forget_hash(page)

    # ---- internals ----
    def _acquire(self, page: int) -> None:
        if self._ref_counts[page] == 0:
            del self._free[page]
        self._ref_counts[page] += 1

    def _forget_hash(self, page: int) -> None:
        h = self._page_hashes[page]
        if h is not None:
            if self._cached.get(h) == page:
                del self._cached[h]
            self._page_hashes[page] = None

    def check_invariants(self, seqs: Iterable[Sequence] | None = None) -> None:
        """For tests: raise AssertionError if the pool's bookkeeping is inconsistent.

        With ``seqs`` (every sequence holding pages), also check each page's refcount equals the number of block
        tables listing it, and that a page listed twice is a full, computed (read-only) page in every holder.
        """
        self._check_pool()
        if seqs is not None:
            self._check_holders(seqs)

    def _check_pool(self) -> None:
        """The pool on its own: page 0 never handed out, free exactly when unheld, cached hashes still current. Each
        message is built for a page that fails alone (built for every page, they were most of a fake engine's step
        in tests/test_scheduler.py, which checks at every step)."""
        _check(self._ref_counts[0] == 0 and 0 not in self._free, "reserved page 0 was handed out")
        for page in range(1, self.num_pages):
            rc = self._ref_counts[page]
            if rc < 0:
                _fail(f"page {page} has refcount {rc}")
            if (rc == 0) != (page in self._free):
                _fail(f"page {page}: refcount {rc} but in free queue={page in self._free}")
        for h, page in self._cached.items():
            if self._page_hashes[page] != h:
                _fail(f"cached hash points at page {page} that no longer holds it")

    def _check_holders(self, seqs: Iterable[Sequence]) -> None:
        """The pool against the block tables: refcounts count holders, and a shared page is read-only in each."""
        holders = _holders(seqs)
        for page in range(1, self.num_pages):
            held = holders.get(page, [])
            if len(held) != self._ref_counts[page]:
                _fail(f"page {page}: refcount {self._ref_counts[page]}, {len(held)} holders")
            if len(held) > 1:
                for seq, i in held:
                    full = (i + 1) * self.page_size <= seq.num_computed_tokens
                    _check(full, f"page {page} is shared but not full and computed in sequence {seq.seq_id}")


def _holders(seqs: Iterable[Sequence]) -> dict[int, list[tuple[Sequence, int]]]:
    """Each page's (sequence, index in its block table) pairs, once each table is checked to list real pages once."""
    holders: dict[int, list[tuple[Sequence, int]]] = {}
    for seq in seqs:
        _check(len(set(seq.block_table)) == len(seq.block_table), f"sequence {seq.seq_id} lists a page twice")
        _check(0 not in seq.block_table, f"sequence {seq.seq_id} holds reserved page 0")
        for i, page in enumerate(seq.block_table):
            holders.setdefault(page, []).append((seq, i))
    return holders


def _check(ok: bool, msg: str) -> None:
    """An ``assert`` that ``python -O`` keeps."""
    if not ok:
        _fail(msg)


def _fail(msg: str) -> NoReturn:
    """A failed check, for the loops over every page that test first and build the message only on failure."""
    raise AssertionError(msg)
