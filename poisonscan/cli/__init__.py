"""The ``poisonscan`` console script.

``scan``, ``methods``, ``poison`` and ``bench`` need nothing but the library;
``serve``, ``worker``, ``migrate`` and ``demo`` start the service's pieces;
``keys`` manages the service's API keys.
Each command module adds its subparsers; this module only assembles and
dispatches them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from detection.readers import DatasetFormatError
from detection.registry import UnknownNameError
from detection.types import DetectionError
from poisonscan.cli import bench, keys, report, scan, service

COMMAND_MODULES = (scan, bench, service, report, keys)
DESCRIPTION = "Find backdoor poison samples in ML training sets, locally or through the service."
USER_ERRORS = (DatasetFormatError, DetectionError, UnknownNameError, ValidationError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poisonscan", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and dispatch; user errors print one clear line and exit 2.

    A command that sets ``passthrough_options`` (a script with its own
    parser, e.g. ``bench-ct``) receives the options it did not declare.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough_options", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough = extra
    try:
        code: int = args.func(args)
    except USER_ERRORS as exc:
        print(f"poisonscan: error: {exc}", file=sys.stderr)
        return 2
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
