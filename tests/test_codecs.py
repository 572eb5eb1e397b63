"""The codec registry and the raw-deflate full-image codec (SPEC 4.1): golden
vectors through the host's reference decoder and the device's, a deflate
install on the simulator, the sender choosing what the HELLO announces, and
an undecodable codec refused before anything is erased."""

import hashlib
import io
import json
from pathlib import Path

import pytest
from helpers_artifacts import key_a, small_image
from otaferry.device_fw import codecs
from otaferry.device_fw.device import Device
from otaferry.device_fw.installer import install_stream
from otaferry.device_fw.reasons import DeviceError
from otaferry.protocol.artifact import ArtifactReader, build_full
from otaferry.protocol.errors import DecodeError, OtaferryError, Reason
from otaferry.protocol.frames import HelloInfo
from otaferry.protocol.payload import (
    CODEC_DEFLATE,
    compress_segments_deflate,
    decoder_ram_bytes,
    decompress_segment,
    decompress_segment_deflate,
)
from otaferry.transport.updater import choose_artifact

VECTORS = json.loads((Path(__file__).parent / "vectors" / "deflate" / "segments.json").read_text())
IMAGE = small_image(40_000)


def _device_decode(seg: bytes, size: int, wlog: int) -> bytes:
    out = bytearray()
    codecs.full_decoder("deflate")(seg, size, wlog, out.extend, bytearray(4096))
    return bytes(out)


def test_golden_vectors_decode_on_host_and_device():
    img = bytes.fromhex(VECTORS["image_hex"])
    assert hashlib.sha256(img).hexdigest() == VECTORS["image_sha256"]
    seg, wlog = VECTORS["segment_size"], VECTORS["window_log"]
    for i, hexseg in enumerate(VECTORS["good"]):
        want = img[i * seg : (i + 1) * seg]
        assert decompress_segment_deflate(bytes.fromhex(hexseg), len(want), wlog) == want
        assert _device_decode(bytes.fromhex(hexseg), len(want), wlog) == want
    st = VECTORS["stored_block"]
    assert _device_decode(bytes.fromhex(st["segment_hex"]), 8, wlog) == bytes.fromhex(st["out_hex"])
    for bad in VECTORS["bad"] + VECTORS["host_only_bad"]:
        with pytest.raises(DecodeError) as exc:
            decompress_segment_deflate(bytes.fromhex(bad["segment_hex"]), bad["out_size"], wlog)
        assert exc.value.reason == Reason.DECODE_ERROR
    for bad in VECTORS["bad"]:
        with pytest.raises(ValueError):
            _device_decode(bytes.fromhex(bad["segment_hex"]), bad["out_size"], wlog)


def test_encoder_round_trips_and_respects_the_window():
    segs = compress_segments_deflate(IMAGE, 8192)
    out = b"".join(
        decompress_segment_deflate(s, min(8192, len(IMAGE) - i * 8192), 13)
        for i, s in enumerate(segs)
    )
    assert out == IMAGE
    assert decoder_ram_bytes(8192, 13, CODEC_DEFLATE) < decoder_ram_bytes(8192, 13)


def _device(tmp_path):
    return Device.create(str(tmp_path / "f.bin"), hw="hw", chip="chip",
                         trusted_keys=[key_a().public.raw], image=small_image(30_000),
                         version="1")  # fmt: skip


def test_deflate_full_install_on_the_simulator(tmp_path):
    art = build_full(IMAGE, key_a(), hw=["hw"], chip="chip", version="2", codec="deflate")
    manifest = ArtifactReader(io.BytesIO(art)).manifest
    assert manifest.codec == "deflate" and manifest.window_log == 13
    with _device(tmp_path) as dev:
        install_stream(dev, io.BytesIO(art))
        slot = dev.passive_slot()
        assert bytes(slot.read(0, len(IMAGE))) == IMAGE
    with pytest.raises(OtaferryError):
        build_full(IMAGE, key_a(), hw=["hw"], chip="chip", version="2", codec="lz4")


def test_undecodable_codec_refused_before_any_erase(tmp_path, monkeypatch):
    art = build_full(IMAGE, key_a(), hw=["hw"], chip="chip", version="2")  # zstd
    monkeypatch.delitem(codecs.FULL, "zstd")  # a port without zstd (MicroPython)
    with _device(tmp_path) as dev:
        erases = dev.flash.erases
        with pytest.raises(DeviceError) as exc:
            install_stream(dev, io.BytesIO(art))
        assert exc.value.reason == Reason.UNSUPPORTED_CODEC
        assert dev.flash.erases == erases and dev.progress() is None
        assert "zstd" not in codecs.names() and "deflate" in codecs.names()


def _hello(codec_list):
    return HelloInfo(device_id=bytes(8), hw="hw", chip="chip", running_version="1",
                     running_sha256=bytes(32), security_counter=0, slot_size=1 << 20,
                     max_frame=1024, codecs=tuple(codec_list), max_window_log=13,
                     max_segment_payload=8256, max_offer=16384)  # fmt: skip


def test_sender_picks_a_full_image_the_device_decodes():
    z = build_full(IMAGE, key_a(), hw=["hw"], chip="chip", version="2")
    d = build_full(IMAGE, key_a(), hw=["hw"], chip="chip", version="2", codec="deflate")
    mpy = _hello(["deflate", "fdelta1", "fdelta2"])
    assert choose_artifact([z, d], mpy) is d
    assert choose_artifact([z, d], _hello(["zstd", "deflate"])) is (z if len(z) <= len(d) else d)
    with pytest.raises(OtaferryError) as exc:
        choose_artifact([z], mpy)
    assert exc.value.reason == Reason.UNSUPPORTED_CODEC


def test_zstd_reference_decoder_unchanged():
    from otaferry.protocol.payload import compress_segments

    seg = compress_segments(IMAGE[:8192])[0]
    assert decompress_segment(seg, 8192, 13) == IMAGE[:8192]
