"""The agent's on-device inference API: Open Inference Protocol v2, image endpoint, batching, swap, shadow.

Public surface (wired by the agent):

- `ModelSlot()` (from `agent.serving`, the core every serving mode shares): implements
  `agent.ports.ServingPort` (activate / set_shadow / deactivate / take_window).
- `ApiSettings`: listening address, limits and timeouts (`ApiSettings.from_env()` reads `EDGEFLEET_API_*`).
- `ApiServer(settings, slot)`: `start()` runs uvicorn on a background thread, `url`, `stop()`.
- `serve(settings, slot)`: the same, blocking (cluster mode).
"""

from agent.api.server import ApiServer, serve
from agent.api.settings import ApiSettings
from agent.serving import ModelSlot

__all__ = ["ApiServer", "ApiSettings", "ModelSlot", "serve"]
