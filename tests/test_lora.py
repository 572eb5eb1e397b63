"""LoRa pure parts: time on air (known answers), region plans, the pacing budget,
the modem codecs of host (protocol/modems.py) and device (device_fw/lora.py)."""

from __future__ import annotations

import base64
import random

import pytest
from otaferry.device_fw import lora as dev
from otaferry.protocol.lora import EU868, US915, LoRaParams, RegionPacing, region
from otaferry.protocol.modems import (
    E22Codec,
    Failed,
    Ok,
    RAKCodec,
    Received,
    ReyaxCodec,
    TxDone,
    b85_size,
)

# Known answers. AN1200.13's calculator sheet: 13 bytes, SF9, 125 kHz, 4/5, 8 symbols
# of preamble, explicit header, CRC: Tsym 4.096 ms, 28 payload symbols, 164.864 ms.
# The LoRaWAN airtime tables (13 bytes of MAC overhead included): SF12/125 kHz with
# LDRO, 64 bytes: 2793.5 ms; SF7/125 kHz, 235 bytes: 368.9 ms.


def test_time_on_air_known_answers() -> None:
    sf9 = LoRaParams(sf=9, bw=125_000, cr=5)
    assert sf9.symbol_time == pytest.approx(0.004096)
    assert sf9.payload_symbols(13) == 28
    assert sf9.time_on_air(13) == pytest.approx(0.164864, abs=1e-9)
    sf12 = LoRaParams(sf=12)
    assert sf12.low_data_rate  # 32.768 ms symbols: LDRO is mandated
    assert sf12.time_on_air(64) == pytest.approx(2.7935, abs=1e-4)
    assert LoRaParams(sf=7).time_on_air(235) == pytest.approx(0.3689, abs=1e-4)


def test_time_on_air_follows_each_parameter() -> None:
    base = LoRaParams(sf=7)
    assert LoRaParams(sf=7, cr=8).time_on_air(51) > base.time_on_air(51)
    assert LoRaParams(sf=7, crc=False).time_on_air(51) < base.time_on_air(51)
    assert LoRaParams(sf=7, explicit_header=False).time_on_air(51) < base.time_on_air(51)
    assert LoRaParams(sf=7, bw=250_000).time_on_air(51) == pytest.approx(base.time_on_air(51) / 2)
    assert LoRaParams(sf=12, ldro=False).time_on_air(51) < LoRaParams(sf=12).time_on_air(51)
    assert LoRaParams(sf=7, preamble=12).time_on_air(0) == pytest.approx((16.25 + 13) * 0.001024)
    assert LoRaParams(sf=7, crc=False).payload_symbols(0) == 8  # the max(.., 0) floor
    with pytest.raises(ValueError):
        LoRaParams(sf=13)
    with pytest.raises(ValueError):
        LoRaParams(bw=100_000)


def test_device_time_on_air_matches_the_reference() -> None:
    for sf in range(7, 13):
        for bw in (125_000, 250_000, 500_000):
            for cr in (5, 8):
                params = LoRaParams(sf=sf, bw=bw, cr=cr)
                for n in (0, 1, 13, 51, 115, 222, 255):
                    assert dev.time_on_air(n, sf, bw, cr) == pytest.approx(params.time_on_air(n))


def test_region_plans() -> None:
    assert region("eu868") is EU868 and region("US915") is US915
    assert EU868.duty_cycle(868_100_000) == 0.01
    assert EU868.duty_cycle(869_525_000) == 0.1
    assert EU868.duty_cycle(868_800_000) == 0.001
    assert EU868.duty_cycle(864_000_000) == 0.001
    with pytest.raises(ValueError):
        EU868.duty_cycle(915_000_000)
    with pytest.raises(ValueError):
        EU868.check(LoRaParams(bw=500_000), 868_100_000)
    assert US915.dwell == 0.4 and US915.duty_cycle(915_000_000) == 1.0
    sf10 = LoRaParams(sf=10)
    top = sf10.max_payload(US915.dwell)
    assert sf10.time_on_air(top) <= 0.4 < sf10.time_on_air(top + 1)
    for freq in (863_500_000, 866_000_000, 868_300_000, 869_000_000, 869_500_000, 869_800_000):
        assert dev.duty_cycle_for("EU868", freq) == EU868.duty_cycle(freq)


