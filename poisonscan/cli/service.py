"""``poisonscan serve``, ``worker``, ``migrate`` and ``demo``: the service's pieces.

They run on embedded defaults (SQLite + a broker that needs no server) unless
``POISONSCAN_DATABASE_URL`` / ``_BROKER_URL`` say otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from types import FrameType
from typing import Any

from poisonscan.runtime import migrate, worker_command

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def cmd_worker(args: argparse.Namespace) -> int:
    return subprocess.call(worker_command(args.queues, args.concurrency))


def cmd_migrate(args: argparse.Namespace) -> int:
    del args
    migrate()
    print("database migrated to head")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.config import get_settings
    from service.timeouts import HeaderTimeoutProtocol

    settings = get_settings()
    args.workers = args.workers or settings.api_workers
    if not settings.auth_enabled and args.host not in LOOPBACK:
        print(
            f"poisonscan: warning: serving on {args.host} without API keys: anyone who reaches "
            "it reads and changes everything (set POISONSCAN_AUTH_ENABLED=true)",
            file=sys.stderr,
        )
    # SIGTERM must unwind through ``finally`` (the default handler kills at once and
    # would orphan the worker); uvicorn re-raises it after its graceful shutdown.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    migrate()
    worker = None
    try:
        if args.with_worker:
            worker = subprocess.Popen(worker_command("gpu,cpu", 1), env=os.environ.copy())
        uvicorn.run(
            "service.main:create_served_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=None,  # the app configures (JSON) logging in each process
            timeout_graceful_shutdown=30,
            http=HeaderTimeoutProtocol,  # closes connections whose headers are too slow
        )
    finally:
        if worker is not None:
            _stop_worker(worker)
    return 0


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (Celery finishes or requeues its task), then a kill after 30 s."""
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def cmd_demo(args: argparse.Namespace) -> int:
    from poisonscan.demo import run_demo

    return run_demo(args)


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--with-worker", action="store_true", help="also start a local worker")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes (default: POISONSCAN_API_WORKERS, 1)",
    )
    s.set_defaults(func=cmd_serve)
    w = sub.add_parser("worker", help="run a Celery worker")
    w.add_argument("-Q", "--queues", default="gpu,cpu")
    w.add_argument("--concurrency", type=int, default=1)
    w.set_defaults(func=cmd_worker)
    m = sub.add_parser("migrate", help="alembic upgrade head on the configured database")
    m.set_defaults(func=cmd_migrate)
    d = sub.add_parser("demo", help="end-to-end demo on embedded defaults")
    d.add_argument("--methods", default="ct,ss,ac", help="detectors to run, comma-separated")
    d.add_argument("--attack", default="badnet")
    d.add_argument("--rate", type=float, default=0.05)
    d.add_argument("--dataset", default="digits")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--port", type=int, default=0, help="0 picks a free port")
    d.add_argument("--timeout", type=float, default=900.0, help="seconds to wait per job")
    d.set_defaults(func=cmd_demo)
