"""Process plumbing shared by the hub and the agent (which never import each other).

What lives here is infrastructure with I/O that `fleet` must stay free of: settings read from the
environment (`infra.settings`, on pydantic-settings), uvicorn serving an ASGI app on a background
thread (`infra.server`) and the socket options both sides' MQTT links set (`infra.sockets`); and what the hub,
the agent and the hub's CLI (`hubclient`, which never imports the hub) show people, in one wording:
`infra.timefmt` ("12 s ago") and `infra.sizes` (byte sizes). It imports no project package except `fleet`,
and no MQTT, SQL or Kubernetes client.
"""
