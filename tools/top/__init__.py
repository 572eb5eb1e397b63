"""otaferry: signed, compressed, delta-encoded firmware updates over slow links.

The names an integrator needs, importable from here::

    from otaferry import Artifact, SecureLink, SerialLink, Updater, OtaferryError

- pushing: :class:`Updater` (``push``, ``events``, ``push_best``), :class:`PushOptions`,
  :func:`choose_artifact`; one parsed :class:`Artifact` is shared by any number of pushes;
- links and media: :class:`SerialLink`, :class:`SecureLink`, the :class:`Link` and
  :class:`Hub` contracts, :class:`LinkHub`, :class:`MemoryHub`, :func:`memory_pair`,
  :func:`memory_hub`; pacing budgets :class:`Unlimited`, :class:`LineRate`, :class:`AirTime`;
- events: :class:`DeviceInfo`, :class:`Accepted`, :class:`Progress`, :class:`Completed`
  (and :class:`Rejected` / :class:`Failed`, which the Updater raises as errors); each names
  ``update_id``, ``device_id`` and ``job_id``;
- errors: :class:`OtaferryError` and its tree, every one with a :class:`Reason`;
- keys: :func:`load_link_private_key`, :func:`load_link_public_key` (X25519 link keys),
  :func:`load_signing_key`, :func:`load_verify_key` (Ed25519 artifact keys) and their classes;
- the gateway service: :class:`Gateway` (jobs over MQTT, sessions to many devices), its
  :class:`GatewayConfig` from :func:`load_config` (TOML), and :class:`JobClient` (a submitter).

The layers themselves are ``otaferry.protocol`` (sans-IO), ``otaferry.transport``
(asyncio), ``otaferry.device_fw`` (the device side) and ``otaferry.tools`` (the CLI);
``python -m otaferry`` runs the command line. Names load on first use, so the CLI
and the device side do not pay for asyncio or serial imports they do not need.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("otaferry")
except PackageNotFoundError:  # run from a source tree without an install
    __version__ = "0+unknown"

_WHERE = {
    "Updater": "transport.updater",
    "PushOptions": "transport.updater",
    "choose_artifact": "transport.updater",
    "Artifact": "protocol.shared_artifact",
    "Link": "transport.link",
    "memory_pair": "transport.link",
    "SerialLink": "transport.serial_link",
    "SecureLink": "transport.secure_link",
    "Hub": "transport.hub",
    "LinkHub": "transport.hub",
    "MemoryHub": "transport.hub",
    "PeerLink": "transport.hub",
    "memory_hub": "transport.hub",
    "Pacing": "protocol.pacing",
    "Unlimited": "protocol.pacing",
    "LineRate": "protocol.pacing",
    "AirTime": "protocol.pacing",
    "Event": "protocol.session",
    "DeviceInfo": "protocol.session",
    "Accepted": "protocol.session",
    "Progress": "protocol.session",
    "Completed": "protocol.session",
    "Rejected": "protocol.session",
    "Failed": "protocol.session",
    "HelloInfo": "protocol.frames",
    "Reason": "protocol.errors",
    "OtaferryError": "protocol.errors",
    "ProtocolError": "protocol.errors",
    "RemoteError": "protocol.errors",
    "TransportError": "protocol.errors",
    "ClosedError": "protocol.errors",
    "TimeoutError_": "protocol.errors",
    "SigningKey": "protocol.keys",
    "VerifyKey": "protocol.keys",
    "load_signing_key": "protocol.keys",
    "load_verify_key": "protocol.keys",
    "LinkPrivateKey": "protocol.x25519keys",
    "LinkPublicKey": "protocol.x25519keys",
    "load_link_private_key": "protocol.x25519keys",
    "load_link_public_key": "protocol.x25519keys",
    "Gateway": "transport.gateway",
    "GatewayConfig": "transport.gateway",
    "JobClient": "transport.gateway",
    "load_config": "transport.gateway",
}

__all__ = [
    "Accepted",
    "AirTime",
    "Artifact",
    "ClosedError",
    "Completed",
    "DeviceInfo",
    "Event",
    "Failed",
    "Gateway",
    "GatewayConfig",
    "HelloInfo",
    "Hub",
    "JobClient",
    "LineRate",
    "Link",
    "LinkHub",
    "LinkPrivateKey",
    "LinkPublicKey",
    "MemoryHub",
    "OtaferryError",
    "Pacing",
    "PeerLink",
    "Progress",
    "ProtocolError",
    "PushOptions",
    "Reason",
    "Rejected",
    "RemoteError",
    "SecureLink",
    "SerialLink",
    "SigningKey",
    "TimeoutError_",
    "TransportError",
    "Unlimited",
    "Updater",
    "VerifyKey",
    "__version__",
    "choose_artifact",
    "load_config",
    "load_link_private_key",
    "load_link_public_key",
    "load_signing_key",
    "load_verify_key",
    "memory_hub",
    "memory_pair",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'otaferry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"otaferry.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what type checkers and IDEs see
    from otaferry.protocol.errors import (
        ClosedError,
        OtaferryError,
        ProtocolError,
        Reason,
        RemoteError,
        TimeoutError_,
        TransportError,
    )
    from otaferry.protocol.frames import HelloInfo
    from otaferry.protocol.keys import SigningKey, VerifyKey, load_signing_key, load_verify_key
    from otaferry.protocol.pacing import AirTime, LineRate, Pacing, Unlimited
    from otaferry.protocol.session import (
        Accepted,
        Completed,
        DeviceInfo,
        Event,
        Failed,
        Progress,
        Rejected,
    )
    from otaferry.protocol.shared_artifact import Artifact
    from otaferry.protocol.x25519keys import (
        LinkPrivateKey,
        LinkPublicKey,
        load_link_private_key,
        load_link_public_key,
    )
    from otaferry.transport.gateway import Gateway, GatewayConfig, JobClient, load_config
    from otaferry.transport.hub import Hub, LinkHub, MemoryHub, PeerLink, memory_hub
    from otaferry.transport.link import Link, memory_pair
    from otaferry.transport.secure_link import SecureLink
    from otaferry.transport.serial_link import SerialLink
    from otaferry.transport.updater import PushOptions, Updater, choose_artifact
