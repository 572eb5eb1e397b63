"""The campaign report: plain-text tables of each campaign's figures, and the verdicts."""

from __future__ import annotations

from typing import Any

from .powercut_legs import PHASE_TITLES, PHASES


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*(str(x) for x in row)) for row in rows]
    return "\n".join(out)


def _counts(label: str, counts: dict[str, int], *, nonzero: bool = False) -> None:
    print(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v or not nonzero))


def _problems(problems: dict[str, int]) -> None:
    for p, n in problems.items():
        print(f"  ! {n} x {p}")


def _powercut(s: dict[str, Any]) -> None:
    print(f"\nPOWER CUTS  pair {s['pair']} (old {s['images']['old']} B -> new "
          f"{s['images']['new']} B; full {s['artifacts']['full'][0]} B / "
          f"{s['artifacts']['full'][1]} segments, delta {s['artifacts']['delta'][0]} B / "
          f"{s['artifacts']['delta'][1]} segments), {s['seconds']} s")  # fmt: skip
    heads = ["", "cuts", "unbootable", "wrong image", "active writes", "protect err",
             "active changed", "stray", "reruns ok", "final ok", "counter lapse"]  # fmt: skip
    keys = ["cuts", "unbootable", "wrong_image", "active_slot_writes", "protect_errors",
            "active_slot_changed", "stray_writes", "reruns_completed", "final_identical",
            "counter_lapses"]  # fmt: skip
    rows = [[PHASE_TITLES[p]] + [s["phases"][p][k] for k in keys] for p in PHASES]
    rows.append(["total"] + [s["total"][k] for k in keys])
    print(_table(heads, rows))
    print()
    rows = [[name, leg["ops"]] + [leg[k] for k in keys] + [leg["booted_old"], leg["booted_new"]]
            for name, leg in s["legs"].items()]  # fmt: skip
    print(_table(["leg", "ops", *heads[1:], "boot old", "boot new"], rows))
    for p in s["problems"][:8]:
        print(f"  ! {p['leg']} op {p['index']} ({p['phase']}/{p['region']}): "
              f"{'; '.join(p['problems'])}")  # fmt: skip


def _fuzz(s: dict[str, Any]) -> None:
    print(f"\nFRAME FUZZING  {s['frames']} mutated/random frames ({s['to_receiver']} to the "
          f"Receiver, {s['to_sender']} to the Sender) in {s['scenarios']} sessions, "
          f"{s['seconds']} s")  # fmt: skip
    _counts("mutations", s["mutations"])
    for key in ("uncaught_exceptions", "bad_outputs", "flash_writes_checked", "stray_writes",
                "protect_errors", "active_slot_changed", "hung", "armed_unverified",
                "false_completions", "recovery_failed", "unbootable"):  # fmt: skip
        print(f"  {key.replace('_', ' '):28} {s[key]}")
    _counts("session outcomes", s["outcomes"])
    _problems(s["problems"])


def _secure(s: dict[str, Any]) -> None:
    print(f"\nSECURE LAYER FUZZING  {s['records']} tampered records in {s['sessions']} "
          f"sessions ({s['to_device_endpoint']} to SecureEndpoint.receive, "
          f"{s['to_host_channel']} to SecureChannel.open, {s['msg2_to_host_initiator']} "
          f"MSG2 to Initiator.receive), {s['seconds']} s")  # fmt: skip
    _counts("mutations", s["mutations"])
    print(f"  exceptions {s['exceptions']}, bodies returned for tampered input "
          f"{s['tampered_bodies_returned']}, genuine records opened "
          f"{s['genuine_opened']}/{s['genuine_sent']}")  # fmt: skip
    _counts("device drops", s["device_stats"], nonzero=True)
    _counts("host drops", s["host_drops"], nonzero=True)
    print(
        "  a replayed old MSG1 between MSG2 and the first sealed frame displaces the "
        f"pending handshake: {s['observation_pending_handshake_displaced_by_replayed_msg1']}"
    )
    _problems(s["problems"])


def _hostile(s: dict[str, Any]) -> None:
    print(f"\nHOSTILE ARTIFACTS  {s['cases']} cases, {s['failed']} failed, {s['seconds']} s")
    rows = [[r["case"], r["expected"], r["offline"], r["link device"], r["link precheck"],
             r["stray"], "ok" if r["ok"] else "FAIL"] for r in s["rows"]]  # fmt: skip
    print(_table(["case", "expected", "offline", "link (device)", "link (precheck)",
                  "stray", ""], rows))  # fmt: skip
    for r in s["rows"]:
        if r.get("stopped by"):
            print(f"  {r['case']}: stopped by {r['stopped by']}")
        for p in r["problems"]:
            print(f"  ! {r['case']}: {p}")


def _checkin(s: dict[str, Any]) -> None:
    legs = ", ".join(f"{k} {v}" for k, v in s["legs"].items())
    print(f"\nCHECK-IN CUTS  {s['cuts']} cuts ({legs})")
    print(f"  bricks {s['bricks']}, confirmed without a check-in {s['confirmed_without_checkin']}, "
          f"failed {s['failed']}; confirm leg: {s['confirm_outcomes']}")  # fmt: skip
    for row in s["problems"][:5]:
        print(f"  {row['leg']} cut {row['index']}: {'; '.join(row['problems'])}")


def _dos(s: dict[str, Any]) -> None:
    f, r, lp = s["flood"], s["replay"], s["loop"]
    print(f"\nHANDSHAKE DOS  {f['msg1s']} forged MSG1s over {f['seconds']:g} s: "
          f"{f['handshakes_tried']} handshakes tried (<= {f['x25519_at_most']} X25519, was "
          f"{f['x25519_before']}), {f['rate_limited']} rate limited; bytes out / in "
          f"{f['out_per_in']}")  # fmt: skip
    print(f"  {r['injections']} recorded MSG1s right after MSG2: {r['answered']} answered, "
          f"the genuine channel opened: {r['genuine_opened']}")  # fmt: skip
    print(f"  device loop, {lp['msg1s']} fresh MSG1s after its first handshake: bytes out / in "
          f"{lp['out_per_in']}")  # fmt: skip


def _boot(s: dict[str, Any]) -> None:
    print(f"\nDAMAGED FLASH AT BOOT  {s['cases']} cases, {s['failed']} failed, {s['seconds']} s")
    rows = [[r["case"], r["expected"], r["booted"], "ok" if r["ok"] else "FAIL"]
            for r in s["rows"]]  # fmt: skip
    print(_table(["case", "must boot", "booted", ""], rows))


SECTIONS = {
    "powercut": _powercut,
    "checkin": _checkin,
    "fuzz": _fuzz,
    "secure": _secure,
    "dos": _dos,
    "hostile": _hostile,
    "boot": _boot,
}


def print_report(results: dict[str, Any]) -> None:
    for name, section in SECTIONS.items():
        if name in results:
            section(results[name])
    print()
    for name, ok in results["verdict"].items():
        print(f"{name:10} {'PASS' if ok else 'FAIL'}")
