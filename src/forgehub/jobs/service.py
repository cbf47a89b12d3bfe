"""Jobs, as one import for callers: submit, claim, what the runner reports, cancel and retry.

The work is split by concept — ``common``, ``tokens``, ``submit``, ``scheduling``,
``reports``, ``publishing``, ``views`` — and re-exported here. Everything runs inside the
caller's session (one transaction); state changes go through
:func:`forgehub.jobs.states.transition`.
Errors are :class:`JobError` (a :class:`~forgehub.errors.ForgehubError`).
"""

from __future__ import annotations

from forgehub.jobs.common import (
    ACTIVE,
    COMPUTE,
    JOB_TOKEN_PREFIX,
    WORKER_ONLINE_S,
    JobError,
    ensure_default_compute,
)
from forgehub.jobs.publishing import (
    output_of,
    publish,
    publish_later,
)
from forgehub.jobs.reports import (
    FinishIn,
    OutputIn,
    StartIn,
    record_output,
    runner_events,
    runner_finished,
    runner_spec,
    runner_started,
    started,
)
from forgehub.jobs.scheduling import (
    check_some_worker_fits,
    claim,
    fits,
    online_workers,
    release,
)
from forgehub.jobs.submit import (
    JobIn,
    retry,
    submit,
)
from forgehub.jobs.tokens import (
    job_for_token,
    job_principal,
    new_job_token,
    token_lifetime,
)
from forgehub.jobs.views import (
    cancel,
    connection_names,
    count_active,
    find_jobs,
    get_job,
    job_out,
)

__all__ = [
    "ACTIVE",
    "COMPUTE",
    "FinishIn",
    "JOB_TOKEN_PREFIX",
    "JobError",
    "JobIn",
    "OutputIn",
    "WORKER_ONLINE_S",
    "cancel",
    "check_some_worker_fits",
    "claim",
    "connection_names",
    "count_active",
    "ensure_default_compute",
    "find_jobs",
    "fits",
    "get_job",
    "job_for_token",
    "job_out",
    "job_principal",
    "new_job_token",
    "online_workers",
    "output_of",
    "publish",
    "publish_later",
    "record_output",
    "release",
    "retry",
    "runner_events",
    "runner_finished",
    "runner_spec",
    "runner_started",
    "StartIn",
    "started",
    "submit",
    "token_lifetime",
]
