"""The MQTT alert sink against a real broker: the Debian ``mosquitto`` binary started on a free
local port, a ``paho-mqtt`` subscriber, and alert rules loaded from TOML as ``tympan listen``
loads them (skips when the broker or paho-mqtt is missing)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from test_live_alerts import _event
from tympan.contracts.events import Alert
from tympan.live.alerts import load_alerts

BROKER = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
mqtt = pytest.importorskip("paho.mqtt.client")
pytestmark = pytest.mark.skipif(BROKER is None, reason="mosquitto not installed (apt-get install mosquitto)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path: Path):
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([BROKER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.05)
        else:
            raise AssertionError("mosquitto did not start listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_alert_arrives_through_a_real_mqtt_broker(broker: int, tmp_path: Path) -> None:
    got: list[Alert] = []
    subscribed, arrived = threading.Event(), threading.Event()
    kw = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2} if hasattr(mqtt, "CallbackAPIVersion") else {}
    client = mqtt.Client(**kw)
    client.on_subscribe = lambda *a, **k: subscribed.set()

    def on_message(_c, _u, msg) -> None:
        got.append(Alert.model_validate_json(msg.payload))
        arrived.set()

    client.on_message = on_message
    client.connect("127.0.0.1", broker)
    client.subscribe("tympan/alerts", qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        rules = tmp_path / "alerts.toml"
        rules.write_text(f'[sinks.bus]\ntype = "mqtt"\nhost = "127.0.0.1"\nport = {broker}\ntopic = "tympan/alerts"\n'
                         '[[rules]]\nname = "sirens"\nclasses = ["siren"]\nsinks = ["bus"]\n')
        manager = load_alerts(rules, ["siren", "dog"])
        assert manager.handle_open(_event(label="dog")) == []  # not a siren: nothing sent
        [sent] = manager.handle_open(_event(label="siren", start=12.0))
        assert arrived.wait(10), "no alert reached the subscriber"
        manager.close()
    finally:
        client.loop_stop()
        client.disconnect()
    assert [(a.rule, a.phase, a.event.label, a.event.start_s) for a in got] == [("sirens", "open", "siren", 12.0)]
    assert got[0] == sent
