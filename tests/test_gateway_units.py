"""The gateway's parts without a broker: config errors, the job store, the artifact cache,
the topic scheme and the AWS IoT Jobs mapping."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from otaferry.protocol.artifact import build_full
from otaferry.protocol.errors import Reason
from otaferry.protocol.keys import SigningKey, write_keypair
from otaferry.protocol.x25519keys import write_link_keypair
from otaferry.tools.sample_fw import make_image
from otaferry.transport.gateway.artifacts import ArtifactCache, encode_chunks
from otaferry.transport.gateway.config import ConfigError, load_config
from otaferry.transport.gateway.service import aws_state
from otaferry.transport.gateway.store import JobStore
from otaferry.transport.gateway.topics import Topics, valid_job_id

OTAFERRY = str(Path(sys.executable).with_name("otaferry"))
KEY = SigningKey.from_seed(hashlib.sha256(b"gateway units").digest())


def _config(tmp_path: Path, body: str) -> Path:
    write_keypair(tmp_path / "vendor.key")
    write_link_keypair(tmp_path / "gw.key")
    write_link_keypair(tmp_path / "dev.key")
    path = tmp_path / "gateway.toml"
    path.write_text(body)
    return path


GOOD = """
gateway_id = "site-1"
link_key = "gw.key"
trusted_keys = ["vendor.key.pub"]
[broker]
url = "mqtt://user:pw@127.0.0.1:1884"
[[links]]
name = "uart0"
port = "/dev/ttyUSB0"
baud = 921600
[[links.devices]]
id = "00112233445566AA"
public_key = "dev.key.pub"
"""


LORA = """
[[links]]
kind = "lora"
modem = "rak3172"
port = "/dev/ttyUSB1"
region = "US915"
sf = 9
bw = 500
cr = 6
[[links.devices]]
id = "00112233445566bb"
public_key = "dev.key.pub"
address = 7
"""


def test_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, GOOD))
    assert cfg.broker.host == "127.0.0.1" and cfg.broker.port == 1884 and not cfg.broker.tls
    assert (cfg.broker.username, cfg.broker.password) == ("user", "pw")
    assert cfg.links[0].devices[0].id == "00112233445566aa"
    assert cfg.cache_dir == tmp_path / "cache" and cfg.job_store == tmp_path / "jobs.sqlite"
    assert cfg.device("00112233445566aa") is not None
    (tmp_path / "lora").mkdir()
    lora = load_config(_config(tmp_path / "lora", GOOD + LORA)).links[1]
    assert (lora.kind, lora.modem, lora.region, lora.sf, lora.bw, lora.cr) == (
        "lora", "rak3172", "US915", 9, 500, 6)  # fmt: skip
    assert lora.devices[0].address == 7 and lora.concurrency == 4


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda s: s.replace('url = "mqtt://user:pw@127.0.0.1:1884"\n', ""), "broker.url"),
        (lambda s: s.replace("mqtt://", "http://"), "broker.url"),
        (lambda s: s.replace('"00112233445566AA"', '"xyz"'), "links[0].devices[0].id"),
        (lambda s: s.replace("baud = 921600", "baud = 0"), "links[0].baud"),
        (lambda s: s.replace("baud = 921600", "baud = 921600\nbogus = 1"), "links[0].bogus"),
        (lambda s: s.replace('"dev.key.pub"', '"missing.pub"'), "links[0].devices[0].public_key"),
        (lambda s: s.replace("[broker]", '[broker]\ncert = "gw.key.pub"'), "broker.key"),
        (lambda s: s.replace('["vendor.key.pub"]', "[]"), "trusted_keys"),
        (lambda s: s.replace('gateway_id = "site-1"', 'gateway_id = "a/b"'), "gateway_id"),
        (lambda s: s + "[[\n", "(syntax)"),
        (lambda s: s + LORA.replace("US915", "MARS"), "links[1].region"),
        (lambda s: s + LORA.replace("bw = 500", "bw = 200"), "links[1].bw"),
        (lambda s: s + LORA.replace("US915", "EU868"), "links[1].bw"),  # no 500 kHz in EU868
        (lambda s: s + LORA.replace("cr = 6", "cr = 9"), "links[1].cr"),
        (lambda s: s + LORA.replace('"rak3172"', '"sx1276"'), "links[1].modem"),
    ],
)
def test_config_error_names_the_key(tmp_path: Path, edit, key: str) -> None:  # type: ignore[no-untyped-def]
    path = _config(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key


def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    path = _config(tmp_path, GOOD.replace("baud = 921600", 'baud = "fast"'))
    proc = subprocess.run([OTAFERRY, "gateway", "--config", str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("otaferry: error[MALFORMED]: config: links[0].baud")


def test_store_accepts_a_job_once_and_never_reopens_a_finished_one(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    assert store.add_job("j1", {"op": "update"}, ["aa", "bb"])
    assert not store.add_job("j1", {"op": "update"}, ["aa", "bb", "cc"])  # redelivered
    assert [e.device for e in store.executions("j1")] == ["aa", "bb"]
    assert store.update("j1", "aa", "transferring", confirmed=10, total=100)
    assert store.update("j1", "aa", "done")
    assert not store.update("j1", "aa", "transferring")  # finished stays finished
    store.close()
    again = JobStore(tmp_path / "jobs.sqlite")  # a restart: the open one is still there
    assert [(e.device, e.phase) for e in again.open_executions()] == [("bb", "queued")]
    assert again.get("j1", "aa").phase == "done"  # type: ignore[union-attr]
    assert again.queue_depth() == 1


def test_status_numbers_continue_above_every_one_handed_out(tmp_path: Path) -> None:
    """A process killed at any moment (no close) never let out a number the next reuses."""
    path = tmp_path / "jobs.sqlite"
    highest = 0
    for run in range(4):
        store = JobStore(path)
        seqs = [store.next_seq("dev") for _ in range(10 + 50 * run)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert seqs[0] > highest
        highest = seqs[-1]
        del store  # no close: as after SIGKILL


def _artifact(key: SigningKey = KEY) -> bytes:
    image = make_image("2.0.0", code_size=70_000, revision=2)
    return build_full(image, key, hw=["hw"], chip="esp32", version="2.0.0", security_counter=1)


def test_artifact_arrives_in_chunks_in_any_order(tmp_path: Path) -> None:
    ota = _artifact()
    sha, chunks = encode_chunks(ota, chunk_size=8192)
    assert len(chunks) > 3 and max(len(c) for c in chunks) < 12_000
    cache = ArtifactCache(tmp_path, [KEY.public])
    states = [cache.chunk(sha, c).state for c in [*chunks[::-1][:-1], chunks[1], chunks[0]]]
    assert states[-1] == "accepted" and set(states[:-1]) == {"receiving"}
    assert cache.path(sha).read_bytes() == ota
    assert cache.get(sha).manifest.version == "2.0.0"


def test_artifact_survives_a_restart_mid_upload(tmp_path: Path) -> None:
    ota = _artifact()
    sha, chunks = encode_chunks(ota, chunk_size=8192)
    ArtifactCache(tmp_path, [KEY.public]).chunk(sha, chunks[0])
    cache = ArtifactCache(tmp_path, [KEY.public])  # a new process
    results = [cache.chunk(sha, c) for c in chunks[1:]]
    assert results[-1].state == "accepted"


@pytest.mark.parametrize("case", ["untrusted key", "bad signature", "wrong hash"])
def test_an_artifact_that_fails_its_check_is_never_cached(tmp_path: Path, case: str) -> None:
    other = SigningKey.from_seed(hashlib.sha256(b"someone else").digest())
    ota = _artifact(other if case == "untrusted key" else KEY)
    if case == "bad signature":
        i = ota.index(b"OTAF") + 10 + int.from_bytes(ota[6:10], "little") + 5
        ota = ota[:i] + bytes([ota[i] ^ 1]) + ota[i + 1 :]
    sha, chunks = encode_chunks(ota)
    if case == "wrong hash":
        sha = hashlib.sha256(b"not it").hexdigest()
    cache = ArtifactCache(tmp_path, [KEY.public])
    result = [cache.chunk(sha, c) for c in chunks][-1]
    assert result.state == "rejected"
    expected = {"untrusted key": Reason.UNKNOWN_KEY, "bad signature": Reason.BAD_SIGNATURE,
                "wrong hash": Reason.IMAGE_HASH_MISMATCH}[case]  # fmt: skip
    assert result.reason == expected
    assert not cache.has(sha) and not list(tmp_path.glob("*.part"))


def test_a_chunk_that_is_not_one_is_refused(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, [KEY.public])
    bad = json.dumps({"index": 5, "count": 2, "size": 10, "data": ""}).encode()
    with pytest.raises(Exception) as info:
        cache.chunk("ab" * 32, bad)
    assert getattr(info.value, "reason", None) == Reason.MALFORMED


def test_topics_and_job_ids() -> None:
    t = Topics("otaferry", "site-7")
    assert t.parse(t.job("j-1")) == ("job", "j-1")
    assert t.parse(t.chunk("ab" * 32, 3)) == ("chunk", "ab" * 32)
    assert t.parse("otaferry/site-8/jobs/j-1") is None
    assert t.parse(t.device_state("aa")) is None  # the gateway's own output is not input
    assert valid_job_id("fw-2026.1:rollout_3") and not valid_job_id("a/b") and not valid_job_id("")


@pytest.mark.parametrize(
    ("phase", "reason", "aws"),
    [
        ("queued", None, "QUEUED"),
        ("transferring", None, "IN_PROGRESS"),
        ("rebooting", None, "IN_PROGRESS"),
        ("checking_in", None, "IN_PROGRESS"),
        ("done", None, "SUCCEEDED"),
        ("failed", "TIMEOUT", "TIMED_OUT"),
        ("failed", "WRONG_HW", "REJECTED"),
        ("failed", "PREVIOUSLY_FAILED", "REJECTED"),
        ("failed", "IO_ERROR", "FAILED"),
        ("rolled_back", "SELF_TEST_FAILED", "FAILED"),
        ("cancelled", None, "CANCELED"),
    ],
)
def test_aws_iot_jobs_mapping(phase: str, reason: str | None, aws: str) -> None:
    assert aws_state(phase, reason) == aws


def test_store_retry_queues_a_new_attempt_once_and_migrates_old_stores(tmp_path: Path) -> None:
    import sqlite3

    old = tmp_path / "old.sqlite"  # a store from before the retry policy: no attempt column
    db = sqlite3.connect(str(old))
    db.executescript(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, request TEXT NOT NULL, received REAL);"
        "CREATE TABLE executions (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT, "
        "device TEXT, phase TEXT, reason TEXT, message TEXT, confirmed INTEGER DEFAULT 0, "
        "total INTEGER DEFAULT 0, running_version TEXT, started REAL, finished REAL, "
        "UNIQUE (job_id, device));"
        "INSERT INTO jobs VALUES ('j0', '{}', 0);"
        "INSERT INTO executions (job_id, device, phase) VALUES ('j0', 'aa', 'transferring');"
    )
    db.commit()
    db.close()
    store = JobStore(old)
    ex = store.get("j0", "aa")
    assert ex is not None and (ex.attempt, ex.retry_at) == (0, None)
    assert store.retry("j0", "aa", 1, 123.0, "TIMEOUT", "attempt 2 of 3")
    assert not store.retry("j0", "aa", 1, 456.0, "TIMEOUT", "again")  # that attempt exists
    ex = store.get("j0", "aa")
    assert ex is not None
    assert (ex.phase, ex.attempt, ex.retry_at, ex.reason) == ("queued", 1, 123.0, "TIMEOUT")
    assert store.update("j0", "aa", "failed", reason="TIMEOUT")
    assert not store.retry("j0", "aa", 2, 789.0, "TIMEOUT", "too late")  # finished stays so
    store.close()


def test_retry_policy_config_and_backoff(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, GOOD.replace(
        "[broker]", "retries = 5\n[retry]\ntimed_out = 3\nbackoff = 10\nmax_backoff = 25\n"
        "[broker]")))  # fmt: skip
    assert cfg.retries == 5 and cfg.retry.timed_out == 3
    assert [cfg.retry.delay(n) for n in (1, 2, 3)] == [10.0, 20.0, 25.0]
    (tmp_path / "b").mkdir()
    assert load_config(_config(tmp_path / "b", GOOD)).retry.timed_out == 0  # none by default
    (tmp_path / "c").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path / "c", GOOD.replace("[broker]",
                                                         "[retry]\ntimed_out = 11\n[broker]")))
    assert info.value.key == "retry.timed_out"
