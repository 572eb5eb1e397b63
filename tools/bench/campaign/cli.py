"""``otaferry bench campaign``: run the campaigns, print the report, exit 0 if all pass."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .boot import boot_campaign
from .checkin import checkin_campaign, checkin_ok
from .common import PAIRS
from .dos import dos_campaign, dos_ok
from .fuzz import fuzz_campaign, fuzz_ok
from .hostile import hostile_campaign
from .powercut import powercut_campaign, powercut_ok
from .report import print_report
from .secure import secure_campaign, secure_ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="otaferry bench campaign",
        description=sys.modules[__package__].__doc__,  # the package's, which says it all
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--cuts", type=int, default=500, help="power cuts (at least)")
    ap.add_argument("--frames", type=int, default=100_000, help="mutated frames to inject")
    ap.add_argument("--records", type=int, default=100_000, help="tampered secure records")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pair", choices=sorted(PAIRS), default="esp8266")
    ap.add_argument("--only", default="powercut,checkin,fuzz,secure,dos,hostile,boot")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: dict[str, Any] = {"seed": args.seed, "pair": args.pair}
    verdict: dict[str, bool] = {}
    t0 = time.monotonic()
    if "powercut" in only:
        results["powercut"] = powercut_campaign(args.cuts, args.seed, args.pair, say)
        verdict["powercut"] = powercut_ok(results["powercut"], args.cuts)
    if "checkin" in only:
        results["checkin"] = checkin_campaign(args.pair, say)
        verdict["checkin"] = checkin_ok(results["checkin"])
    if "fuzz" in only:
        results["fuzz"] = fuzz_campaign(args.frames, args.seed, say)
        verdict["fuzz"] = fuzz_ok(results["fuzz"], args.frames)
    if "secure" in only:
        results["secure"] = secure_campaign(args.records, args.seed)
        verdict["secure"] = secure_ok(results["secure"], args.records)
    if "dos" in only:
        results["dos"] = dos_campaign()
        verdict["dos"] = dos_ok(results["dos"])
    if "hostile" in only:
        results["hostile"] = hostile_campaign(args.pair)
        verdict["hostile"] = results["hostile"]["failed"] == 0
    if "boot" in only:
        results["boot"] = boot_campaign(args.pair)
        verdict["boot"] = results["boot"]["failed"] == 0
    results["verdict"] = verdict
    results["seconds"] = round(time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print_report(results)
        print(f"total {results['seconds']} s")
    return 0 if all(verdict.values()) else 1
