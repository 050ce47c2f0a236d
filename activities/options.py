"""How an activity family is timed and retried: each family declares its options once, next to
its activities, with `activity_options`; a workflow adds only a summary for the UI."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from activities.errors import NON_RETRYABLE

SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def activity_options(
    timeout: timedelta,
    *,
    attempts: int = 0,
    first_retry: timedelta = timedelta(seconds=1),
    backoff: float = 2.0,
    longest_retry: timedelta | None = None,
    heartbeat: timedelta | None = None,
    deadline: timedelta | None = None,
) -> workflow.ActivityConfig:
    """Options for one attempt of at most `timeout`, retried `attempts` times in all (0: until
    `deadline`, which bounds every attempt together), backing off from `first_retry` by
    `backoff` up to `longest_retry`. Phasegate's non-retryable errors are never retried.
    With `heartbeat`, a worker that dies mid-attempt is noticed after that long."""
    options = workflow.ActivityConfig(
        start_to_close_timeout=timeout,
        retry_policy=RetryPolicy(
            initial_interval=first_retry,
            backoff_coefficient=backoff,
            maximum_interval=longest_retry,
            maximum_attempts=attempts,
            non_retryable_error_types=NON_RETRYABLE,
        ),
    )
    if heartbeat is not None:
        options["heartbeat_timeout"] = heartbeat
    if deadline is not None:
        options["schedule_to_close_timeout"] = deadline
    return options


def summarized(options: workflow.ActivityConfig, summary: str) -> workflow.ActivityConfig:
    """The family's timeouts and retries, with a summary the UI shows for this one call."""
    merged = options.copy()
    merged["summary"] = summary
    return merged
