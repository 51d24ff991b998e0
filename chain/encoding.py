"""Canonical binary encoding: one value has exactly one byte string, and back.

Layout rules, shared by every object on disk and on the wire:
- integers are unsigned, big-endian, of a fixed width (u8, u16, u32, u64);
- fixed-size byte strings (hashes, keys, addresses) are written as they are;
- variable byte strings and lists carry a fixed-width length prefix and a maximum length;
- a decoder reads the whole input: trailing bytes are an error.

Because every width is fixed and every length is explicit, there is no second way to write
the same value, so hashes of encodings (ids) cannot be malleated. Decoders never read past
their input and never allocate more than the stated maximum.
"""

from __future__ import annotations

import hashlib
import struct

from chain.errors import DecodeError

U8 = struct.Struct(">B")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")

MAX_U16 = 2**16 - 1
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


class Writer:
    """Accumulates the canonical encoding of a value."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(U8.pack(value))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(U64.pack(value))
        return self

    def fixed(self, value: bytes, size: int) -> Writer:
        if len(value) != size:
            raise ValueError(f"expected {size} bytes, got {len(value)}")
        self._parts.append(bytes(value))
        return self

    def var_bytes(self, value: bytes, max_len: int, width: int = 2) -> Writer:
        if len(value) > max_len:
            raise ValueError(f"{len(value)} bytes exceed the maximum of {max_len}")
        self._parts.append(_LEN[width].pack(len(value)))
        self._parts.append(bytes(value))
        return self

    def raw(self, value: bytes) -> Writer:
        """Append bytes that are already a canonical encoding (a nested object)."""
        self._parts.append(value)
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


_LEN = {1: U8, 2: U16, 4: U32}


class Reader:
    """Reads a canonical encoding; every failure is a DecodeError naming `what`."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str = "value") -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def _take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise DecodeError(f"{self.what}: truncated (needs {end} bytes, has {len(self.data)})")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _unpack(self, fmt: struct.Struct) -> int:
        end = self.pos + fmt.size
        if end > len(self.data):
            raise DecodeError(f"{self.what}: truncated (needs {end} bytes, has {len(self.data)})")
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos = end
        return value

    def u8(self) -> int:
        return self._unpack(U8)

    def u16(self) -> int:
        return self._unpack(U16)

    def u32(self) -> int:
        return self._unpack(U32)

    def u64(self) -> int:
        return self._unpack(U64)

    def fixed(self, size: int) -> bytes:
        return self._take(size)

    def var_bytes(self, max_len: int, width: int = 2) -> bytes:
        size = self._unpack(_LEN[width])
        if size > max_len:
            raise DecodeError(f"{self.what}: length {size} exceeds the maximum of {max_len}")
        return self._take(size)

    def count(self, max_count: int, width: int = 4) -> int:
        """A list length, checked against its maximum before anything is allocated."""
        n = self._unpack(_LEN[width])
        if n > max_count:
            raise DecodeError(f"{self.what}: {n} items exceed the maximum of {max_count}")
        return n

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def done(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")
