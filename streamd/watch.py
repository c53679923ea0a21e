"""`streamd watch`: a real MQTT subscriber printing one line per message of a site.

What an operator runs next to the daemon to see what dashboards will receive; the demo uses
it. It is a plain client of the contract, so it also shows what a subscriber can rely on.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from streamd import contract
from streamd.config import Config
from streamd.mqttclient import client_options, paho_client


def summarise(topic: str, payload: bytes | bytearray, prefix: str) -> str:
    """One human line for a message of the contract.

    >>> summarise("streamd/a/cam/detections", b'{"v":1,"frame_id":7,"seq":3,"ts":1.5,'
    ...   b'"rois":[{}],"objects":[{"id":2,"label":"person","score":0.8}]}', "streamd/a")
    'cam/detections seq=3 frame=7 ts=1.500000 rois=1 objects=person#2(0.80)'
    """
    rel = topic[len(prefix) + 1:] if topic.startswith(prefix + "/") else topic
    if rel.endswith("/snapshot"):
        return f"{rel} JPEG {len(payload)} bytes"
    try:
        body: Any = json.loads(payload)
    except ValueError:
        return f"{rel} {payload.decode(errors='replace')}"
    if not isinstance(body, dict):
        return f"{rel} {body}"
    kind = rel.rsplit("/", 1)[-1]
    head = f"{rel} seq={body.get('seq')} frame={body.get('frame_id')} ts={body.get('ts', 0):.6f}"
    if kind == "detections":
        objs = " ".join(f"{o['label']}#{o['id']}({o['score']:.2f})"
                        for o in body.get("objects", []))
        return f"{head} rois={len(body.get('rois', []))} objects={objs or '-'}"
    if kind == "descriptions":
        return f"{head} object={body.get('object_id')} {body.get('text')!r}"
    if kind == "status":
        return f"{rel} {body.get('state')} reason={body.get('reason') or '-'}"
    if kind == "stats":
        return (f"{rel} fps_in={body.get('fps_in', '-')} fps_analysed={body.get('fps_analysed')}"
                f" dropped={body.get('dropped')} latency_ms={body.get('latency_ms')}")
    return f"{rel} {json.dumps(body)}"


def watch(config: Config, until_offline: bool, out: TextIO = sys.stdout) -> int:
    """Print every message under the site prefix; with `until_offline`, return when the
    daemon says `offline` after having been `online`."""
    s = config.settings
    prefix = s.topic_prefix
    done = threading.Event()
    seen_online = threading.Event()

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode,
                   props: object) -> None:
        if rc.is_failure:
            print(f"watch: broker refused: {rc}", file=sys.stderr)
            done.set()
            return
        client.subscribe(f"{prefix}/#", qos=1)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == contract.site_topic(prefix):
            state = msg.payload.decode(errors="replace")
            print(f"status {state}{' (retained)' if msg.retain else ''}", file=out, flush=True)
            if state == contract.SITE_ONLINE:
                seen_online.set()
            elif state == contract.SITE_OFFLINE and seen_online.is_set() and until_offline:
                done.set()
            return
        print(summarise(msg.topic, msg.payload, prefix), file=out, flush=True)

    client = paho_client(client_options(s.mqtt, config.mqtt_password,
                                        client_id=f"{s.client_id}-watch"))
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect_async(s.mqtt.host, s.mqtt.port)
    client.loop_start()
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0
