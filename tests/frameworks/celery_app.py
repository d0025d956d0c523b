"""The Celery app that tests/frameworks.rs runs through Keyway: Redis broker and result backend
at redis://127.0.0.1:$KEYWAY_PORT/0."""
import os

from celery import Celery

url = f"redis://127.0.0.1:{os.environ['KEYWAY_PORT']}/0"
app = Celery("keyway_tests", broker=url, backend=url)
app.conf.update(
    broker_transport_options={"global_keyprefix": os.environ.get("CELERY_KEYPREFIX", "{celery}")},
    # Results are keyed by task id and spread over the servers, unless chords need them under
    # one tag (CELERY_RESULT_KEYPREFIX, see docs/frameworks/celery.md).
    result_backend_transport_options={"global_keyprefix": os.environ.get("CELERY_RESULT_KEYPREFIX", "")},
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


@app.task
def triple_plus_one(i):
    return i * 3 + 1


@app.task
def total(values):
    return sum(values)
