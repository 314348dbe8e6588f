"""The hub's client: an HTTP client of its REST API (`HubClient`) and the operator's CLI commands on it.

Both images can use it: it imports `fleet` and `models` (to read a model's description before a push), never
`hub`, so the agent image ships the CLI without the hub's server code (an import contract keeps it so).
"""

from hubclient.errors import ClientError, HubApiError
from hubclient.http import HubClient

__all__ = ["ClientError", "HubApiError", "HubClient"]
