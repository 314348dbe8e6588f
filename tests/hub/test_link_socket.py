"""The hub's MQTT link bounds how long sent bytes may stay unacknowledged (TCP_USER_TIMEOUT), as the agent's
link does: across a network that drops packets, a dead socket is closed and the link reconnects instead of
waiting for TCP's backed-off retransmissions (docs/agent.md has the measured figures)."""

from __future__ import annotations

import socket

from hub.mqtt import TCP_USER_TIMEOUT_S
from tests.support.hub import RunningHub


def test_the_hubs_link_socket_bounds_unacknowledged_bytes(running_hub: RunningHub) -> None:
    link = running_hub.hub.link
    assert link is not None and link.connected
    sock = link._client.socket()
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(TCP_USER_TIMEOUT_S * 1000)
