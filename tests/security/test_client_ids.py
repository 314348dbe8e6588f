"""A device cannot take over another device's MQTT session (issue 18 item 4), on the hub's own Mosquitto.

Before: a device's own username and password with another device's client id (computable from the id and
the topic prefix) disconnected that device and fired its will. Now the device listener names every session
by its account (`use_username_as_clientid`, docs/security.md): the intruder gets a session of its own, the
victim stays connected and online, and the hub's listener takes the hub's account only.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt import MqttLink
from fleet.codec import encode
from fleet.messages import DeviceStatus
from fleet.topics import Topics
from tests.support.agents import AgentProc, agent_command, agent_env
from tests.support.hubproc import HubProcess
from tests.support.mqtt import TestClient, wait_for
from tests.support.outcomes import record


def test_another_devices_client_id_gets_a_session_of_ones_own_and_the_victim_stays_online(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    hub = HubProcess(tmp_path / "hub", None, mosquitto_binary=mosquitto_binary)
    hub.init()
    hub.start()
    topics = Topics("fleet/v1")
    victim = None
    bundle = tmp_path / "victim.bundle.json"
    try:
        hub.enrol("victim").save(bundle)
        intruder = hub.enrol("intruder")
        args = agent_command(bundle, tmp_path / "victim-data", "--headless")
        victim = AgentProc(args, agent_env(), tmp_path / "victim.log")

        def online() -> dict[str, Any] | None:
            d = hub.get("/api/v1/devices/victim")
            return d if d["status"] == "online" and d["session"] else None

        before = wait_for(online, timeout=60)
        host, port = hub.broker
        stolen = MqttLink.client_id_for("victim", "fleet/v1")  # what the victim's agent connects with
        taker = TestClient(host, port, client_id=stolen, username=intruder.mqtt_username,
                           password=intruder.mqtt_password)  # fmt: skip
        try:
            # a barrier: the intruder's own birth reaches the hub after anything its connect caused (a will)
            birth = DeviceStatus(device_id="intruder", state="online", ts=time.time(), session="barrier")
            taker.publish(topics.status("intruder"), encode(birth), retain=True)
            wait_for(lambda: hub.get("/api/v1/devices/intruder")["session"] == "barrier", timeout=30)
            after = hub.get("/api/v1/devices/victim")
            assert (after["status"], after["session"]) == ("online", before["session"]), after
            assert taker.client.is_connected()
        finally:
            taker.close()
        # the hub's own listener refuses device accounts: no client id of a device's choosing there either
        conf = (tmp_path / "hub" / "mosquitto" / "mosquitto.conf").read_text()
        hub_port = int(re.findall(r"^listener (\d+) 127\.0\.0\.1$", conf, flags=re.M)[1])
        refused = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgefleet-hub-x")
        refused.username_pw_set(intruder.mqtt_username, intruder.mqtt_password)
        codes: list[ReasonCode] = []
        refused.on_connect = lambda _c, _u, _f, rc, _p=None: codes.append(rc)
        refused.connect("127.0.0.1", hub_port)
        refused.loop_start()
        try:
            wait_for(lambda: codes, timeout=10)
            assert codes[0].is_failure, codes
        finally:
            refused.loop_stop()
        assert "link to broker lost" not in victim.output(), victim.output()[-2000:]
    finally:
        if victim is not None:
            victim.stop()
        assert hub.stop() == 0
    record("attack", "MQTT session takeover with another device's client id", "refused", 2, 0)
