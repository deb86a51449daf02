"""A Sparkplug B edge node built with mqtt-spb-wrapper (PyPI), an implementation independent of
fieldwatch's, for tests/sparkplug_python.rs.

It connects an edge node and one device, publishes their births, then `--readings` DDATA
messages by alias (100 ms apart in event time, so seq wraps at 255 when there are more than
254), then, with `--gap`, once a line arrives on stdin, skips three sequence numbers and waits for the host's rebirth request
(NCMD `Node Control/Rebirth`), answers it with new births and publishes a few more readings.
It prints one line per step (`BORN`, `SENT <n>`, `REBIRTH <topic>`, `READY`) and then stays
connected until it is killed: the broker then publishes its wills (NDEATH and DDEATH).
"""

import argparse
import sys
import time

from mqtt_spb_wrapper import MqttSpbEntityDevice, MqttSpbEntityEdgeNode
from mqtt_spb_wrapper.spb_protobuf import sparkplug_b


def say(line):
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--group", default="plantA")
    ap.add_argument("--node", default="gw1")
    ap.add_argument("--device", default="comp-1")
    ap.add_argument("--readings", type=int, default=0)
    ap.add_argument("--gap", action="store_true")
    args = ap.parse_args()

    # Each connect takes the next bdSeq for its will, and the NBIRTH carries the one after the
    # last: connected device first, the node's NDEATH is one below its NBIRTH (the library's
    # convention, see decode.sparkplug.legacy_bd_seq).
    device = MqttSpbEntityDevice(args.group, args.node, args.device)
    node = MqttSpbEntityEdgeNode(args.group, args.node)
    rebirth = []

    # The library's own rebirth callback is not callable (it passes publish_birth's result):
    # note the request here and answer it below.
    node.commands.set_callback("Node Control/Rebirth", lambda asked: asked and rebirth.append(time.time()))
    node.data.set_value("uptime", 1, spb_alias_num=1)
    device.attributes.set_value("model", "GA37")
    now = int(time.time() * 1000) - 120_000
    device.data.set_value("temperature", 70.0, timestamp=now, spb_alias_num=10)
    device.data.set_value("running", True, timestamp=now, spb_alias_num=11)

    for entity, client_id in ((device, "py-device"), (node, "py-node")):
        if not entity.connect("127.0.0.1", args.port, client_id=client_id):
            say("CANNOT_CONNECT")
            return 1

    # QoS 1 (the library defaults to 0): a broker may drop QoS 0 messages for a subscriber that
    # is busy, and this test counts every reading (dropped ones are a seq gap, tested with --gap).
    # The library gives the node and each device an MQTT connection of its own, so the broker
    # may pass a DBIRTH on before the NBIRTH it follows (Sparkplug has an edge node publish its
    # devices' messages on its own session). Waiting for the NBIRTH's PUBACK keeps the order:
    # mosquitto queues a message for its subscribers before it acknowledges it.
    def acknowledged(entity):
        deadline = time.time() + 5
        # paho-mqtt 1.6 keeps unacknowledged QoS 1 messages in _out_messages.
        while getattr(entity._mqtt, "_out_messages", None) and time.time() < deadline:
            time.sleep(0.01)

    def births():
        node.publish_birth(qos=1)
        acknowledged(node)
        device.publish_birth(qos=1)

    births()
    say("BORN")

    def send(i):
        nonlocal now
        now += 100
        device.data.set_value("temperature", 70.0 + (i % 10) * 0.1, timestamp=now)
        device.data.set_value("running", i % 2 == 0, timestamp=now)
        device.publish_data(qos=1)
        time.sleep(0.002)

    for i in range(args.readings):
        send(i)
    say("SENT %d" % args.readings)

    if args.gap:
        # The test checks what arrived so far, then says go.
        sys.stdin.readline()
        # Three messages lost on the way.
        for _ in range(3):
            sparkplug_b.getSeqNum()
        send(0)
        deadline = time.time() + 20
        while not rebirth and time.time() < deadline:
            time.sleep(0.05)
        if not rebirth:
            say("NO_REBIRTH_REQUEST")
            return 1
        say("REBIRTH spBv1.0/%s/NCMD/%s" % (args.group, args.node))
        births()
        for i in range(5):
            send(i)

    say("READY")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
