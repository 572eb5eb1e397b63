"""Ed25519 keys: RFC 8032 known answers, PEM round trips, key files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from otaferry.protocol.errors import KeyFileError, Reason, SignatureError
from otaferry.protocol.keys import (
    SigningKey,
    VerifyKey,
    key_id,
    load_signing_key,
    load_verify_key,
    write_keypair,
)

VECTORS = Path(__file__).parent / "vectors"

# RFC 8032 section 7.1: (name, secret key, public key, message, signature), hex.
RFC8032 = [
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        "@rfc8032_test1024_message.hex",
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
        "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


def _message(spec: str) -> bytes:
    if spec.startswith("@"):
        spec = (VECTORS / spec[1:]).read_text()
    return bytes.fromhex("".join(spec.split()))


@pytest.mark.parametrize(("name", "sk", "pk", "msg", "sig"), RFC8032, ids=[v[0] for v in RFC8032])
def test_rfc8032_vectors(name: str, sk: str, pk: str, msg: str, sig: str) -> None:
    message = _message(msg)
    key = SigningKey.from_seed(bytes.fromhex(sk))
    assert key.public.raw.hex() == pk
    assert key.sign(message).hex() == sig
    verify = VerifyKey.from_raw(bytes.fromhex(pk))
    verify.verify(bytes.fromhex(sig), message)  # does not raise
    assert verify.key_id == hashlib.sha256(bytes.fromhex(pk)).digest()[:8]


def test_rfc8032_sha_abc_message_is_sha512_of_abc() -> None:
    assert _message(RFC8032[4][3]) == hashlib.sha512(b"abc").digest()
    assert len(_message(RFC8032[3][3])) == 1023


@pytest.mark.parametrize("where", ["sig", "msg"])
def test_verify_rejects_tampering(where: str) -> None:
    _, _, pk, msg, sig = RFC8032[2]
    message, signature = bytearray(_message(msg)), bytearray.fromhex(sig)
    if where == "sig":
        signature[10] ^= 0x04
    else:
        message[0] ^= 0x01
    with pytest.raises(SignatureError) as info:
        VerifyKey.from_raw(bytes.fromhex(pk)).verify(bytes(signature), bytes(message))
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_verify_rejects_wrong_length_signature() -> None:
    key = SigningKey.from_seed(bytes(32))
    with pytest.raises(SignatureError) as info:
        key.public.verify(key.sign(b"x")[:63], b"x")
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_key_id_is_sha256_prefix() -> None:
    raw = bytes.fromhex(RFC8032[0][2])
    assert key_id(raw).hex() == hashlib.sha256(raw).hexdigest()[:16]
    with pytest.raises(KeyFileError):
        key_id(raw[:31])


def test_pem_round_trip() -> None:
    key = SigningKey.generate()
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = SigningKey.from_pem(pem)
    assert again.public == key.public
    assert again.sign(b"m") == key.sign(b"m")  # Ed25519 is deterministic
    pub_pem = key.public.to_pem()
    assert pub_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert VerifyKey.from_pem(pub_pem) == key.public
    assert hash(VerifyKey.from_pem(pub_pem)) == hash(key.public)
    assert SigningKey.from_seed(key.seed()).public == key.public


def test_repr_never_shows_secret() -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(key)
    assert key.public.key_id.hex() in repr(key)


@pytest.mark.parametrize(
    "bad",
    [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_bad_pem_is_bad_key(bad: bytes) -> None:
    for parse in (SigningKey.from_pem, VerifyKey.from_pem):
        with pytest.raises(KeyFileError) as info:
            parse(bad)
        assert info.value.reason is Reason.BAD_KEY


def test_non_ed25519_pem_is_bad_key() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    priv = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFileError, match="not Ed25519"):
        SigningKey.from_pem(priv)
    with pytest.raises(KeyFileError, match="not Ed25519"):
        VerifyKey.from_pem(pub)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_wrong_size_raw_keys(size: int) -> None:
    with pytest.raises(KeyFileError):
        SigningKey.from_seed(bytes(size))
    with pytest.raises(KeyFileError):
        VerifyKey.from_raw(bytes(size))


def test_write_and_load_keypair(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    key = write_keypair(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_signing_key(path).public == key.public
    assert load_verify_key(str(path) + ".pub") == key.public
    assert load_verify_key(path) == key.public  # derived from the private key
    # Refuses to overwrite either file, and leaves them untouched.
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        write_keypair(path)
    assert path.read_bytes() == before
    lone = tmp_path / "other.key"
    Path(str(lone) + ".pub").write_bytes(b"x")
    with pytest.raises(KeyFileError, match="already exists"):
        write_keypair(lone)
    assert not lone.exists()


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(KeyFileError, match=r"missing\.key") as info:
        load_signing_key(missing)
    assert info.value.reason is Reason.BAD_KEY
    junk = tmp_path / "junk.pub"
    junk.write_bytes(b"hello")
    for load in (load_signing_key, load_verify_key):
        with pytest.raises(KeyFileError, match=r"junk\.pub") as info:
            load(junk)
        assert info.value.reason is Reason.BAD_KEY
    # A public key file is not a signing key.
    path = tmp_path / "k"
    write_keypair(path)
    with pytest.raises(KeyFileError, match=r"k\.pub"):
        load_signing_key(str(path) + ".pub")
