"""The Celery app of forkworker's benchmark (benches/compare/celery.rs starts its worker and client).

Broker and result backend: the bench's own redis-server (FW_BENCH_REDIS, database 1), JSON
messages, Celery's defaults otherwise. FW_BENCH_QUEUE names the queue that one worker consumes
and that `.delay()` sends to, so that workers of different concurrency never share calls.
"""

import os

from celery import Celery

_url = os.environ["FW_BENCH_REDIS"].rstrip("/") + "/1"

app = Celery("fw_bench", broker=_url, backend=_url)
app.conf.update(
    task_default_queue=os.environ.get("FW_BENCH_QUEUE", "celery"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@app.task(name="fw_bench.empty")
def empty():
    """The empty call: takes nothing, returns None."""
    return None


@app.task(name="fw_bench.echo")
def echo(data):
    """Returns its argument."""
    return data
