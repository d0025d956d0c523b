"""Celery through Keyway (tests/frameworks.rs): with a worker of celery_app running,
sends N tasks, reads every result back (the result backend's pub/sub), counts the worker's
task-succeeded events (pub/sub fanout) and pings the worker (`inspect ping`, pidbox fanout).

  python3 celery_client.py N          (KEYWAY_PORT set; prints `ok` last)
  python3 celery_client.py crossslot  (CELERY_KEYPREFIX="" : the broker's keys on several slots)
  python3 celery_client.py canvas     a group and a chord (with CELERY_RESULT_KEYPREFIX set: a
                                      chord's counters live in several result keys)
"""
import sys
import threading
import time

from celery import chord, group

from celery_app import app, total, triple_plus_one


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main():
    if sys.argv[1] == "crossslot":
        try:
            triple_plus_one.delay(1)
            fail("a broker without a hash-tagged key prefix was accepted")
        except Exception as e:
            print(f"error: {type(e).__name__}: {e}")
            if "same slot" not in str(e):
                fail("not the CROSSSLOT error")
        print("ok")
        return
    if sys.argv[1] == "canvas":
        g = group(triple_plus_one.s(i) for i in range(20))().get(timeout=60)
        c = chord(triple_plus_one.s(i) for i in range(20))(total.s()).get(timeout=60)
        want = sum(i * 3 + 1 for i in range(20))
        if sum(g) != want or c != want:
            fail(f"group {sum(g)}, chord {c}, want {want}")
        print(f"group of 20: {sum(g)}; chord of 20: {c}")
        print("ok")
        return
    n = int(sys.argv[1])
    deadline = time.monotonic() + 60
    while True:
        replies = app.control.inspect(timeout=1.0).ping() or {}
        if replies:
            break
        if time.monotonic() > deadline:
            fail("no worker answered `inspect ping` in 60 s")
    print(f"inspect ping: {replies}")

    succeeded = []
    ready = threading.Event()
    receiver_box = {}

    def events():
        with app.connection() as conn:
            receiver = app.events.Receiver(
                conn, handlers={"task-succeeded": lambda e: succeeded.append(e["uuid"])}
            )
            receiver_box["r"] = receiver
            ready.set()
            receiver.capture(limit=None, timeout=None, wakeup=True)

    thread = threading.Thread(target=events, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)  # the receiver's queue is bound once capture() consumes

    started = time.monotonic()
    results = [triple_plus_one.delay(i) for i in range(n)]
    values = [r.get(timeout=120) for r in results]
    took = time.monotonic() - started
    want = [i * 3 + 1 for i in range(n)]
    if values != want:
        bad = [i for i, (v, w) in enumerate(zip(values, want)) if v != w][:5]
        fail(f"results differ at {bad}")
    ids = {r.id for r in results}
    deadline = time.monotonic() + 30
    while len(ids & set(succeeded)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    if len(ids & set(succeeded)) != n:
        fail(f"{len(ids & set(succeeded))} task-succeeded events of {n}")
    receiver_box["r"].should_stop = True
    stats = app.control.inspect(timeout=2.0).stats() or {}
    if not stats:
        fail("inspect stats: no reply")
    print(f"{n} tasks, results sum {sum(values)}, {len(succeeded)} task-succeeded events, {took:.1f} s")
    print("ok")


main()
