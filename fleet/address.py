"""Where a broker listens: the one parser of broker URLs (`mqtt://host:port`, `mqtts://host:port`).

The hub's settings, device bundles, the agent and the simulator all name a broker by URL; each parses it
here, so they accept and refuse the same URLs with the same error.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import InvalidBrokerUrl

SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}
"""URL scheme -> TLS. `tcp` and `ssl` are the spellings paho and EMQX documentation use."""


class BrokerAddress(BaseModel):
    """A broker's host, port and whether to speak TLS (mqtts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1, max_length=255, description="broker host name or address")
    port: int = Field(ge=1, le=65535, description="broker TCP port")
    tls: bool = Field(default=False, description="mqtts: connect with TLS")

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse `mqtt://host:port` or `mqtts://host:port` (default ports 1883 and 8883).

        Raises:
            InvalidBrokerUrl: another scheme, no host, or a bad port (the message quotes the URL, cut to 200 chars).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES or not parts.hostname:
            raise InvalidBrokerUrl(f"broker URL {url[:200]!r} must look like mqtt://host:port or mqtts://host:port")
        tls = SCHEMES[scheme]
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as e:
            raise InvalidBrokerUrl(f"broker URL {url[:200]!r} has a bad port: {e}") from e
        return cls(host=parts.hostname, port=port, tls=tls)

    @property
    def url(self) -> str:
        """The address as a URL (`mqtts://` when TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def check_broker_url(url: str) -> str:
    """`url` unchanged if it parses as a broker URL (a pydantic validator for URL fields); else InvalidBrokerUrl."""
    BrokerAddress.parse(url)
    return url
