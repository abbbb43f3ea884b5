"""In-process cost of one single-record /predict: bench/serve.py's "single request" case
(request checks + fast path + JSON) and the whole ASGI front door (body read with its
deadline, content-type and auth checks, the same work, the response messages).

    python bench/front_door.py [--repeat 20000]

No server and no network: the front door is called directly with an in-memory receive
and send, so only the code in this repository is timed. Prints JSON per model family.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.serve import FAMILIES, bench_records  # noqa: E402

from churn_assets.devtools.sample_models import register, sample_frames, train_family  # noqa: E402
from churn_assets.serving.model_store import ModelStore, load_serving_model  # noqa: E402
from churn_assets.serving.predict_endpoint import PredictFrontDoor, score  # noqa: E402

try:
    from churn_assets.serving.predict_endpoint import BodyDeadlines
except ImportError:  # an older copy of the package, run for comparison
    BodyDeadlines = None
from churn_assets.storage.registry import ModelRegistry  # noqa: E402


def best_and_median_us(fn, repeat: int, runs: int = 7) -> dict:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - start) / repeat * 1e6)
    return {"best": round(min(times), 2), "median": round(statistics.median(times), 2)}


def front_door_us(door: PredictFrontDoor, body: bytes, repeat: int, runs: int = 7) -> dict:
    scope = {"type": "http", "path": "/predict", "method": "POST",
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    message = {"type": "http.request", "body": body, "more_body": False}
    statuses = []

    async def receive():
        return message

    async def send(event):
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    async def loop_once():
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            for _ in range(repeat):
                await door(scope, receive, send)
            times.append((time.perf_counter() - start) / repeat * 1e6)
        return times

    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    times = runner(loop_once())
    assert set(statuses) == {200}, set(statuses)
    return {"best": round(min(times), 2), "median": round(statistics.median(times), 2)}


def added_checks_ns(body: bytes, repeat: int = 200_000) -> dict:
    """The per-request work this tree's hardening added to a single record, alone (these
    small numbers stay readable when the machine is too busy for the totals to be)."""
    payload = orjson.loads(body)

    def duplicate_check():
        colons = body.count(b":")
        return colons > len(payload)

    deadlines = BodyDeadlines(30.0)

    async def registrations():
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        start = time.perf_counter()
        for _ in range(repeat):
            deadlines.begin(task, loop)
            del deadlines.reading[task]
            deadlines.expired.discard(task)
        return (time.perf_counter() - start) / repeat * 1e9

    import uvloop
    return {"duplicate_key_check": round(best_and_median_us(duplicate_check, repeat)["best"] * 1000),
            "body_deadline_registration": round(min(uvloop.run(registrations()) for _ in range(5))),
            "orjson_loads_for_scale": round(best_and_median_us(lambda: orjson.loads(body), repeat)["best"] * 1000)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20_000)
    ns = parser.parse_args()
    record = bench_records(50)[0]
    body = orjson.dumps(record)
    frames = sample_frames(n_customers=1000)
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry(Path(tmp) / "registry")
        for family in FAMILIES:
            version = register(registry, train_family(frames, family))
            pointer = registry.promote(version.version, "benchmark")
            model = load_serving_model(registry, pointer, max_batch=10_000)
            store = ModelStore(registry.root)
            store.current = model
            door = PredictFrontDoor(lambda *a: None, store, 16 * 1024 * 1024, None)
            result = {
                "single_request_us": best_and_median_us(
                    lambda: orjson.dumps(score(model, model.schema.parse(body))), ns.repeat),
                "front_door_us": front_door_us(door, body, ns.repeat),
            }
            print(json.dumps({family: result}), flush=True)
    if BodyDeadlines is not None:
        print(json.dumps({"added_checks_ns": added_checks_ns(body)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
