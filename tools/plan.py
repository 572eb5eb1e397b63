"""``otaferry plan UPDATE.ota --link lora ...``: what an update costs on the air.

The model of the exchange ``push --lora-modem`` runs with a device that takes
compact DATA and batched acknowledgements (SPEC 8.8), frame by frame, from the
artifact's own segment table, the medium's MTU and the region's rules:

- gateway: the handshake (MSG1) and QUERY, the OFFER parts, one DATA frame per
  chunk (chunk = MTU - 10: the short sealed record); after the reboot CONFIRM;
- device: MSG2, its HELLO parts, ACCEPT, one STATUS per window of DATA frames
  (the window that ``RegionPacing.ack_batch`` gives) and at every segment's
  end, DONE in place of the last one (SPEC 8.9: no COMMIT); after the reboot
  the RESUME record with its CHECKIN (SPEC 9.11: no second handshake, no second
  HELLO) and CONFIRMED;
- loss ``p``: every frame goes 1 / (1 - p) times, and each segment's holes
  cost about one more STATUS round per ``p`` of its windows; a round whose poll or
  STATUS is lost ends in a timeout (a POLL and a STATUS more); the HELLO is sent
  whole for every QUERY until each part has come once.

``air_time_s`` is both sides' time on air, ``wall_time_s`` the duty-cycle-bound
time (the gateway's off time; the device's answers fit in it). ``otaferry bench
lora`` runs the same update in the emulator and reports how far apart they are
(within 5 % lossless, ``tests/test_lora.py`` checks a small case).
``--devices N``: N devices after one another on one channel.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..protocol.artifact import ArtifactReader
from ..protocol.frames import (
    OFFER_BATCH,
    OFFER_COMMIT,
    OFFER_COMPACT,
    OFFER_RESUME,
    OfferBlob,
    bin_header_size,
    int_size,
    max_part_size,
)
from ..protocol.lora import LoRaParams, RegionPacing, region
from ..protocol.modems import codec_for
from ..protocol.secure import MSG1_SIZE, MSG2_SIZE, OVERHEAD, RESUME_NONCE_SIZE
from .files import read_file

HELLO_INFO = 150  # bytes of a device's HelloInfo (id, hw, chip, version, hash, limits)
STATUS_SIZE = 10 + OVERHEAD  # a STATUS with its echo and a short bitmap, sealed
QUERY_SIZE = 8 + OVERHEAD
POLL_SIZE = 6 + OVERHEAD
ACCEPT_SIZE = 6 + OVERHEAD
SHORT = 2 + OVERHEAD  # DONE
CONFIRM_SIZE = 30 + OVERHEAD
RESUME_SIZE = 1 + RESUME_NONCE_SIZE + 30 + OVERHEAD  # E6, nonce, sealed CHECKIN
CONFIRMED_SIZE = 20 + OVERHEAD


def _hello_frames(size: int, mtu: int) -> list[int]:
    """Frame sizes of a HELLO of ``size`` bytes (a 32-bit session id, sealed)."""
    part = mtu - OVERHEAD - (2 + 5 + 1 + 1 + 2)
    count = math.ceil(size / part)
    return [min(part, size - i * part) + mtu - part for i in range(count)]


def _tries(parts: int, loss: float) -> float:
    """Expected rounds until each of ``parts`` frames, each lost with ``loss``, came once."""
    if loss <= 0:
        return 1.0
    total, j = 0.0, 0
    while True:
        term = 1 - (1 - loss**j) ** parts
        total += term
        j += 1
        if term < 1e-6 or j > 1000:
            return total


def plan(ota: bytes, args: argparse.Namespace) -> dict[str, Any]:
    import io

    reader = ArtifactReader(io.BytesIO(ota))
    m = reader.manifest
    seg_lengths = [length for length, _ in m.segments]
    plan_region = region(args.region)
    params = LoRaParams(args.sf, args.bw * 1000, args.cr)
    wire = codec_for(args.modem).wire_size if args.modem else None
    pacing = RegionPacing(params, plan_region, args.freq, wire_size=wire, mtu=args.mtu)
    mtu = min(args.mtu, pacing.max_mtu(args.mtu))
    frame_mtu = mtu - OVERHEAD
    chunk = min(frame_mtu, max(seg_lengths))  # compact DATA: the whole frame is payload
    window = pacing.ack_batch(mtu)
    blob = OfferBlob(chunk, reader.manifest_bytes, reader.signature,
                     OFFER_BATCH | OFFER_COMPACT | OFFER_RESUME | OFFER_COMMIT,
                     ).encode()  # fmt: skip
    part = max_part_size(frame_mtu, len(blob))
    offer = [OVERHEAD + 1 + 1 + int_size(i) + int_size(math.ceil(len(blob) / part))
             + bin_header_size(part) + min(part, len(blob) - i * part)
             for i in range(math.ceil(len(blob) / part))]  # fmt: skip
    data: list[int] = []
    statuses = 0
    loss = args.loss
    for length in seg_lengths:
        n = math.ceil(length / chunk)
        data += [mtu] * (n - 1) + [length - (n - 1) * chunk + OVERHEAD]
        rounds = math.ceil(n / window)
        statuses += rounds + (math.ceil(rounds * loss / (1 - loss)) if loss else 0)
    statuses -= 1  # the last segment's answer is DONE
    air = pacing.airtime
    resend = 1 / (1 - loss) if loss < 1 else math.inf
    # A round whose poll or STATUS is lost ends in a timeout: a POLL and a STATUS more.
    lost_round = 1 - (1 - loss) ** 2
    timeouts = statuses * lost_round / (1 - lost_round) if loss < 1 else math.inf
    hellos = _hello_frames(HELLO_INFO, mtu)
    # The device sends its whole HELLO for every QUERY; the sender keeps the parts it
    # got, so it asks until each part has come once: E[max of k geometric tries].
    tries = _tries(len(hellos), loss)
    gw_air = (
        resend * (air(MSG1_SIZE) + sum(map(air, offer)) + sum(map(air, data)) + air(CONFIRM_SIZE))
        + tries * resend * air(QUERY_SIZE) + timeouts * air(POLL_SIZE)
    )  # fmt: skip
    dev_air = (
        resend * (air(MSG2_SIZE) + air(ACCEPT_SIZE) + air(SHORT) + air(RESUME_SIZE)
                  + air(CONFIRMED_SIZE))
        + tries * sum(map(air, hellos)) + (statuses + timeouts) * air(STATUS_SIZE)
    )  # fmt: skip
    dc = pacing.duty_cycle
    wall = gw_air / dc + dev_air  # the gateway's off time covers the device's answers
    sent = len(data) + len(offer) + 2  # MSG1, CONFIRM
    answers = 5  # MSG2, ACCEPT, DONE, RESUME, CONFIRMED
    packets = math.ceil(resend * (sent + answers + tries) + tries * len(hellos)
                        + statuses + 2 * timeouts)  # fmt: skip
    n = args.devices
    return {
        "region": plan_region.name,
        "sf": params.sf,
        "bw_khz": args.bw,
        "mtu": mtu,
        "duty_cycle": dc,
        "artifact_bytes": len(ota),
        "packets": packets * n,
        "data_packets": len(data),
        "payload_per_packet": chunk,
        "window": window,
        "air_time_s": round((gw_air + dev_air) * n, 3),
        "floor_air_time_s": round(math.ceil(len(ota) / mtu) * pacing.airtime(mtu) * n, 3),
        "wall_time_s": round(wall * n, 1),
        "eta": _human(wall * n),
    }


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run(args: argparse.Namespace) -> int:
    out = plan(read_file(args.artifact), args)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"{out['packets']} packets ({out['data_packets']} DATA of {out['payload_per_packet']} B "
        f"payload in {out['mtu']}-byte frames), {out['air_time_s']} s on the air "
        f"(floor {out['floor_air_time_s']} s); duty cycle {out['duty_cycle'] * 100:g} %: "
        f"wall time {out['wall_time_s']} s, ETA {out['eta']}"
    )
    return 0
