import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from otaferry.device_fw import mpack
from otaferry.device_fw.reasons import MALFORMED, TRUNCATED, DeviceError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
# bigger sizes so the 8/16-bit length forms show up too
sized = st.text(min_size=30, max_size=300) | st.binary(min_size=250, max_size=300)
keys = st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10) | st.binary(max_size=10)
values = st.recursive(
    scalars | sized,
    lambda kids: st.lists(kids, max_size=20) | st.dictionaries(keys, kids, max_size=20),
    max_leaves=60,
)


def ref_pack(v):
    return msgpack.packb(v, use_bin_type=True)


def ref_unpack(b):
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


@given(values)
def test_encode_matches_msgpack(v):
    assert mpack.encode(v) == ref_pack(v)


@given(values)
def test_decode_matches_msgpack(v):
    data = ref_pack(v)
    assert mpack.decode_all(data) == ref_unpack(data)
    assert mpack.decode(data + b"\xc0") == (ref_unpack(data), len(data))


@pytest.mark.parametrize(
    "value, first",
    [
        (0, "00"),
        (127, "7f"),
        (128, "cc80"),
        (255, "ccff"),
        (256, "cd0100"),
        (65535, "cdffff"),
        (65536, "ce00010000"),
        (2**32, "cf0000000100000000"),
        (-1, "ff"),
        (-32, "e0"),
        (-33, "d0df"),
        (-128, "d080"),
        (-129, "d1ff7f"),
        (-32769, "d2ffff7fff"),
        (-(2**31) - 1, "d3ffffffff7fffffff"),
        ("", "a0"),
        ("a" * 31, "bf"),
        ("a" * 32, "d920"),
        ("a" * 256, "da0100"),
        (b"", "c400"),
        (b"\x00" * 256, "c50100"),
        ([], "90"),
        (list(range(16)), "dc0010"),
        ({}, "80"),
        ({i: i for i in range(16)}, "de0010"),
        (None, "c0"),
        (True, "c3"),
        (False, "c2"),
    ],
)
def test_shortest_forms(value, first):
    out = mpack.encode(value)
    assert out.hex().startswith(first)
    assert out == ref_pack(value)
    assert mpack.decode_all(out) == value


@pytest.mark.parametrize("n", [65535, 65536, 70000])
def test_16_and_32_bit_lengths(n):
    for v in (b"\x00" * n, "a" * n, [0] * n, {i: 0 for i in range(n)}):
        out = mpack.encode(v)
        assert out == ref_pack(v)
        assert mpack.decode_all(out) == v


def test_map_keeps_insertion_order():
    assert mpack.encode({2: "b", 1: "a"}) == b"\x82\x02\xa1b\x01\xa1a"


def test_large_forms_decode():
    # 32-bit length forms and non-shortest encodings are accepted when reading
    assert mpack.decode_all(b"\xdb\x00\x00\x00\x01a") == "a"
    assert mpack.decode_all(b"\xc6\x00\x00\x00\x01\x00") == b"\x00"
    assert mpack.decode_all(b"\xdd\x00\x00\x00\x01\x01") == [1]
    assert mpack.decode_all(b"\xdf\x00\x00\x00\x01\x01\x02") == {1: 2}
    assert mpack.decode_all(b"\xcf" + b"\x00" * 7 + b"\x05") == 5
    assert mpack.decode_all(bytearray(b"\x92\x01\xc4\x01z")) == [1, b"z"]
    assert mpack.decode_all(memoryview(b"\x92\x01\xc4\x01z")) == [1, b"z"]


@given(values)
def test_every_truncation_is_truncated(v):
    data = mpack.encode(v)
    step = max(1, len(data) // 64)  # every cut for small values, a sample for big ones
    for cut in {*range(0, len(data), step), len(data) - 1}:
        with pytest.raises(DeviceError) as ei:
            mpack.decode_all(data[:cut])
        assert ei.value.reason == TRUNCATED


@given(values, st.binary(min_size=1, max_size=5))
def test_trailing_bytes_rejected(v, extra):
    with pytest.raises(DeviceError) as ei:
        mpack.decode_all(mpack.encode(v) + extra)
    assert ei.value.reason == MALFORMED


@given(st.binary(max_size=200))
def test_garbage_never_crashes(data):
    try:
        value, end = mpack.decode(data)
    except DeviceError as exc:
        assert exc.reason in (TRUNCATED, MALFORMED)
    else:
        assert 0 < end <= len(data)
        assert mpack.decode_all(mpack.encode(value)) == value


def test_length_checked_before_allocating():
    # declared 4 GiB str / bin and a 4-billion-element array with 3 bytes of input
    for data in (
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdd\xff\xff\xff\xff\x01",
        b"\xdf\xff\xff\xff\xff\x01\x01",
    ):
        with pytest.raises(DeviceError) as ei:
            mpack.decode_all(data)
        assert ei.value.reason == TRUNCATED


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never used
        b"\xca\x00\x00\x00\x00",  # float32
        b"\xcb" + b"\x00" * 8,  # float64
        b"\xd4\x01\x00",  # fixext1
        b"\xc7\x01\x01\x00",  # ext8
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\x82\x01\x02\x01\x03",  # duplicate key
        b"\x81\x90\x01",  # array as key
        b"\x81\x80\x01",  # map as key
    ],
)
def test_malformed(data):
    with pytest.raises(DeviceError) as ei:
        mpack.decode_all(data)
    assert ei.value.reason == MALFORMED


def test_depth_limit():
    ok = [[[[[[[[1]]]]]]]]  # 8 containers
    assert mpack.decode_all(mpack.encode(ok)) == ok
    deep = b"\x91" * 9 + b"\x01"
    with pytest.raises(DeviceError) as ei:
        mpack.decode_all(deep)
    assert ei.value.reason == MALFORMED
    assert mpack.decode_all(deep, max_depth=9) == [[[[[[[[[1]]]]]]]]]
    with pytest.raises(DeviceError):
        mpack.encode([ok])
    # a deep bomb is refused without recursing through it
    with pytest.raises(DeviceError):
        mpack.decode_all(b"\x91" * 100000)


@pytest.mark.parametrize("value", [1.5, 2**64, -(2**63) - 1, object(), {1, 2}])
def test_unencodable(value):
    with pytest.raises(DeviceError) as ei:
        mpack.encode(value)
    assert ei.value.reason == MALFORMED


@given(values)
def test_canonical_mode_accepts_what_msgpack_writes(v):
    data = msgpack.packb(v, use_bin_type=True)
    assert mpack.decode_all(data, canonical=True) == msgpack.unpackb(
        data, raw=False, strict_map_key=False
    )


@pytest.mark.parametrize(
    "wide",
    [
        b"\xcc\x05",  # uint8 for a fixint
        b"\xcd\x00\x10",  # uint16 for a value that fits uint8
        b"\xd0\x05",  # int8 for a positive value
        b"\xd0\xf0",  # int8 for -16, a negative fixint
        b"\xd1\xff\x9c",  # int16 for -100, which fits int8
        b"\xd9\x03abc",  # str8 for a 3-byte string
        b"\xc5\x00\x01x",  # bin16 for 1 byte
        b"\xdc\x00\x01\x01",  # array16 for 1 element
        b"\xde\x00\x01\x01\x01",  # map16 for 1 pair
    ],
)
def test_canonical_mode_refuses_wide_forms(wide):
    mpack.decode_all(wide)  # the lenient mode takes it
    with pytest.raises(DeviceError) as exc:
        mpack.decode_all(wide, canonical=True)
    assert exc.value.reason == MALFORMED
