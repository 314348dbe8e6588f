"""Socket options the hub and the agent set on their network links (stdlib only)."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)


def bound_unacked_bytes(sock: socket.socket | None, timeout_s: float) -> None:
    """Set TCP_USER_TIMEOUT on `sock`: bytes unacknowledged for `timeout_s` close the connection (0: leave it).

    A partition that drops packets resets nothing: a publish (or PINGREQ) sent into it is retransmitted with
    exponential backoff, and after the network heals the connection resumes only at the next retransmission
    (an agent's telemetry: 5.8-10.4 s after a 40 s partition ended, 0.2-1.2 s with 15 s set; docs/agent.md).
    With the bound the dead socket fails, the client reconnects with its own backoff, and what was not
    acknowledged is sent again (QoS 1). Where the platform lacks the option (not Linux), the kernel's behaviour
    stays.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or timeout_s <= 0 or option is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(timeout_s * 1000))
    except OSError as e:  # not a TCP socket (a Unix socket, a proxy's): the link works as before
        log.debug("TCP_USER_TIMEOUT not set: %s", e)
