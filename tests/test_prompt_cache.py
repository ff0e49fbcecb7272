"""The prompt cache: longest common prefix, hand-out without copies, bounded in bytes (fast: real mlx-lm caches, no model)."""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache, RotatingKVCache

from mlx_local._prompt_cache import PromptCache


def cache_of(tokens, kind=KVCache, **kw):
    """A one-layer mlx-lm cache that has seen `tokens` (random keys and values)."""
    c = kind(**kw)
    n = len(tokens)
    c.update_and_fetch(mx.random.normal((1, 2, n, 8)), mx.random.normal((1, 2, n, 8)))
    mx.eval(c.state)
    return [c]


def test_longest_common_prefix_is_handed_out_trimmed():
    store = PromptCache()
    a, b = [1, 2, 3, 4, 5, 6], [1, 2, 9, 9]
    ca, cb = cache_of(a), cache_of(b)
    store.put(a, ca)
    store.put(b, cb)
    cache, n = store.take([1, 2, 3, 4, 7, 7, 7])
    assert cache is ca and n == 4 and ca[0].offset == 4  # trimmed to the shared prefix, not copied
    assert len(store) == 1  # handed out: no one else can use it meanwhile
    assert store.take([1, 2, 3, 4, 7]) == (cb, 2)


def test_at_least_one_token_is_left_to_process():
    store = PromptCache()
    tokens = [5, 6, 7]
    store.put(tokens, cache_of(tokens))
    cache, n = store.take(tokens)
    assert n == 2 and cache[0].offset == 2


def test_no_shared_prefix_is_a_miss():
    store = PromptCache()
    store.put([1, 2, 3], cache_of([1, 2, 3]))
    assert store.take([4, 5, 6]) == (None, 0) and len(store) == 1


def test_bounded_in_bytes_least_recently_used_first_latest_stays():
    one = cache_of([0] * 10)[0].nbytes
    store = PromptCache(max_bytes=int(2.5 * one))
    for i in range(4):
        store.put([100 + i] * 10, cache_of([0] * 10))
    assert len(store) == 2 and store.nbytes <= store.max_bytes
    assert store.take([102] * 10 + [1])[1] == 10 and store.take([103] * 10 + [1])[1] == 10
    tiny = PromptCache(max_bytes=1)
    tiny.put([1] * 10, cache_of([1] * 10))
    assert len(tiny) == 1  # the latest stays even when alone over the bound


def test_a_cache_that_cannot_be_trimmed_serves_only_its_exact_prefix():
    store = PromptCache()
    tokens = list(range(20))
    store.put(tokens, cache_of(tokens, RotatingKVCache, max_size=8))  # wrapped: cannot go back
    assert store.take(tokens[:10] + [99]) == (None, 0)
    cache, n = store.take(tokens + [99])
    assert cache is not None and n == 20


def test_an_extension_replaces_its_prefix():
    store = PromptCache()
    store.put([1, 2], cache_of([1, 2]))
    store.put([1, 2, 3, 4], cache_of([1, 2, 3, 4]))
    assert len(store) == 1
