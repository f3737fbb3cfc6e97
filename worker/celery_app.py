"""The Celery app the worker runs: ``celery -A worker.celery_app worker -Q gpu,cpu``.

Jobs are long and expensive, so a message is acknowledged only after the task
finished (``acks_late``), a worker takes one message at a time, and a message
whose worker died is requeued. Results live in the job row; no result backend.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from service.config import Settings, get_settings
from service.queue import RUN_JOB_TASK, broker_transport_options, job_queues


def make_celery_app(settings: Settings) -> Celery:
    app = Celery("poisonscan", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=job_queues(settings),
        task_default_queue=settings.job_queue,
        task_routes={RUN_JOB_TASK: {"queue": settings.job_queue}},
        task_always_eager=settings.task_always_eager,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def install_heartbeat(settings: Settings) -> None:
    """Beat (and reap, sweep, send webhooks) from the worker's main process while it runs."""
    from service.db import get_sessionmaker
    from service.reaper import Periodic
    from service.webhooks import WebhookDispatcher
    from worker.heartbeat import WorkerHeartbeat

    beats: list[Periodic] = []

    def start(**_: Any) -> None:
        beats.append(WorkerHeartbeat(settings))
        beats.append(WebhookDispatcher(get_sessionmaker(settings.database_url), settings))
        for beat in beats:
            beat.start()

    def stop(**_: Any) -> None:
        while beats:
            beats.pop().stop()

    signals.worker_ready.connect(start, weak=False)
    signals.worker_shutdown.connect(stop, weak=False)


def install_json_logs(settings: Settings) -> None:
    """One JSON line per record (with the job id) instead of Celery's own log format."""
    if not settings.json_logs:
        return
    from service import logs

    def setup(**_: Any) -> None:
        logs.configure()

    signals.setup_logging.connect(setup, weak=False)


app = make_celery_app(get_settings())
install_heartbeat(get_settings())
install_json_logs(get_settings())
