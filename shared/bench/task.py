"""The benchmark's task contracts, ``bench.echo`` and its async twin ``bench.echo_async``,
on queue ``greenroom-bench``.

Declaring it registers it in the task table of the processes that import
this module, and only theirs: the bench itself (its producer) and the worker
processes it starts (:mod:`shared.bench.worker`).
Production workers and producers never load it, so it is not in their task
table and no default worker consumes its queue.
"""

from __future__ import annotations

from pydantic import Field, JsonValue

from shared.bench.recorder import BENCH_QUEUE
from shared.tasks import TaskArguments, TaskContract


class BenchEchoArguments(TaskArguments):
    payload: JsonValue
    sent_at: float = Field(default=0.0, ge=0, description="epoch seconds the producer sent it (queue wait)")


BENCH_ECHO = TaskContract(
    name="bench.echo",
    queue=BENCH_QUEUE,
    arguments=BenchEchoArguments,
    max_retries=0,
    store_results=False,
    description="`greenroom bench`'s task: the same work as its bare-Dramatiq twin.",
)
BENCH_ECHO_ASYNC = TaskContract(
    name="bench.echo_async",
    queue=BENCH_QUEUE,
    arguments=BenchEchoArguments,
    max_retries=0,
    store_results=False,
    description="`bench.echo` as an async actor: the same work, run on the worker's event loop.",
)
