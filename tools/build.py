"""``otaferry build``: pick manifest values (flags over ESP image defaults) and build."""

from __future__ import annotations

import argparse
import hashlib

from ..protocol.artifact import build_delta, build_full
from ..protocol.errors import OtaferryError, Reason
from ..protocol.espimage import parse_esp_image
from ..protocol.keys import load_signing_key
from ..protocol.payload import DEFAULT_SEGMENT_SIZE
from .files import read_file, write_file


def build_from_args(args: argparse.Namespace) -> str:
    key = load_signing_key(args.key)
    image = read_file(args.image)
    esp = parse_esp_image(image)

    chip = args.chip or (esp.chip if esp else None)
    version = args.fw_version or (esp.version if esp and esp.version else None)
    project = args.project or (esp.project if esp and esp.project else None)
    counter = args.security_counter
    if counter is None:
        counter = esp.secure_version if esp and esp.secure_version is not None else 0
    missing = [
        flag
        for flag, value in (("--hw", args.hw), ("--chip", chip), ("--version", version))
        if not value
    ]
    if missing:
        raise OtaferryError(
            f"{', '.join(missing)} required: {args.image} carries no ESP-IDF app "
            "description (esp_app_desc_t) to take it from",
            Reason.MALFORMED,
        )
    segment_size = args.segment_size or DEFAULT_SEGMENT_SIZE
    common = dict(hw=args.hw, chip=chip, version=version, security_counter=counter, project=project)
    if args.base:
        base = read_file(args.base)
        data = build_delta(base, image, key, segment_size=args.segment_size, **common)
        kind = f"delta against {args.base} (sha256 {hashlib.sha256(base).hexdigest()[:16]}…)"
    else:
        data = build_full(image, key, segment_size=segment_size, level=args.level, **common)
        kind = "full image"
    write_file(args.output, data)
    return (
        f"wrote {args.output}: {len(data)} bytes, {kind}, {len(image)}-byte image "
        f"({100 * len(data) / max(1, len(image)):.1f} %), version {version}, chip {chip}, "
        f"hw {','.join(args.hw)}, security counter {counter}"
    )
