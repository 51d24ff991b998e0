"""Follow a node's notifications ([notifications] enabled = true in its TOML; README, "Notifications").

    python configs/subscriber_example.py 127.0.0.1:9702      # needs pyzmq (a peerledger dependency)

Each message is [topic, JSON body, sequence]: the sequence is a little-endian u64 counting
that topic's messages from 0 at the node's start, so a jump means messages were lost and
a step back means the node restarted; either way re-read what you need from the API.
"""

import sys

import zmq


def gap(last: dict, topic: bytes, sequence: int) -> str | None:
    """None if `sequence` follows the last one seen on `topic`, else what happened."""
    before, last[topic] = last.get(topic), sequence
    if before is None or sequence == before + 1:
        return None
    return "restart" if sequence <= before else f"lost {sequence - before - 1}"


def main(address: str) -> None:
    sub = zmq.Context().socket(zmq.SUB)
    sub.connect(f"tcp://{address}")
    for topic in (b"block", b"tx", b"reorg"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    last: dict = {}
    while True:
        topic, body, sequence = sub.recv_multipart()
        problem = gap(last, topic, int.from_bytes(sequence, "little"))
        if problem:
            print(f"# {topic.decode()}: {problem}; re-read the node's state (GET /status)", flush=True)
        print(topic.decode(), body.decode(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9702")
