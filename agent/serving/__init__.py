"""The serving core shared by every serving mode: the model slot (swap, retirement, counters, shadow).

- `ModelSlot`: implements `agent.ports.ServingPort`; the HTTP API (`agent.api`) and headless serving
  (`agent.headless`) both serve through it.
- `Served`: one loaded model version as requests see it.
- `classify`: which errors are the client's and which ours (HTTP status and reason).
"""

from agent.serving.errors import ModelNotFound, NotReady, Overloaded, ServingError, classify
from agent.serving.served import Served
from agent.serving.slot import ModelSlot

__all__ = ["ModelNotFound", "ModelSlot", "NotReady", "Overloaded", "Served", "ServingError", "classify"]
