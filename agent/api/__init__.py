"""The agent's on-device inference API: Open Inference Protocol v2, image endpoint, batching, swap, shadow.

Public surface (wired by the agent):

- `ModelRepository()` (from `agent.serving`, the core every serving mode shares): every model the device
  serves, one `ModelSlot` each; implements `agent.ports.ServingPort` (activate / set_shadow / deactivate /
  take_windows, each naming its model).
- `ApiSettings`: listening address, limits and timeouts (`ApiSettings.from_env()` reads `EDGEFLEET_API_*`).
- `ApiServer(settings, repo)`: `start()` runs uvicorn on a background thread, `url`, `stop()`.
- `serve(settings, repo)`: the same, blocking (cluster mode).
"""

from agent.api.server import ApiServer, serve
from agent.api.settings import ApiSettings
from agent.serving import ModelRepository, ModelSlot

__all__ = ["ApiServer", "ApiSettings", "ModelRepository", "ModelSlot", "serve"]
