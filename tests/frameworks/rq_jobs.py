"""RQ through Keyway (tests/frameworks.rs). RQ_KEY_PREFIX (read when rq is imported) puts every
key RQ uses under one hash tag, e.g. `{rq}`, so its transactions and scripts stay on one server.

  python3 rq_jobs.py PORT enqueue N    enqueue jobs job-0..job-N-1 on the queue `default`
  python3 rq_jobs.py PORT check N      after `rq worker --burst`: every job finished, results read back
  python3 rq_jobs.py PORT crossslot    without a hash tag: the error Keyway answers

Prints `ok` last on success.
"""
import os
import sys

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from tasks import triple_plus_one


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


port, mode = int(sys.argv[1]), sys.argv[2]
redis = Redis(port=port)
queue = Queue("default", connection=redis)

if mode == "enqueue":
    n = int(sys.argv[3])
    for start in range(0, n, 500):
        queue.enqueue_many(
            [
                Queue.prepare_data(triple_plus_one, (i,), job_id=f"job-{i}", result_ttl=3600)
                for i in range(start, min(n, start + 500))
            ]
        )
    if queue.count != n:
        fail(f"queue holds {queue.count} jobs, want {n}")
    print(f"enqueued {n} jobs (key prefix {os.environ.get('RQ_KEY_PREFIX', 'rq')!r})")
elif mode == "check":
    n = int(sys.argv[3])
    ids = [f"job-{i}" for i in range(n)]
    total = 0
    for start in range(0, n, 500):
        for i, job in enumerate(Job.fetch_many(ids[start : start + 500], connection=redis), start):
            if job is None:
                fail(f"job-{i} is gone")
            if job.get_status() != JobStatus.FINISHED:
                fail(f"job-{i} is {job.get_status()}")
            value = job.return_value()
            if value != triple_plus_one(i):
                fail(f"job-{i} returned {value!r}")
            total += value
    want = sum(triple_plus_one(i) for i in range(n))
    if total != want:
        fail(f"results sum to {total}, want {want}")
    finished = FinishedJobRegistry(queue=queue).count
    failed = FailedJobRegistry(queue=queue).count
    if queue.count or finished != n or failed:
        fail(f"queued {queue.count}, finished registry {finished}, failed registry {failed}")
    print(f"{n} jobs finished, results read back, sum {total}")
elif mode == "crossslot":
    try:
        queue.enqueue(triple_plus_one, 1)
        fail("RQ without a hash-tagged key prefix was accepted")
    except Exception as e:  # redis-py raises ClusterCrossSlotError for -CROSSSLOT
        print(f"error: {type(e).__name__}: {e}")
        if "CROSSSLOT" not in repr(e) and "same slot" not in str(e):
            fail("not the CROSSSLOT error")
else:
    fail(f"unknown mode {mode}")
print("ok")
