"""LoRa air time and regional rules (sans-IO, pure).

Time on air (Semtech SX1276/77/78/79 datasheet section 4.1.1.7, AN1200.13 "LoRa
Modem Designer's Guide"): with symbol time ``Ts = 2**SF / BW``,

    T_preamble = (n_preamble + 4.25) * Ts
    n_payload  = 8 + max(ceil((8*PL - 4*SF + 28 + 16*CRC - 20*IH) / (4*(SF - 2*DE))) * (CR + 4), 0)
    T_packet   = T_preamble + n_payload * Ts

PL payload bytes, CRC 1 with the payload CRC, IH 1 for an implicit header, DE 1
with low-data-rate optimisation, CR 1..4 for coding rates 4/5..4/8. Semtech
requires DE when a symbol lasts 16 ms or more (SF11 and SF12 at 125 kHz); that
is the default here.

Region plans: EU868 (ETSI EN 300 220-2 sub-bands, as LoRaWAN Regional
Parameters RP002 list them: 863–865 MHz 0.1 %, 865–868 1 %, 868.0–868.6 1 %,
868.7–869.2 0.1 %, 869.4–869.65 10 %, 869.7–870 1 %) and US915 (FCC 15.247
frequency hopping: no duty cycle, but no transmission may dwell on a channel
longer than 400 ms). :class:`RegionPacing` is the sender's budget of
``protocol/pacing.py`` for one modem on one channel: it refuses a frame longer
than the dwell limit and holds every transmitter off for ``T * (1/dc - 1)``
after a frame of air time ``T`` (the LoRaWAN rule for the ETSI duty cycle:
stricter than the hourly average, so no window ever exceeds it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "EU868",
    "REGIONS",
    "US915",
    "LoRaParams",
    "Region",
    "RegionPacing",
    "SubBand",
    "region",
]


@dataclass(frozen=True, slots=True)
class LoRaParams:
    """Modulation settings of one LoRa channel. ``bw`` in Hz; ``cr`` the coding rate
    denominator 5..8 (4/5..4/8); ``ldro`` None: on when a symbol lasts >= 16 ms."""

    sf: int = 7
    bw: int = 125_000
    cr: int = 5
    preamble: int = 8
    crc: bool = True
    explicit_header: bool = True
    ldro: bool | None = None

    def __post_init__(self) -> None:
        if not 6 <= self.sf <= 12:
            raise ValueError(f"spreading factor {self.sf} is not 6..12")
        if self.bw not in (
            7_800,
            10_400,
            15_600,
            20_800,
            31_250,
            41_700,
            62_500,
            125_000,
            250_000,
            500_000,
        ):
            raise ValueError(f"bandwidth {self.bw} Hz is not a LoRa bandwidth")
        if not 5 <= self.cr <= 8:
            raise ValueError(f"coding rate 4/{self.cr} is not 4/5..4/8")
        if not 6 <= self.preamble <= 65535:
            raise ValueError(f"preamble {self.preamble} is not 6..65535 symbols")

    @property
    def symbol_time(self) -> float:
        return (1 << self.sf) / self.bw

    @property
    def low_data_rate(self) -> bool:
        return self.symbol_time >= 0.016 if self.ldro is None else self.ldro

    def payload_symbols(self, size: int) -> int:
        if not 0 <= size <= 255:
            raise ValueError(f"a LoRa payload is 0..255 bytes, not {size}")
        de = 1 if self.low_data_rate else 0
        ih = 0 if self.explicit_header else 1
        bits = 8 * size - 4 * self.sf + 28 + 16 * int(self.crc) - 20 * ih
        blocks = max(math.ceil(bits / (4 * (self.sf - 2 * de))), 0)
        return 8 + blocks * self.cr

    def time_on_air(self, size: int) -> float:
        """Seconds a packet of ``size`` payload bytes occupies the air."""
        ts = self.symbol_time
        return (self.preamble + 4.25) * ts + self.payload_symbols(size) * ts

    def max_payload(self, dwell: float | None) -> int:
        """The largest payload (<= 255) whose air time fits ``dwell`` (None: 255)."""
        if dwell is None:
            return 255
        best = -1
        for size in range(256):
            if self.time_on_air(size) <= dwell:
                best = size
        return best


@dataclass(frozen=True, slots=True)
class SubBand:
    name: str
    low_hz: int
    high_hz: int
    duty_cycle: float


@dataclass(frozen=True, slots=True)
class Region:
    """A regional plan: sub-bands with their duty cycles, a dwell limit, a default
    channel and the bandwidths allowed."""

    name: str
    sub_bands: tuple[SubBand, ...]
    dwell: float | None
    default_hz: int
    bandwidths: tuple[int, ...]

    def sub_band(self, freq_hz: int) -> SubBand:
        for band in self.sub_bands:
            if band.low_hz <= freq_hz <= band.high_hz:
                return band
        raise ValueError(f"{freq_hz} Hz is outside every {self.name} sub-band")

    def duty_cycle(self, freq_hz: int) -> float:
        return self.sub_band(freq_hz).duty_cycle

    def check(self, params: LoRaParams, freq_hz: int) -> None:
        """Raise ValueError when ``params`` on ``freq_hz`` is not allowed here."""
        self.sub_band(freq_hz)
        if params.bw not in self.bandwidths:
            raise ValueError(f"{params.bw // 1000} kHz is not allowed in {self.name}")


EU868 = Region(
    "EU868",
    (
        SubBand("h1.3", 863_000_000, 865_000_000, 0.001),
        SubBand("h1.4", 865_000_000, 868_000_000, 0.01),
        SubBand("g1", 868_000_000, 868_600_000, 0.01),
        SubBand("g2", 868_700_000, 869_200_000, 0.001),
        SubBand("g3", 869_400_000, 869_650_000, 0.1),
        SubBand("g4", 869_700_000, 870_000_000, 0.01),
    ),
    dwell=None,
    default_hz=868_100_000,
    bandwidths=(125_000, 250_000),
)

US915 = Region(
    "US915",
    (SubBand("902-928", 902_000_000, 928_000_000, 1.0),),
    dwell=0.4,
    default_hz=915_000_000,
    bandwidths=(125_000, 500_000),
)

REGIONS = {r.name: r for r in (EU868, US915)}


def region(name: str) -> Region:
    try:
        return REGIONS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown region {name!r} (known: {', '.join(REGIONS)})") from None


# Full frames a check-in takes besides the HELLO's parts (handshake both ways, the
# QUERY, CONFIRM and CONFIRMED, a retry): the unit of RegionPacing.checkin_timeout.
CHECKIN_PACKETS = 12


class RegionPacing:
    """The pacing budget (``protocol/pacing.Pacing``) of one LoRa transmitter.

    ``wire_size(n)``: the bytes the modem puts on the air for a frame body of
    ``n`` bytes (an ASCII encoding, an address header, the modem's own bytes).
    ``turnaround``: seconds a modem needs between its TX and RX (the round-trip
    floor is two of them plus the far side's answer). ``duty_cycle`` overrides
    the region's (for a bench with no regulation, 1.0).

    ``line_rate`` is the rate the duty cycle allows for full frames, so the
    Sender's window covers what the air can really carry in a round trip.
    """

    def __init__(
        self,
        params: LoRaParams,
        plan: Region,
        freq_hz: int | None = None,
        *,
        wire_size: Callable[[int], int] | None = None,
        mtu: int = 222,
        turnaround: float = 0.05,
        duty_cycle: float | None = None,
        time_scale: float = 1.0,
    ) -> None:
        self.params = params
        self.region = plan
        self.freq_hz = plan.default_hz if freq_hz is None else freq_hz
        plan.check(params, self.freq_hz)
        self.duty_cycle = plan.duty_cycle(self.freq_hz) if duty_cycle is None else duty_cycle
        if not 0 < self.duty_cycle <= 1:
            raise ValueError("duty cycle must be in (0, 1]")
        self.dwell = plan.dwell
        self._wire_size = wire_size or (lambda n: n)
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.time_scale = time_scale  # < 1: an emulator running faster than the air
        full = self.airtime(mtu)
        self.line_rate: float | None = mtu * self.duty_cycle / full
        self.rtt_floor = 2 * turnaround * time_scale + self.airtime(16)
        self._free_at = float("-inf")
        self.air_s = 0.0
        self.frames = 0
        self._last_air = 0.0

    def airtime(self, size: int) -> float:
        """Air time of a frame body of ``size`` bytes, its wire bytes counted."""
        return self.params.time_on_air(self._wire_size(size)) * self.time_scale

    def first_rto(self, mtu: int, answer: int = 48) -> float:
        """A first retransmit timeout: a full frame out, then the far side's answer
        of ``answer`` bytes, which may wait out its own duty-cycle off time."""
        back = self.airtime(answer)
        return 2 * (self.airtime(mtu) + back + self.off_time(back)) + self.rtt_floor

    def ack_batch(self, mtu: int, status: int = 26, share: float = 0.01) -> int:
        """Frames per acknowledgement (SPEC 8.8): enough that a STATUS of ``status``
        bytes costs at most ``share`` of the air time of the full frames it
        acknowledges (4..64). At SF9 / 51 bytes a STATUS is 0.7 of a full frame:
        64 (the cap); at 222 bytes 0.2: 21."""
        ratio = self.airtime(status) / self.airtime(mtu)
        return max(4, min(64, math.ceil(ratio / share)))

    def checkin_timeout(self, mtu: int, floor: float = 120.0) -> float:
        """The seconds a new image needs to check in over this air (SPEC 8.7): the
        ``floor`` a UART gets, plus the duty-cycle cycles of twice
        ``CHECKIN_PACKETS + ceil(1024 / mtu)`` full frames (the handshake, the HELLO
        in parts, the check-in exchange, both sides taking turns). With a RAK3172 at
        EU868 1 %: 38 minutes at SF9 / 51 bytes, 65 at SF9 / 222 (a full frame is
        1.1 s on the air, 110 s of off time); 4 minutes at SF7 / 222 bytes / 10 %.
        The device's own deadline (``device_fw/lora.py``) uses the same rule."""
        air = self.airtime(mtu)
        cycle = air + self.off_time(air)
        return floor + 2 * (CHECKIN_PACKETS + -(-1024 // mtu)) * cycle

    def max_mtu(self, limit: int) -> int:
        """The largest body <= ``limit`` whose frame fits the dwell limit."""
        return max((n for n in range(1, limit + 1) if self.allowed(n)), default=0)

    def off_time(self, air: float) -> float:
        return air * (1 / self.duty_cycle - 1)

    def allowed(self, size: int) -> bool:
        return self.dwell is None or self.params.time_on_air(self._wire_size(size)) <= self.dwell

    def delay(self, size: int, now: float) -> float:
        if not self.allowed(size):
            raise ValueError(
                f"a {size}-byte frame is "
                f"{self.params.time_on_air(self._wire_size(size)) * 1000:.0f} ms on the air, "
                f"over the {self.region.name} dwell limit of {self.dwell}s"
            )
        return max(0.0, self._free_at - now)

    def spend(self, size: int, now: float) -> None:
        air = self.airtime(size)
        start = max(now, self._free_at)
        self.air_s += air
        self.frames += 1
        self._last_air = air
        self._free_at = start + air + self.off_time(air)

    def finished(self, now: float) -> None:
        """The modem reported the last frame off the air at ``now``: the off time
        runs from there (a modem that deferred its start, listening before
        talking, must not make the next frame early)."""
        self._free_at = max(self._free_at, now + self.off_time(self._last_air))
