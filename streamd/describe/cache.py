"""The describer's input cache: near-duplicate crops reuse the previous description.

A parked car or a person standing still yields almost the same crop frame after frame, and
tracks that break and restart give the same object a new id; asking a vision-language model
again costs a GPU second for the same sentence. The key is a context (camera, label, zone,
prompt: anything that changes what the answer should say) plus the crop's 64-bit difference
hash; two crops match when their hashes differ in at most `max_distance` bits. Entries are
kept in LRU order up to `size`.
"""

from __future__ import annotations

import collections
import threading

from streamd.describe.inputs import hamming

Context = tuple[str, str, str, str]
"""(camera, label, zone, prompt)."""


class DescriptionCache:
    """LRU of `size` entries; `get` finds the closest hash within `max_distance` bits.

    Lookups scan the entries of the same context (at most `size`, a few hundred int XORs),
    which is what makes near-duplicates, not only identical hashes, hit. Thread-safe: the
    analysis threads look up, the describer worker stores.

    >>> cache = DescriptionCache(size=2, max_distance=2)
    >>> ctx = ("cam", "person", "centre", "")
    >>> cache.put(ctx, 0b1111, "a man in a red coat")
    >>> cache.get(ctx, 0b1101)  # one bit away
    'a man in a red coat'
    >>> cache.get(ctx, 0b0000) is None, cache.get(("cam", "car", "centre", ""), 0b1111) is None
    (True, True)
    """

    def __init__(self, size: int, max_distance: int) -> None:
        self.size = size
        self.max_distance = max_distance
        self._entries: collections.OrderedDict[tuple[Context, int], str] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, context: Context, phash: int) -> str | None:
        """The text stored for the nearest matching crop, which becomes most recently used."""
        with self._lock:
            key = (context, phash)
            if key not in self._entries:
                best: tuple[int, tuple[Context, int]] | None = None
                for ctx, h in self._entries:
                    if ctx != context:
                        continue
                    d = hamming(h, phash)
                    if d <= self.max_distance and (best is None or d < best[0]):
                        best = (d, (ctx, h))
                if best is None:
                    return None
                key = best[1]
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, context: Context, phash: int, text: str) -> None:
        """Store an answer, evicting the least recently used entry past `size`."""
        if self.size <= 0:
            return
        with self._lock:
            self._entries[(context, phash)] = text
            self._entries.move_to_end((context, phash))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
