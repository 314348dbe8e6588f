"""Errors of the fleet simulator. Each says what to fix; none is raised from a message loop."""

from __future__ import annotations


class SimError(Exception):
    """Base of every simulator error."""


class ProfileError(SimError, ValueError):
    """A `--profile` or fault option cannot be parsed (the message names the bad part)."""


class EnrolmentError(SimError):
    """Agents could not be enrolled: the hub refused, was unreachable, or a bundle file is invalid."""


class TransportError(SimError):
    """The simulator's MQTT transport could not start (bad broker URL, too few file descriptors)."""
