"""The gateway's side of the secure-link handshake as a sans-IO machine.

:class:`Handshake` wraps an :class:`~otaferry.protocol.secure.Initiator`: it
hands out MSG1 (:meth:`datagrams_to_send`), takes every packet the link
delivers (:meth:`receive`), exposes one deadline (:meth:`get_timer`) and
resends MSG1 when it passes (:meth:`handle_timer`), doubling the timeout, up to
``retries`` times. It ends with :attr:`channel` set, or :attr:`error` set (the
device's REJECT as a :class:`RemoteError`, or a :class:`TimeoutError_`).

The first timeout comes from the medium (:func:`handshake_rto`): one round trip
of MSG1 and MSG2 at its line rate or air time plus its turnaround, with a
margin, so a LoRa link is not flooded with MSG1s a UART would need.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import DecodeError, OtaferryError, ProtocolError, Reason, RemoteError, TimeoutError_
from .pacing import Pacing
from .secure import MSG1_SIZE, MSG2_SIZE, Initiator, RecordKind, SecureChannel, record_kind

__all__ = ["Handshake", "handshake_rto"]

MIN_RTO = 0.5  # a device computing two X25519 operations in software needs some


def handshake_rto(pacing: Pacing, *, margin: float = 3.0, floor: float = MIN_RTO) -> float:
    """A first handshake timeout for a medium: ``margin`` round trips of MSG1 + MSG2."""
    trip = pacing.rtt_floor
    if pacing.line_rate:
        trip += (MSG1_SIZE + MSG2_SIZE + 16) / pacing.line_rate
    airtime: Callable[[int], float] | None = getattr(pacing, "airtime", None)
    if airtime is not None:
        trip += airtime(MSG1_SIZE) + airtime(MSG2_SIZE)
    return max(floor, margin * trip)


class Handshake:
    """One handshake attempt series; see the module docstring."""

    def __init__(
        self,
        initiator: Initiator,
        *,
        rto: float,
        retries: int,
        max_rto: float = 60.0,
        keys: tuple[str, str] | None = None,
    ) -> None:
        """``keys``: (this gateway's key id, the expected device key id), hex, to
        name in errors."""
        self._keys = keys
        if rto <= 0 or retries < 0:
            raise ValueError("rto must be > 0 and retries >= 0")
        self._initiator = initiator
        self._msg1 = initiator.start()
        self._rto = rto
        self._max_rto = max_rto
        self._retries = retries
        self.attempts = 0
        self._due = True  # MSG1 to send now
        self._deadline: float | None = None
        self.channel: SecureChannel | None = None
        self.error: OtaferryError | None = None
        self.dropped = 0
        self.auth_failures = 0  # MSG2s that did not authenticate (dropped)
        self._auth_error: ProtocolError | None = None

    @property
    def done(self) -> bool:
        return self.channel is not None or self.error is not None

    def datagrams_to_send(self, now: float) -> list[bytes]:
        if self.done or not self._due:
            return []
        self._due = False
        self.attempts += 1
        self._deadline = now + self._rto
        return [self._msg1]

    def departed(self, now: float) -> None:
        """MSG1 left at ``now`` (after waiting for the medium): time from there."""
        if not self.done and self._deadline is not None:
            self._deadline = now + self._rto

    def get_timer(self) -> float | None:
        return None if self.done else self._deadline

    def handle_timer(self, now: float) -> None:
        if self.done or self._deadline is None or now < self._deadline:
            return
        if self.attempts > self._retries and self._auth_error is not None:
            key = self._auth_error.fields.get("device_key", "?")
            self.error = ProtocolError(
                f"the device answered, but not with the key expected ({key}): is the device "
                "public key given (--device-pub) the one of the device on this port? "
                "(otaferry device provision --flash F --out DEV.pub prints it)",
                Reason.BAD_KEY,
                device_key=key,
            )
            return
        if self.attempts > self._retries:
            self.error = TimeoutError_(
                f"no handshake answer after {self.attempts} tries "
                f"(last timeout {self._rto:.2f} s): is the device there, and does it "
                "know this gateway's key?"
            )
            return
        self._rto = min(self._rto * 2, self._max_rto)
        self._due = True

    def _explain(self, exc: RemoteError) -> RemoteError:
        """The device's REJECT, said so that a person knows which key to fix."""
        gateway, device = self._keys or ("?", "?")
        if exc.reason == Reason.BAD_SIGNATURE:
            return RemoteError(
                f"the device refused the handshake: it does not hold the device key {device} "
                "this gateway expects (--device-pub: use the key 'otaferry device provision "
                f"--out' writes), or does not accept this gateway's key {gateway} "
                "('device provision --gateway-pub')",
                Reason.BAD_KEY,
                device_key=device,
                gateway_key=gateway,
            )
        if exc.reason == Reason.BAD_KEY:
            return RemoteError(
                f"the device does not accept this gateway's key {gateway}: add it with "
                "'otaferry device provision --flash F --gateway-pub GW.pub'",
                Reason.BAD_KEY,
                gateway_key=gateway,
            )
        return exc

    def receive(self, packet: bytes, now: float) -> None:
        """A packet from the link: MSG2 completes; a REJECT other than BAD_STATE
        ends with the device's reason; a MSG2 that does not authenticate (a stale
        one from an earlier handshake, or a device holding another key) is
        dropped and remembered, so a timeout can say which key was not
        accepted; anything else is not ours and is dropped."""
        if self.done:
            return
        kind = record_kind(packet)
        try:
            if kind is RecordKind.MSG2:
                try:
                    self.channel = self._initiator.receive(packet, final=False)
                except (DecodeError, ProtocolError) as exc:
                    if isinstance(exc, RemoteError):
                        raise
                    self.auth_failures += 1
                    self._auth_error = exc
                    self.dropped += 1
                return
            if kind is RecordKind.REJECT and packet[1:2] != bytes([Reason.BAD_STATE]):
                self._initiator.receive(packet)  # raises RemoteError with the reason
        except RemoteError as exc:
            self.error = self._explain(exc)
            return
        except OtaferryError as exc:  # a MSG2 that fails for good
            self.error = exc
            return
        self.dropped += 1
