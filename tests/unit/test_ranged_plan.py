"""The ranged reader's plan: the data section cut into ranges, pieces on element bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedasync.aws.ranged import plan
from fedasync.core.stheader import SUPPORTED_DTYPES, Entry

tensors = st.lists(
    st.tuples(st.sampled_from(sorted(SUPPORTED_DTYPES)), st.integers(0, 40)),
    min_size=1,
    max_size=6,
)


def _entries(specs: list[tuple[str, int]]) -> list[Entry]:
    entries, at = [], 0
    for i, (dtype, count) in enumerate(specs):
        size = count * SUPPORTED_DTYPES[dtype]
        entries.append(Entry(f"t{i}", dtype, (count,), at, at + size))
        at += size
    return entries


@settings(max_examples=300, deadline=None)
@given(tensors, st.integers(1, 100), st.integers(8, 40))
def test_ranges_tile_the_data_and_pieces_cover_each_element_once(specs, chunk_bytes, base):
    # GIVEN tensors of any supported dtype and size laid out after a header of `base` bytes
    entries = _entries(specs)
    end = base + (entries[-1].end if entries else 0)
    # WHEN the data section is planned in ranges of at most `chunk_bytes`
    ranges = plan(entries, base, chunk_bytes)
    # THEN the ranges follow one another from the first data byte to the last (none at all
    # for no data)
    assert [r.begin for r in ranges] == [base, *(r.end for r in ranges)][: len(ranges)]
    assert (ranges[-1].end if ranges else base) == end
    for r in ranges:
        widest = max(p.dtype.itemsize for p in r.pieces)
        # AND none is over the chunk size, unless a single element is wider than it
        assert r.end - r.begin <= max(chunk_bytes, widest)
        # AND its pieces lie end to end inside it
        offsets = [p.offset for p in r.pieces]
        sizes = [p.count * p.dtype.itemsize for p in r.pieces]
        assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
        assert sum(sizes) == r.end - r.begin
    # AND each tensor's elements are covered once, in order, by its pieces
    for e in entries:
        pieces = [p for r in ranges for p in r.pieces if p.name == e.name]
        starts = [p.start for p in pieces]
        assert starts == [sum(p.count for p in pieces[:i]) for i in range(len(pieces))]
        assert sum(p.count for p in pieces) == e.shape[0]
