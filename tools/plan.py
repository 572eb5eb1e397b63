"""``otaferry plan UPDATE.ota --link lora ...``: what an update costs on the air.

From the artifact's own segment table, the medium's MTU and the region's rules:
frames (DATA sized as the Sender sizes them, inside the secure channel's 10
bytes, plus the offer, the handshake and one STATUS per half window), payload
per packet, time on air, the wall time the duty cycle forces (the gateway's
transmitter is the bottleneck: its off time dominates) and an ETA with loss
(every lost frame is sent again). ``--devices N``: N devices after one another
on one channel.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..protocol.artifact import ArtifactReader
from ..protocol.frames import max_chunk_size
from ..protocol.lora import LoRaParams, RegionPacing, region
from ..protocol.modems import codec_for
from ..protocol.secure import MSG1_SIZE, MSG2_SIZE, OVERHEAD
from ..protocol.session import window_for
from .files import read_file

STATUS_SIZE = 24  # a STATUS with a short bitmap, sealed
OFFER_EXTRA = 16  # per OFFER frame: its header


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
    chunk = max_chunk_size(frame_mtu, len(seg_lengths), max(seg_lengths))
    data = sum(math.ceil(n / chunk) for n in seg_lengths)
    head = len(reader.manifest_bytes) + 64
    offer = math.ceil(head / (frame_mtu - OFFER_EXTRA))
    window = window_for(pacing.line_rate or 1.0, pacing.rtt_floor, mtu)
    polls = math.ceil(data / max(1, window // 2)) + offer + 2
    loss = args.loss
    sent = (data + offer) / (1 - loss) if loss < 1 else math.inf
    gw_air = pacing.airtime(MSG1_SIZE) + sent * pacing.airtime(mtu) + 2 * pacing.airtime(32)
    dev_air = pacing.airtime(MSG2_SIZE) + polls / (1 - loss) * pacing.airtime(STATUS_SIZE)
    dc = pacing.duty_cycle
    wall = gw_air / dc + dev_air  # the gateway's off time covers the device's answers
    n = args.devices
    return {
        "region": plan_region.name,
        "sf": params.sf,
        "bw_khz": args.bw,
        "mtu": mtu,
        "duty_cycle": dc,
        "artifact_bytes": len(ota),
        "packets": math.ceil(sent + polls / (1 - loss) + 2) * n,
        "data_packets": data,
        "payload_per_packet": chunk,
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
