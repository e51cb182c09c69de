"""A TIFF file's layout, read with struct, and corruptions aimed at its named regions: what
benchmarks/fuzz_inputs.py feeds the job.

`tiff_layout` reads the byte order, the IFD chain and, per IFD, where its entries lie, its
blocks (tiles or strips: TileOffsets/TileByteCounts, tags 324/325, or StripOffsets/
StripByteCounts, 273/279) and where their offsets and byte counts are stored. Each mutation
takes the file's bytes, its layout and a `random.Random`, and returns the corrupted bytes with
what it did (a dict of plain values).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

# TIFF field types: their sizes in bytes.
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
TYPE_SIZES |= {13: 4, 16: 8, 17: 8, 18: 8}
UNSIGNED = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}  # struct codes of integer types
OFFSET_TAGS = {273: 279, 324: 325}  # offsets tag: its byte counts tag


@dataclass(frozen=True)
class Array:
    """An IFD entry's values: where they start in the file, how many, each of `size` bytes."""

    start: int
    count: int
    size: int
    code: str  # struct code of one value

    @property
    def end(self) -> int:
        return self.start + self.count * self.size


@dataclass(frozen=True)
class Ifd:
    """One image file directory: where its entries lie, its blocks (offset, byte count) and
    where their offsets and byte counts are stored."""

    offset: int
    entries: tuple[int, int]  # the entries' bytes, [start, end)
    blocks: tuple[tuple[int, int], ...]
    offsets: Array | None
    counts: Array | None


@dataclass(frozen=True)
class TiffLayout:
    order: str  # struct's byte order: "<" (II) or ">" (MM)
    bigtiff: bool
    ifds: tuple[Ifd, ...]

    @property
    def header(self) -> tuple[int, int]:
        return (0, 16 if self.bigtiff else 8)


def tiff_layout(data: bytes) -> TiffLayout:
    """The layout of a well-formed classic or BigTIFF file (raises ValueError otherwise)."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        raise ValueError("not a TIFF file")
    (magic,) = struct.unpack(order + "H", data[2:4])
    if magic not in (42, 43):
        raise ValueError(f"TIFF magic {magic}")
    big = magic == 43
    # Per flavour: the first IFD's pointer, an entry count's code, an entry's size, the inline
    # value's offset and size in an entry, and a pointer's code.
    first, count_code, entry_size, inline_at, inline_size, pointer = (
        (8, "Q", 20, 12, 8, "Q") if big else (4, "H", 12, 8, 4, "I")
    )
    (offset,) = struct.unpack_from(order + pointer, data, first)
    ifds, seen = [], set()
    while offset and offset not in seen and len(ifds) < 64:
        seen.add(offset)
        (n,) = struct.unpack_from(order + count_code, data, offset)
        start = offset + struct.calcsize(count_code)
        arrays = {}
        for i in range(n):
            at = start + i * entry_size
            tag, kind = struct.unpack_from(order + "HH", data, at)
            (count,) = struct.unpack_from(order + pointer, data, at + 4)
            if tag in (*OFFSET_TAGS, *OFFSET_TAGS.values()) and kind in UNSIGNED:
                size = TYPE_SIZES[kind]
                where = at + inline_at
                if count * size > inline_size:
                    (where,) = struct.unpack_from(order + pointer, data, where)
                arrays[tag] = Array(where, count, size, UNSIGNED[kind])
        end = start + n * entry_size
        offsets = next((arrays[t] for t in OFFSET_TAGS if t in arrays), None)
        counts = next((arrays[c] for t, c in OFFSET_TAGS.items() if t in arrays), None)
        blocks = ()
        if offsets and counts and offsets.count == counts.count:
            blocks = tuple(
                (_value(data, order, offsets, i), _value(data, order, counts, i))
                for i in range(offsets.count)
            )
        ifds.append(Ifd(offset, (start, end), blocks, offsets, counts))
        (offset,) = struct.unpack_from(order + pointer, data, end)
    if not ifds:
        raise ValueError("no IFD")
    return TiffLayout(order, big, tuple(ifds))


def _value(data: bytes, order: str, array: Array, index: int) -> int:
    return struct.unpack_from(order + array.code, data, array.start + index * array.size)[0]


def _flip(data: bytes, start: int, end: int, rng: random.Random) -> tuple[bytes, dict]:
    """1 to 3 bytes in [start, end) XORed with random non-zero bytes."""
    out = bytearray(data)
    positions = sorted(rng.sample(range(start, end), min(end - start, rng.randint(1, 3))))
    for at in positions:
        out[at] ^= rng.randrange(1, 256)
    return bytes(out), {"region": [start, end], "bytes": positions}


def _blocks(layout: TiffLayout) -> list[tuple[int, int]]:
    """Every block with data: (IFD index, block index)."""
    return [
        (i, b)
        for i, ifd in enumerate(layout.ifds)
        for b, (_, count) in enumerate(ifd.blocks)
        if count > 0
    ]


def truncate(data: bytes, layout: TiffLayout, rng: random.Random) -> tuple[bytes, dict]:
    at = rng.randrange(1, len(data))
    return data[:at], {"cut_at": at, "of": len(data)}


def flip_header(data: bytes, layout: TiffLayout, rng: random.Random) -> tuple[bytes, dict]:
    return _flip(data, *layout.header, rng)


def flip_ifd(data: bytes, layout: TiffLayout, rng: random.Random) -> tuple[bytes, dict]:
    index = rng.randrange(len(layout.ifds))
    out, detail = _flip(data, *layout.ifds[index].entries, rng)
    return out, {"ifd": index} | detail


def flip_offsets(data: bytes, layout: TiffLayout, rng: random.Random) -> tuple[bytes, dict]:
    index = rng.choice([i for i, ifd in enumerate(layout.ifds) if ifd.offsets])
    array = layout.ifds[index].offsets
    out, detail = _flip(data, array.start, array.end, rng)
    return out, {"ifd": index} | detail


def flip_tile(data: bytes, layout: TiffLayout, rng: random.Random) -> tuple[bytes, dict]:
    index, block = rng.choice(_blocks(layout))
    offset, count = layout.ifds[index].blocks[block]
    out, detail = _flip(data, offset, offset + count, rng)
    return out, {"ifd": index, "block": block} | detail


def wrong_bytecount(data: bytes, layout: TiffLayout, rng: random.Random) -> tuple[bytes, dict]:
    """One block's byte count set to 0, fewer bytes, more bytes, or past the file's end."""
    index, block = rng.choice(_blocks(layout))
    ifd = layout.ifds[index]
    count = ifd.blocks[block][1]
    limit = 2 ** (8 * ifd.counts.size) - 1
    how = rng.choice(["zero", "fewer", "more", "past_end"])
    value = {
        "zero": 0,
        "fewer": rng.randrange(1, count) if count > 1 else 0,
        "more": count + rng.randint(1, count),
        "past_end": rng.randint(len(data), min(limit, 2**32 - 1)),
    }[how]
    value = min(value, limit)
    if value == count:
        value = count - 1
    out = bytearray(data)
    struct.pack_into(
        layout.order + ifd.counts.code, out, ifd.counts.start + block * ifd.counts.size, value
    )
    return bytes(out), {"ifd": index, "block": block, "how": how, "was": count, "now": value}


Mutation = Callable[[bytes, TiffLayout, random.Random], tuple[bytes, dict]]
MUTATIONS: dict[str, Mutation] = {
    m.__name__: m
    for m in (truncate, flip_header, flip_ifd, flip_offsets, flip_tile, wrong_bytecount)
}
