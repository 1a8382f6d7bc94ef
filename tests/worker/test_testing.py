"""`jobcontrol.worker.testing`: handlers run in a unit test with no store, server or
worker, on the built-in demo.sleep and on handlers defined here."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from jobcontrol.errors import InvalidArgument
from jobcontrol.jobs import Progress
from jobcontrol.worker import JobCancelled, JobContext, PermanentError, Registry
from jobcontrol.worker.testing import HandlerTestEnvironment, run_handler

registry = Registry()


@registry.handler("test.count", max_attempts=7)
def count(ctx: JobContext) -> dict[str, Any]:
    """Counts to `to`, checking for cancellation between steps, as a plain function."""
    to = int(ctx.payload["to"])
    for n in range(1, to + 1):
        ctx.raise_if_cancelled()
        ctx.report_progress(100 * n / to, stage="counting" if n == 1 else None, message=str(n))
    ctx.logger.info("counted to %d", to)
    return {"counted": to, "attempt": ctx.attempt, "of": ctx.max_attempts}


@registry.handler("test.ignore_cancel")
async def ignore_cancel(ctx: JobContext) -> dict[str, Any]:
    ctx.report_progress(10, stage="waiting")
    await asyncio.sleep(60)  # never looks at ctx: the worker cancels the task instead
    return {}


@registry.handler("test.overrun", timeout="50ms")
async def overrun(ctx: JobContext) -> dict[str, Any]:
    await ctx.sleep(60)
    return {}


def test_demo_sleep_runs_to_its_result_and_its_progress_is_recorded():
    env = HandlerTestEnvironment()
    result = env.run("demo.sleep", {"steps": 2, "seconds": 0})

    assert result == {"slept_seconds": 0, "steps": 2, "attempt": 1}
    assert env.progress == [
        Progress(50.0, "sleeping", "step 1/2"),
        Progress(100.0, "sleeping", "step 2/2"),
    ]


def test_run_handler_is_one_run_and_raises_what_the_handler_raised():
    assert run_handler("demo.sleep", {"steps": 0, "seconds": 0}, attempt=2)["attempt"] == 2
    with pytest.raises(PermanentError, match="seconds must be a number"):
        run_handler("demo.sleep", {"seconds": "soon"})


def test_demo_sleep_cancelled_mid_run_raises_job_cancelled_and_stops_reporting():
    env = HandlerTestEnvironment()
    env.on_progress = lambda progress: env.cancel() if progress.message == "step 2/1000" else None

    # 20 ms a step: cancelled, it ends long before the 20 s it would take.
    with pytest.raises(JobCancelled, match="cancel requested"):
        env.run("demo.sleep", {"steps": 1000, "seconds": 20})

    assert [p.message for p in env.progress] == ["step 1/1000", "step 2/1000"]


def test_a_plain_handler_runs_in_a_thread_sees_its_settings_and_logs_with_its_job(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO, logger="jobcontrol.handler")
    seen_in: list[threading.Thread] = []
    env = HandlerTestEnvironment(registry=registry, attempt=2)
    env.on_progress = lambda progress: seen_in.append(threading.current_thread())

    assert env.run("test.count", {"to": 3}) == {"counted": 3, "attempt": 2, "of": 7}
    assert [(p.stage, p.message) for p in env.progress] == [
        ("counting", "1"),
        ("counting", "2"),
        ("counting", "3"),
    ]
    assert seen_in
    assert threading.main_thread() not in seen_in
    (record,) = [r for r in caplog.records if r.name == "jobcontrol.handler.test.count"]
    assert record.getMessage().endswith("counted to 3")
    assert (record.job_type, record.attempt) == ("test.count", 2)  # type: ignore[attr-defined]


def test_a_plain_handler_cancelled_from_its_own_progress_stops_at_its_next_check():
    env = HandlerTestEnvironment(registry=registry)
    env.on_progress = lambda progress: env.cancel() if progress.message == "2" else None

    with pytest.raises(JobCancelled):
        env.run(count, {"to": 10})
    assert [p.message for p in env.progress] == ["1", "2"]


def test_a_job_cancelled_before_it_starts_is_stopped_at_once():
    env = HandlerTestEnvironment(registry=registry)
    env.cancel()
    with pytest.raises(JobCancelled):
        env.run("test.count", {"to": 3})
    assert env.progress == []
    # The request was for that run only.
    assert env.run("test.count", {"to": 1})["counted"] == 1


async def test_an_async_handler_ignoring_cancellation_is_cancelled_as_a_worker_would():
    env = HandlerTestEnvironment(registry=registry)
    started = asyncio.Event()
    env.on_progress = lambda progress: started.set()

    async def cancel_once_started() -> None:
        await started.wait()
        env.cancel()

    canceller = asyncio.create_task(cancel_once_started())
    with pytest.raises(JobCancelled, match="cancel requested"):
        await env.run_async("test.ignore_cancel")
    await canceller
    assert [p.stage for p in env.progress] == ["waiting"]


def test_the_types_timeout_stops_an_attempt_that_runs_over():
    with pytest.raises(TimeoutError, match=r"test\.overrun: attempt ran past its timeout of 50ms"):
        run_handler("test.overrun", registry=registry)


def test_an_unregistered_function_runs_and_a_result_the_store_would_refuse_fails():
    async def not_json(ctx: JobContext) -> dict[str, Any]:
        return {"when": object()}

    def numbers(ctx: JobContext) -> dict[str, Any]:
        return {"got": ctx.payload, "type": ctx.job_type}

    assert run_handler(numbers, {"n": (1, 2)}) == {
        "got": {"n": [1, 2]},
        "type": "test.unregistered",
    }
    with pytest.raises(InvalidArgument, match="result: must be a JSON object"):
        run_handler(not_json)
    with pytest.raises(TypeError, match="a handler returns a dict or None"):
        run_handler(lambda ctx: [1])


def test_an_unknown_type_names_what_is_registered():
    with pytest.raises(LookupError, match=r"no handler for job type 'no.such'.*test.count"):
        run_handler("no.such", registry=registry)


async def test_run_refuses_a_running_event_loop_and_points_at_run_async():
    with pytest.raises(RuntimeError, match="await run_async"):
        HandlerTestEnvironment().run("demo.sleep")
