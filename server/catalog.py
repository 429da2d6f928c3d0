"""A model's catalogue (item id, title, popularity rank) with a case-insensitive title index.

All the work is done once, by `Catalog.build` at model load: titles are case-folded and joined,
most popular first, into one string, so `search()` is C-speed `str.find` over it plus a bisect per
hit, never a per-request lowercase pass over the catalogue. Matches come back in popularity rank
order (rank 1 = the item with the most training interactions). `search()` accepts any string and
never raises; `lookup()` returns None for ids the catalogue lacks.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

# Joins the folded titles. A query containing it could match across two titles, so such a query
# matches nothing (no single-line title contains it: titles have it replaced at build time).
_SEP = "\n"


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    title: str | None
    popularity_rank: int


class Catalog:
    def __init__(self, items: list[CatalogItem]):
        """`items` in popularity rank order (items[0] has rank 1)."""
        self.items = items
        self._by_id = {item.item_id: item for item in items}
        folded = [(item.title or "").replace(_SEP, " ").casefold() for item in items]
        self._starts, offset = [], 0
        for title in folded:
            self._starts.append(offset)
            offset += len(title) + len(_SEP)
        self._blob = _SEP.join(folded)

    @classmethod
    def build(cls, item_ids: list[str], titles: dict[int, str], order) -> "Catalog":
        """`item_ids[j]` is the external id of vocab index `order[j]`, `order` most popular first;
        `titles` maps vocab index -> title (items without one get None)."""
        return cls([CatalogItem(item_id, titles.get(int(index)), rank)
                    for rank, (item_id, index) in enumerate(zip(item_ids, order), start=1)])

    def __len__(self) -> int:
        return len(self.items)

    def search(self, query: str, limit: int, offset: int = 0) -> tuple[int, list[CatalogItem]]:
        """(number of matches, matches[offset:offset + limit]), best rank first. An empty or
        blank query matches every item (the catalogue by popularity)."""
        needle = query.strip().casefold()
        if not needle:
            return len(self.items), self.items[offset:offset + limit]
        hits = self._matches(needle)
        return len(hits), [self.items[i] for i in hits[offset:offset + limit]]

    def lookup(self, item_id: str) -> CatalogItem | None:
        return self._by_id.get(item_id)

    def _matches(self, needle: str) -> list[int]:
        """Indices (into items) of the titles containing `needle` (non-empty), ascending."""
        if _SEP in needle:
            return []
        blob, starts, hits = self._blob, self._starts, []
        pos = blob.find(needle)
        while pos != -1:
            i = bisect_right(starts, pos) - 1
            hits.append(i)
            if i + 1 == len(starts):
                break
            pos = blob.find(needle, starts[i + 1])  # one hit per title: skip to the next one
        return hits
