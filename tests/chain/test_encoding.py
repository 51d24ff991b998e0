"""The canonical encoding primitives: every value written is read back, and a Reader never
reads past its input, never accepts trailing bytes, and refuses lengths and counts over their
maximum before it allocates anything."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain.encoding import MAX_U16, MAX_U32, MAX_U64, Reader, Writer, sha256, sha256d
from chain.errors import ChainError, Code, DecodeError

# A value to write: (kind, argument). Each kind maps to one Writer/Reader pair.
FIELD = st.one_of(
    st.tuples(st.just("u8"), st.integers(0, 255)),
    st.tuples(st.just("u16"), st.integers(0, MAX_U16)),
    st.tuples(st.just("u32"), st.integers(0, MAX_U32)),
    st.tuples(st.just("u64"), st.integers(0, MAX_U64)),
    st.tuples(st.just("fixed"), st.binary(min_size=0, max_size=40)),
    st.tuples(st.just("var1"), st.binary(max_size=255)),
    st.tuples(st.just("var2"), st.binary(max_size=300)),
    st.tuples(st.just("var4"), st.binary(max_size=300)),
)


def _write(fields) -> bytes:
    w = Writer()
    for kind, value in fields:
        if kind == "fixed":
            w.fixed(value, len(value))
        elif kind.startswith("var"):
            w.var_bytes(value, 300, int(kind[3:]))
        else:
            getattr(w, kind)(value)
    return w.getvalue()


def _read(data: bytes, fields) -> list:
    r = Reader(data, "test")
    out = []
    for kind, value in fields:
        if kind == "fixed":
            out.append(r.fixed(len(value)))
        elif kind.startswith("var"):
            out.append(r.var_bytes(300, int(kind[3:])))
        else:
            out.append(getattr(r, kind)())
    r.done()
    return out


@given(st.lists(FIELD, max_size=12))
def test_round_trip(fields):
    data = _write(fields)
    assert _read(data, fields) == [value for _, value in fields]


@given(st.lists(FIELD, min_size=1, max_size=12), st.data())
def test_truncated_input_is_a_decode_error(fields, data):
    encoded = _write(fields)
    if not encoded:  # only empty fixed fields: nothing to truncate
        return
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError) as err:
        _read(encoded[:cut], fields)
    assert err.value.code is Code.BAD_ENCODING


@given(st.lists(FIELD, max_size=12), st.binary(min_size=1, max_size=20))
def test_trailing_bytes_are_a_decode_error(fields, extra):
    with pytest.raises(DecodeError, match="trailing"):
        _read(_write(fields) + extra, fields)


def test_integers_are_big_endian_fixed_width():
    assert Writer().u8(1).u16(2).u32(3).u64(4).getvalue() == bytes.fromhex("01" "0002" "00000003" "0000000000000004")


@pytest.mark.parametrize("width", [1, 2, 4])
def test_var_bytes_length_prefix_width(width):
    data = Writer().var_bytes(b"abc", 10, width).getvalue()
    assert data == (3).to_bytes(width, "big") + b"abc"


def test_writer_refuses_over_maximum_and_wrong_fixed_size():
    with pytest.raises(ValueError):
        Writer().var_bytes(b"x" * 11, 10)
    with pytest.raises(ValueError):
        Writer().fixed(b"abc", 4)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_reader_refuses_length_over_maximum_before_reading(width):
    # The claimed length exceeds the maximum; the data is not even there. The error must
    # be about the maximum (checked first), not a truncation found after trying to read.
    data = (11).to_bytes(width, "big")
    with pytest.raises(DecodeError, match="exceeds the maximum of 10"):
        Reader(data).var_bytes(10, width)
    # exactly at the maximum is fine
    ok = (10).to_bytes(width, "big") + b"z" * 10
    assert Reader(ok).var_bytes(10, width) == b"z" * 10


def test_count_checked_against_maximum_before_allocation():
    # A hostile count of 4 billion with no items behind it is refused immediately.
    r = Reader(MAX_U32.to_bytes(4, "big"), "list")
    with pytest.raises(DecodeError, match="exceed the maximum of 1000"):
        r.count(1000)
    assert Reader((1000).to_bytes(4, "big")).count(1000) == 1000
    with pytest.raises(DecodeError):
        Reader((1001).to_bytes(4, "big")).count(1000)
    assert Reader((7).to_bytes(2, "big")).count(10, width=2) == 7


@pytest.mark.parametrize("method,size", [("u8", 1), ("u16", 2), ("u32", 4), ("u64", 8)])
def test_integer_truncation(method, size):
    with pytest.raises(DecodeError, match="truncated"):
        getattr(Reader(b"\x00" * (size - 1)), method)()


def test_truncated_var_bytes_and_fixed():
    with pytest.raises(DecodeError, match="truncated"):
        Reader(b"\x00\x05abcd").var_bytes(10)
    with pytest.raises(DecodeError, match="truncated"):
        Reader(b"abc").fixed(4)


def test_reader_position_and_remaining():
    r = Reader(b"\x01\x02\x03")
    assert r.u8() == 1 and r.remaining() == 2
    with pytest.raises(DecodeError):
        r.done()
    r.u16()
    r.done()


def test_reader_refuses_non_bytes_with_decode_error():
    for value in ("text", None, 12, [1, 2]):
        with pytest.raises(DecodeError):
            Reader(value)  # type: ignore[arg-type]


def test_reader_accepts_bytearray_and_memoryview_and_copies():
    buf = bytearray(b"\x00\x01")
    r = Reader(memoryview(buf))
    buf[1] = 9  # the reader must hold its own copy
    assert r.u16() == 1


def test_decode_error_names_what_was_read():
    with pytest.raises(DecodeError, match="^bad_encoding: undo record: truncated"):
        Reader(b"", "undo record").u8()


def test_errors_carry_stable_codes():
    err = DecodeError("x", Code.OVERSIZE)
    assert isinstance(err, ChainError) and err.code is Code.OVERSIZE and str(err) == "oversize: x"
    # the code strings are part of the API (HTTP error codes): they must be unique
    texts = [c.text for c in Code]
    assert len(set(texts)) == len(texts)
    assert Code.TIME_TOO_NEW.penalise is False and Code.BAD_SIGNATURE.penalise is True


def test_hashes():
    assert sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256d(b"") == sha256(sha256(b""))
