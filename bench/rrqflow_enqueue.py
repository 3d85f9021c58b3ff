"""Producer side of the peerbench adapter for rrq-flow (see peer_rrqflow.sh).

    rrqflow_enqueue.py enqueue --variant V --n N --sleep S [--spacing-ms MS]
    rrqflow_enqueue.py yaml PATH CONCURRENCY      (writes the pipeline file `work` runs)

Enqueues N jobs of ``benchjob:trio_job(t0, sleep_s)`` into queue ``bench`` of pipeline
``peerbench`` with rrq-flow's SyncClient and prints, last, the JSON line
``{"n": N, "seconds": <time in the enqueue loop only>, "method": "..."}``.

- bulk (no --spacing-ms): ``SyncClient.enqueue_many`` — every job is validated and encoded
  first, then one ``enqueue.lua`` call per 1,000 jobs, all sent back to back before the replies
  are read. Like RQ's adapter, the
  jobs' arguments (t0 = time.time()) are built inside the timed loop.
- spaced (--spacing-ms): ``SyncClient.enqueue``, one job (one script call) at a time, job i at
  start + i*MS (``benchjob.spaced``), t0 = time.time() just before each call.

The pipeline is loaded from the same YAML text that ``work`` runs (``rrq_flow.config.load``);
if that loader is not importable the same config is built from the model classes.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINE = "peerbench"
QUEUE = "bench"
HANDLER = "benchjob:trio_job"


def pipeline_yaml(url: str, concurrency: int) -> str:
    return (
        "version: 1\n"
        f"pipeline: {PIPELINE}\n"
        "redis:\n"
        f"  url: {url}\n"
        "  persistence: none\n"  # the harness' Redis runs without AOF, on purpose
        "queues:\n"
        f"  {QUEUE}:\n"
        f"    handler: {HANDLER}\n"
        f"    concurrency: {concurrency}\n"
    )


def write_yaml(path: str, url: str, concurrency: int) -> str:
    """Write atomically (tmp + rename), so a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(pipeline_yaml(url, concurrency))
    os.replace(tmp, path)
    return path


def load_config(url: str, concurrency: int = 10):  # -> PipelineConfig
    try:
        from rrq_flow.config import load
    except ImportError:  # the YAML loader is not there yet: the same config, built in code
        from rrq_flow.config.model import PipelineConfig, QueueConfig, RedisSettings

        return PipelineConfig(
            pipeline=PIPELINE,
            queues={QUEUE: QueueConfig(name=QUEUE, handler=HANDLER, concurrency=concurrency)},
            redis=RedisSettings(url=url),
        )
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rrqflow-enq-") as d:
        return load(write_yaml(os.path.join(d, "bench.yaml"), url, concurrency))


def enqueue(variant: str, n: int, sleep_s: float, spacing_ms: float) -> tuple[float, str]:
    import benchjob

    from rrq_flow.client.sync_client import SyncClient

    url = os.environ.get("REDIS_URL", benchjob.REDIS_URL)
    client = SyncClient(load_config(url), url=url)
    try:
        client.redis.ping()  # connect outside the timed loop, as the other adapters do
        if spacing_ms:
            t = time.perf_counter()
            for _ in benchjob.spaced(n, spacing_ms):
                client.enqueue(QUEUE, time.time(), sleep_s)
            secs = time.perf_counter() - t
            method = "SyncClient.enqueue, one at a time"
        else:
            t = time.perf_counter()
            client.enqueue_many(QUEUE, [(time.time(), sleep_s) for _ in range(n)])
            secs = time.perf_counter() - t
            method = "SyncClient.enqueue_many (1 script call per 1000 jobs, sent back to back)"
    finally:
        client.close()
    return secs, method


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "yaml":
        path, conc = sys.argv[2], int(sys.argv[3])
        print(write_yaml(path, os.environ["REDIS_URL"], conc))
        return
    import benchjob

    def info() -> dict:
        raise SystemExit("info is answered by peer_rrqflow.sh")

    def work(variant: str, concurrency: int, burst: bool) -> None:
        raise SystemExit("work is run by peer_rrqflow.sh (exec rrq-flow run)")

    benchjob.adapter_main(info, enqueue, work)


if __name__ == "__main__":
    main()
