

def test_bench_delta_reads_a_pairs_file_and_writes_json(tmp_path: Path) -> None:
    import json

    from otaferry.tools.bench import delta as bench
    from paths import FIRMWARE

    pairs = tmp_path / "pairs.txt"
    prog = FIRMWARE / "programmer-cortex-m4"
    pairs.write_text(f"# a comment\n{prog / '0.8.0.bin'} {prog / '0.9.0.bin'}\n\n")
    out = tmp_path / "out.json"
    assert bench.main(["--pairs", str(pairs), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["pairs"]
    for k in ("old", "new", "payload_bytes", "ota_bytes", "device_ram_bytes", "applied_ok",
              *bench.BASELINES):  # fmt: skip
        assert k in row, k
    assert row["applied_ok"] and row["installable"]
    assert row["device_ram_measured_bytes"] <= row["device_ram_bytes"] <= 65536
    assert doc["total"]["best_peer_bytes"] == min(row[k] for k in bench.BASELINES)
