"""Enqueue jobs without importing the worker: a Celery *client* sends by task name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from service.config import Settings

RUN_JOB_TASK = "poisonscan.run_job"
Enqueue = Callable[[str], None]


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Options shared by the client and the worker for the same broker."""
    if settings.broker_url.startswith(("sqla+", "sqlalchemy+")):
        # A SQLite broker file sits next to the data; make sure its directory exists.
        # Kombu hands these options to create_engine(): wait on a locked file.
        settings.data_dir.expanduser().resolve().mkdir(parents=True, exist_ok=True)
        return {"connect_args": {"timeout": 30}}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Longer than any job: an unacked message is redelivered only after this.
        return {"visibility_timeout": 6 * 3600}
    return {}


def job_queues(settings: Settings) -> tuple[Queue, ...]:
    """``gpu`` and ``cpu`` (plus ``settings.job_queue``), each on its own direct exchange.

    Explicit exchanges matter: Celery binds a bare ``Queue("cpu")`` to the default
    exchange and routing key, so it would receive a copy of every ``gpu`` message.
    """
    names = dict.fromkeys(("gpu", "cpu", settings.job_queue))
    return tuple(
        Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
        for name in names
    )


def make_celery_client(settings: Settings) -> Celery:
    app = Celery("poisonscan-api", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_queues=job_queues(settings),
        task_default_queue=settings.job_queue,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=False,
        task_ignore_result=True,
        result_backend=None,
    )
    return app


class JobQueue:
    """Sends ``poisonscan.run_job(job_id)`` to the job queue."""

    def __init__(self, settings: Settings, enqueue: Enqueue | None = None) -> None:
        self.settings = settings
        self._enqueue = enqueue
        self._client: Celery | None = None

    @property
    def client(self) -> Celery:
        if self._client is None:
            self._client = make_celery_client(self.settings)
        return self._client

    @property
    def in_process(self) -> bool:
        """True when jobs go to an injected callable instead of a broker."""
        return self._enqueue is not None

    def enqueue(self, job_id: str, time_limits: tuple[float, float] | None = None) -> None:
        """Send the job; ``time_limits`` = (soft, hard) seconds for Celery (prefork pools)."""
        if self._enqueue is not None:
            self._enqueue(job_id)
            return
        soft, hard = time_limits or (None, None)
        self.client.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=self.settings.job_queue,
            soft_time_limit=soft,
            time_limit=hard,
        )

    def ping(self) -> None:
        """Raise when the broker cannot be reached."""
        if self._enqueue is not None:
            return
        with self.client.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