def test_region_pacing_obeys_duty_cycle_and_dwell() -> None:
    params = LoRaParams(sf=7)
    pace = RegionPacing(params, EU868, mtu=51)
    air = params.time_on_air(51)
    assert pace.delay(51, 0.0) == 0.0
    pace.spend(51, 0.0)
    assert pace.delay(10, 0.0) == pytest.approx(air * 100)  # on air, then 99 x off
    pace.finished(1.0)  # the modem reported the end later than planned
    assert pace.delay(10, 0.0) == pytest.approx(1.0 + air * 99)
    assert pace.line_rate == pytest.approx(51 * 0.01 / air)
    us = RegionPacing(LoRaParams(sf=10), US915, mtu=11)
    top = us.max_mtu(255)
    assert us.allowed(top) and not us.allowed(top + 1)
    with pytest.raises(ValueError, match="dwell"):
        us.delay(top + 1, 0.0)
    scaled = RegionPacing(params, EU868, mtu=51, time_scale=0.01)
    assert scaled.airtime(51) == pytest.approx(air * 0.01) and scaled.allowed(51)


# --- codecs --------------------------------------------------------------------------


def test_reyax_base85_sizes_and_device_encoder_agree() -> None:
    rng = random.Random(3)
    for n in range(0, 200):
        data = rng.randbytes(n)
        text = base64.b85encode(data)
        assert len(text) == b85_size(n)
        assert dev.b85encode(data) == text
        assert dev.b85decode(text) == data
        assert b"," not in text and b"\r" not in text and b"\n" not in text
    assert b85_size(ReyaxCodec.max_mtu) == 240 < b85_size(ReyaxCodec.max_mtu + 1)


def test_reyax_codec_commands_and_events() -> None:
    codec = ReyaxCodec(password="FABC0002")
    setup = codec.setup(LoRaParams(sf=9, bw=125_000, cr=5, preamble=12), 868_100_000, 0)
    assert setup == [
        b"AT+ADDRESS=0\r\n",
        b"AT+NETWORKID=18\r\n",
        b"AT+BAND=868100000\r\n",
        b"AT+PARAMETER=9,7,1,12\r\n",
        b"AT+CPIN=FABC0002\r\n",
    ]
    body = bytes(range(40))
    cmd = codec.encode_send(5, body)
    data = base64.b85encode(body)
    assert cmd == b"AT+SEND=5,%d,%s\r\n" % (len(data), data)
    assert codec.wire_size(40) == 50 + 8
    line = b"+RCV=7,%d,%s,-52,9\r\n" % (len(data), data)
    stream = b"+READY\r\n+OK\r\n+ERR=17\r\n" + line + b"+RCV=7,99,short,-1,2\r\n"
    events = [e for i in range(len(stream)) for e in codec.feed(stream[i : i + 1])]
    busy = Failed("+ERR=17 (the last TX was not completed)")
    assert events == [Ok(), busy, Received(7, body, -52, 9)]
    device = dev.ReyaxModem()
    assert device.encode(5, body) == cmd
    assert device.feed(line) == [("rx", 7, body)]


def test_rak_codec_commands_and_events() -> None:
    codec = RAKCodec()
    setup = codec.setup(LoRaParams(sf=7, bw=125_000, cr=5), 868_000_000, 0)
    assert setup == [b"AT+NWM=0\r\n", b"AT+P2P=868000000:7:125:0:8:14\r\n", b"AT+PRECV=65533\r\n"]
    assert codec.after_send() == [b"AT+PRECV=65533\r\n"]
    assert codec.encode_send(3, b"\x01\xab") == b"AT+PSEND=030001AB\r\n"
    stream = (
        b"OK\r\n+EVT:TXP2P DONE\r\nAT_BUSY_ERROR\r\n"
        b"+EVT:RXP2P:-40:11:0003CAFE\r\n"  # for us (0) from 3
        b"+EVT:RXP2P:-40:11:0203CAFE\r\n"  # for 2: not ours
        b"+EVT:RXP2P:-40:11:FF04BEEF\r\n"  # broadcast from 4
        b"+EVT:RXP2P:-40:11:XYZ\r\n"
    )
    assert codec.feed(stream) == [
        Ok(),
        TxDone(),
        Failed("AT_BUSY_ERROR"),
        Received(3, b"\xca\xfe", -40, 11),
        Received(4, b"\xbe\xef", -40, 11),
    ]
    device = dev.RakModem()
    device.setup(3, 868_000_000, 7, 125_000, 5, 8)
    assert device.encode(0, b"\x01\xab") == b"AT+PSEND=000301AB\r\n"
    assert device.feed(b"+EVT:RXP2P:-40:11:0300CAFE\r\n") == [("rx", 0, b"\xca\xfe")]
    assert device.feed(b"+EVT:RXP2P:-40:11:0100CAFE\r\n") == []


