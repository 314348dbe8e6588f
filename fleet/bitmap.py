"""Which chunks of a blob a receiver holds: one bit per chunk, the form a resume bitmap takes on disk.

The real agent's receiver (`fleet.chunks.ChunkReceiver`) persists it next to the partial file; the simulator
keeps one per simulated agent in memory. Both answer wants from `missing_ranges()`.
"""

from __future__ import annotations

from fleet.messages import Range

_POPCOUNT = bytes(bin(i).count("1") for i in range(256))


class ChunkBitmap:
    """A set of chunk indexes in 0..count-1, stored as bits (bit i of byte i // 8 is chunk i).

    Args:
        count: chunks in the blob.
        raw: bytes of a saved bitmap (`to_bytes()`); must be exactly `size_for(count)` long.

    Raises:
        ValueError: `raw` has the wrong length or sets bits beyond `count`.
    """

    __slots__ = ("_bits", "_have", "count")

    def __init__(self, count: int, raw: bytes | None = None) -> None:
        if count < 0:
            raise ValueError(f"a blob cannot have {count} chunks")
        self.count = count
        size = self.size_for(count)
        if raw is None:
            self._bits = bytearray(size)
        else:
            if len(raw) != size:
                raise ValueError(f"a bitmap of {count} chunks has {size} bytes, not {len(raw)}")
            self._bits = bytearray(raw)
            spare = count & 7
            if spare and self._bits[-1] >> spare:
                raise ValueError("the bitmap marks chunks beyond the blob's last")
        self._have = sum(_POPCOUNT[b] for b in self._bits)

    @staticmethod
    def size_for(count: int) -> int:
        """Bytes of the bitmap of `count` chunks."""
        return (count + 7) // 8

    def has(self, index: int) -> bool:
        """Whether chunk `index` is held."""
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def add(self, index: int) -> bool:
        """Mark chunk `index` held; True when it was not held before.

        Raises:
            IndexError: `index` is outside 0..count-1.
        """
        if not 0 <= index < self.count:
            raise IndexError(f"chunk {index} is outside 0..{self.count - 1}")
        mask = 1 << (index & 7)
        if self._bits[index >> 3] & mask:
            return False
        self._bits[index >> 3] |= mask
        self._have += 1
        return True

    def clear(self) -> None:
        """Forget every chunk."""
        self._bits = bytearray(len(self._bits))
        self._have = 0

    @property
    def have(self) -> int:
        """How many chunks are held."""
        return self._have

    @property
    def complete(self) -> bool:
        return self._have == self.count

    def held(self) -> list[int]:
        """Indexes held, ascending."""
        return [i for i in range(self.count) if self.has(i)]

    def missing(self) -> list[int]:
        """Indexes not held, ascending."""
        return [i for i in range(self.count) if not self.has(i)]

    def missing_ranges(self) -> list[Range]:
        """The indexes not held as sorted half-open ranges [start, end), the form of a `Want`."""
        out: list[Range] = []
        start = -1
        bits = self._bits
        for i in range(self.count):
            held = bits[i >> 3] & (1 << (i & 7))
            if not held and start < 0:
                start = i
            elif held and start >= 0:
                out.append((start, i))
                start = -1
        if start >= 0:
            out.append((start, self.count))
        return out

    def to_bytes(self) -> bytes:
        """The bitmap as saved on disk."""
        return bytes(self._bits)
