"""``poisonscan report JOB_ID``: one self-contained HTML report of a job."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    from poisonscan.report import write_report
    from service.errors import ServiceError

    try:
        path = write_report(args.job_id, args.output, args.api)
    except ServiceError as exc:  # e.g. no such job in the local database
        raise ValueError(exc.detail) from None
    print(path)
    return 0


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("report", help="write a job's self-contained HTML report")
    r.add_argument("job_id")
    r.add_argument("-o", "--output", type=Path, help="default: <job_id>-report.html")
    r.add_argument(
        "--api", help="fetch it from a running service at this URL instead of the local database"
    )
    r.set_defaults(func=cmd_report)
