"""The edgefleet hub: model registry, device registry, signed desired states, chunk serving, ingestion, REST API.

Start with `hub.runtime.Hub` and `hub.settings.HubSettings`; docs/hub.md describes the parts and decisions.
"""
