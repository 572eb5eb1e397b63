"""``otaferry build``: pick manifest values (flags over ESP image defaults) and build.

:func:`image_facts` is shared with ``flash init``, so a device made from an
image and an artifact built from the same image agree on chip, version and
security counter.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from typing import Any

from ..protocol.artifact import build_delta, build_full
from ..protocol.errors import OtaferryError, Reason
from ..protocol.espimage import EspImageInfo, parse_esp_image
from ..protocol.keys import SigningKey, load_signing_key
from ..protocol.payload import DEFAULT_SEGMENT_SIZE
from .args import UsageError, warn
from .files import read_file, write_file


@dataclass(frozen=True)
class ImageFacts:
    """Chip, version, project and security counter: the flags, else the image's own."""

    chip: str | None
    version: str | None
    project: str | None
    security_counter: int
    esp: EspImageInfo | None


def _why_no_version(path: str, esp: EspImageInfo | None) -> str:
    if esp is None:
        return f"{path} is not an ESP app image, so it names no version"
    if esp.family == "esp8266":
        return f"{path} is an ESP8266 image, whose format has no version field"
    if esp.secure_version is None:
        return f"{path} carries no ESP-IDF app description (esp_app_desc_t) to take it from"
    return f"the app description in {path} has an empty version string"


def image_facts(
    image: bytes,
    path: str,
    *,
    chip: str | None,
    version: str | None,
    project: str | None = None,
    security_counter: int | None = None,
    force: bool = False,
) -> ImageFacts:
    """Fill what the flags leave out from an ESP image header and app description.

    A ``chip`` that contradicts the image's header is refused (WRONG_CHIP)
    unless ``force``: a device of the named chip would accept an image that
    cannot run on it. A ``version`` or ``security_counter`` that differs from
    the app description is allowed (re-versioning is legitimate) with a
    warning, since the manifest then disagrees with what the app reports.
    """
    esp = parse_esp_image(image)
    if esp is not None and chip and chip != esp.chip:
        what = f"--chip {chip} contradicts {path}, whose header says {esp.chip}"
        if not force:
            raise OtaferryError(f"{what}; give --force to use {chip} anyway", Reason.WRONG_CHIP)
        warn(f"{what}; using {chip} (--force)")
    if esp is not None and version and esp.version and version != esp.version:
        warn(f"--version {version} differs from {path}'s app description ({esp.version})")
    if (
        esp is not None
        and security_counter is not None
        and esp.secure_version is not None
        and security_counter != esp.secure_version
    ):
        warn(
            f"--security-counter {security_counter} differs from {path}'s secure_version "
            f"({esp.secure_version})"
        )
    counter = security_counter
    if counter is None:
        counter = esp.secure_version if esp and esp.secure_version is not None else 0
    return ImageFacts(
        chip=chip or (esp.chip if esp else None),
        version=version or (esp.version if esp else None),
        project=project or (esp.project if esp else None),
        security_counter=counter,
        esp=esp,
    )


def _compare_with_full(
    delta: bytes, image: bytes, key: SigningKey, level: int | None, common: dict[str, Any]
) -> None:
    """Warn when the delta is not smaller than the full image, compressed and
    signed the default way: sending the full artifact is then cheaper (a
    gateway given both, ``push A.ota B.ota``, sends the smaller)."""
    full = build_full(image, key, level=level, **common)
    if len(delta) >= len(full):
        warn(
            f"the delta ({len(delta)} bytes) is not smaller than the full image "
            f"({len(full)} bytes as a zstd artifact): build the full image too and offer both, "
            "the sender picks the smaller"
        )


def build_from_args(args: argparse.Namespace) -> str:
    key = load_signing_key(args.key)
    image = read_file(args.image)
    facts = image_facts(
        image,
        args.image,
        chip=args.chip,
        version=args.fw_version,
        project=args.project,
        security_counter=args.security_counter,
        force=args.force,
    )
    missing: list[str] = []
    why: list[str] = []
    if not args.hw:
        missing.append("--hw")
        why.append("hardware ids are never in a firmware image")
    if not facts.chip:
        missing.append("--chip")
        why.append(f"{args.image} is not an ESP app image, so its chip is not known")
    if not facts.version:
        missing.append("--version")
        why.append(_why_no_version(args.image, facts.esp))
    if missing:
        raise OtaferryError(f"{' and '.join(missing)} required: {'; '.join(why)}", Reason.MALFORMED)
    assert facts.chip and facts.version  # for mypy: checked just above
    common: dict[str, Any] = dict(
        hw=args.hw,
        chip=facts.chip,
        version=facts.version,
        security_counter=facts.security_counter,
        project=facts.project,
    )
    codec = getattr(args, "codec", "zstd")
    level = getattr(args, "level", None)
    if codec == "deflate" and level is not None and level > 9:
        raise UsageError(f"--level {level}: deflate levels are 1..9")
    delta_codecs = getattr(args, "delta_codecs", None)
    if delta_codecs and not args.base:
        raise UsageError("--delta-codecs needs --base: a full image has no delta codec")
    if args.base and codec != "zstd":
        raise UsageError("--codec names a full-image codec; a delta (--base) has its own")
    if args.base:
        base = read_file(args.base)
        data = build_delta(
            base,
            image,
            key,
            segment_size=args.segment_size,
            device_ram=args.device_ram,
            codecs=delta_codecs.split(",") if delta_codecs else None,
            **common,
        )
        kind = f"delta against {args.base} (sha256 {hashlib.sha256(base).hexdigest()[:16]}…)"
        _compare_with_full(data, image, key, level, common)
    else:
        segment_size = args.segment_size or DEFAULT_SEGMENT_SIZE
        data = build_full(
            image, key, segment_size=segment_size, level=level, codec=codec, **common
        )
        kind = "full image" if codec == "zstd" else f"full image ({codec})"
    write_file(args.output, data)
    return (
        f"wrote {args.output}: {len(data)} bytes, {kind}, {len(image)}-byte image "
        f"({100 * len(data) / max(1, len(image)):.1f} %), version {facts.version}, "
        f"chip {facts.chip}, hw {','.join(args.hw)}, security counter {facts.security_counter}"
    )