def test_e22_codec_frames_fit_one_sub_packet_and_resync() -> None:
    for sub, e32 in ((240, False), (128, False), (64, False), (32, False), (58, True)):
        codec = E22Codec(sub, e32=e32)
        assert (
            codec.wire_size(codec.max_mtu) <= codec.sub_packet < codec.wire_size(codec.max_mtu + 1)
        )
        assert dev.EbyteModem(codec.sub_packet).mtu == codec.max_mtu
    codec = E22Codec()
    cmd = codec.encode_send(0x0102, b"\x00\x00payload")
    assert cmd[:3] == b"\x01\x02\x12" and len(cmd) - 3 == codec.wire_size(9)
    far = E22Codec()
    far.setup(LoRaParams(), 868_100_000, 0x0102)
    frame = far.encode_send(0, b"answer")[3:]
    noise = b"\x13\x37garbage"
    assert codec.feed(noise + frame[:5]) == []
    assert codec.feed(frame[5:] + frame) == [Received(0x0102, b"answer")] * 2
    assert dev.EbyteModem().feed(frame) == [("rx", 0x0102, b"answer")]


def test_device_modem_loop_waits_for_the_modem_and_the_duty_cycle() -> None:
    class Loop(dev.ModemLoop):
        def __init__(self) -> None:
            self.modem = dev.ReyaxModem()
            self.address, self.gateway = 1, 0
            self.radio = (7, 125_000, 5, 8)
            self.duty_cycle, self.dwell, self.time_scale = 0.01, None, 1.0
            self.mtu = 192
            self.commands = self.modem.setup(1, 868_100_000, 7, 125_000, 5, 8)
            self.outbox, self.waiting = [], []
            self.wait_until, self.off_until, self.last_air = None, 0.0, 0.0
            self.started = True
            self.stats = {"rx": 0, "tx": 0, "modem_errors": 0, "foreign": 0}
            self.loop = Idle()  # type: ignore[assignment]

    class Idle:  # the DeviceLoop inside, with nothing to say and no timer
        reset_requested = None

        def tick(self, now: float) -> list[bytes]:
            return []

        def next_deadline(self) -> None:
            return None

    loop = Loop()
    assert loop.start(0.0) == b"AT+ADDRESS=1\r\n"
    assert loop.tick(0.1) == b""  # still waiting for +OK
    out = loop.feed(b"+OK\r\n", 0.2)
    assert out == b"AT+NETWORKID=18\r\n"
    for t in (0.3, 0.4, 0.5):
        out = loop.feed(b"+OK\r\n", t)
    assert out == b""  # setup done, nothing to say
    loop.outbox += [b"first", b"second"]
    first = loop.tick(1.0)
    assert first.startswith(b"AT+SEND=0,")
    assert loop.tick(1.01) == b""  # no +OK yet: half duplex
    air = loop.airtime(len(b"first"))
    assert loop.feed(b"+OK\r\n", 1.1) == b""  # off the air; now the duty cycle
    assert loop.next_deadline() == pytest.approx(1.1 + air * 99)
    assert loop.tick(1.1 + air * 98) == b""
    assert loop.tick(1.1 + air * 99.01).startswith(b"AT+SEND=0,")


def test_plan_command_reports_packets_air_and_wall_time(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from otaferry.protocol.artifact import build_full
    from otaferry.protocol.keys import SigningKey
    from otaferry.tools.cli import main

    image = b"".join(random.Random(4).randbytes(100) * 4 for _ in range(40))
    ota = tmp_path / "u.ota"
    key = SigningKey.from_seed(bytes(32))
    ota.write_bytes(build_full(image, key, hw=["h"], chip="c", version="1"))
    assert main(["plan", str(ota), "--link", "lora", "--sf", "9", "--json"]) == 0
    at9 = json.loads(capsys.readouterr().out)
    assert {"packets", "payload_per_packet", "air_time_s", "wall_time_s"} <= set(at9)
    assert at9["payload_per_packet"] < at9["mtu"] <= 222
    assert at9["air_time_s"] >= at9["floor_air_time_s"] > 0
    assert at9["wall_time_s"] > 20 * at9["air_time_s"]  # 1 %: the off time dominates
    assert main(["plan", str(ota), "--sf", "7", "--loss", "0.3", "--json"]) == 0
    at7 = json.loads(capsys.readouterr().out)
    assert at7["air_time_s"] < at9["air_time_s"] and at7["packets"] > at9["packets"]
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(ota), "--loss", "1"])
    assert exit_.value.code == 2 and "--loss" in capsys.readouterr().err  # a usage error
