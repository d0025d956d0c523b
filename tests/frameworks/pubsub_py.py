"""redis-py PubSub through Keyway (tests/frameworks.rs): subscribers on one Keyway, publishers on
another over the same servers.

  python3 pubsub_py.py SUB_PORT PUB_PORT CHANNEL...

For RESP2 and RESP3: `subscribe` to the channels (one per server) and `psubscribe` a pattern,
publish 100 messages per channel from the other Keyway, read half with `listen()` and half with
`get_message()`, check each channel's messages arrive whole and in order (order across
channels of different servers is not defined, as in Redis Cluster), and a handler-based
subscriber (`run_in_thread`) gets them too. Prints `ok` last.
"""
import sys
import threading
import time

import redis


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


sub_port, pub_port, channels = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
PER_CHANNEL = 100


def expected():
    return [(c, f"{c}:{i}") for i in range(PER_CHANNEL) for c in channels]


for protocol in (2, 3):
    sub = redis.Redis(port=sub_port, protocol=protocol, decode_responses=True)
    pub = redis.Redis(port=pub_port, decode_responses=True)
    p = sub.pubsub()
    p.subscribe(*channels)
    p.psubscribe("fw.*")
    confirmations = []
    while len(confirmations) < len(channels) + 1:
        m = p.get_message(timeout=5)
        if m is None:
            fail(f"RESP{protocol}: subscription confirmations: {confirmations}")
        confirmations.append((m["type"], m["channel"], m["data"]))
    if confirmations[-1] != ("psubscribe", "fw.*", len(channels) + 1):
        fail(f"RESP{protocol}: confirmations {confirmations}")

    got_by_handler = []
    hp = sub.pubsub()
    hp.subscribe(**{c: (lambda m: got_by_handler.append((m["channel"], m["data"]))) for c in channels})
    thread = hp.run_in_thread(sleep_time=0.05, daemon=True)
    deadline = time.monotonic() + 10
    while pub.pubsub_numsub(*channels) != [(c, 1) for c in channels]:
        # Both clients share Keyway's one subscriber connection per server: 1 each.
        if time.monotonic() > deadline:
            fail(f"RESP{protocol}: NUMSUB {pub.pubsub_numsub(*channels)}")
        time.sleep(0.05)

    want = expected()
    for channel, data in want:
        receivers = pub.publish(channel, data)
        if receivers != 1:
            fail(f"RESP{protocol}: PUBLISH {channel} reached {receivers} connections, want 1")
    pattern_want = [f"fw.{i}" for i in range(20)]
    for data in pattern_want:
        pub.publish(f"fw.{data}", data)

    # Pattern messages may come before the last channel messages (other servers): keep both.
    got, patterned = [], []

    def take(m):
        if m["type"] == "message":
            got.append((m["channel"], m["data"]))
        elif m["type"] == "pmessage" and m["pattern"] == "fw.*":
            patterned.append(m["data"])

    for m in p.listen():
        take(m)
        if len(got) >= len(want) // 2:
            break
    while len(got) < len(want) or len(patterned) < len(pattern_want):
        m = p.get_message(timeout=10)
        if m is None:
            fail(f"RESP{protocol}: {len(got)} of {len(want)} messages, "
                 f"{len(patterned)} of {len(pattern_want)} pattern messages")
        take(m)
    for c in channels:
        if [d for ch, d in got if ch == c] != [d for ch, d in want if ch == c]:
            fail(f"RESP{protocol}: channel {c} out of order or incomplete")
    # Order holds per channel; these are 20 channels over the servers, whose messages race.
    if sorted(patterned) != sorted(pattern_want):
        fail(f"RESP{protocol}: pattern messages {patterned[:5]}...")
    deadline = time.monotonic() + 10
    while len(got_by_handler) < len(want) and time.monotonic() < deadline:
        time.sleep(0.05)
    if sorted(got_by_handler) != sorted(want):
        fail(f"RESP{protocol}: the handler got {len(got_by_handler)} of {len(want)}")
    thread.stop()
    thread.join(timeout=5)
    p.unsubscribe()
    p.punsubscribe()
    p.close()
    hp.close()
    print(f"RESP{protocol}: {len(got)} messages on {len(channels)} channels (listen, get_message), "
          f"{len(patterned)} pattern messages, {len(got_by_handler)} to a run_in_thread handler")
print("ok")
