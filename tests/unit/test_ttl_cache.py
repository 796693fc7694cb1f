"""services/ttl_cache.py: the map behind the credential caches."""

from __future__ import annotations

from stratuslab.services.ttl_cache import TtlCache


def test_entries_expire_after_ttl_seconds() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=10)
    cache.put("a", 1, now=100.0)
    assert cache.get("a", now=110.0) == 1
    assert cache.get("a", now=110.5) is None
    assert cache.get("b", now=100.0) is None


def test_a_zero_ttl_keeps_nothing_and_a_full_cache_starts_over() -> None:
    off: TtlCache[str, int] = TtlCache(ttl=0)
    off.put("a", 1, now=0.0)
    assert off.get("a", now=0.0) is None
    small: TtlCache[str, int] = TtlCache(ttl=10, size=2)
    small.put("a", 1, now=0.0)
    small.put("b", 2, now=0.0)
    small.put("c", 3, now=0.0)  # full: emptied first
    assert [small.get(k, now=0.0) for k in "abc"] == [None, None, 3]


def test_discard_if_drops_the_matching_values() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=10)
    for key, value in (("a", 1), ("b", 2), ("c", 1)):
        cache.put(key, value, now=0.0)
    cache.discard_if(lambda v: v == 1)
    assert [cache.get(k, now=0.0) for k in "abc"] == [None, 2, None]
