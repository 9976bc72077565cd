"""``streamseq`` command line: replay backtests, the stream worker, the trainer, and tools.

Exit codes: 0 done (a worker: stopped cleanly); 1 a runtime failure (e.g. the
broker stayed unreachable, a fenced producer), one line on stderr; 2 bad usage
(a missing file or column, an invalid setting), one line on stderr before any
work starts; 3 a worker's shutdown deadline passed; 130 interrupted.

Every command module registers its own subcommands and imports what it needs
only when it runs, so ``streamseq --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import MissingExtra, StreamseqError, UsageError

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__
    from . import demo, replay, tools, train, worker

    p = argparse.ArgumentParser(prog="streamseq", description="Streaming time-series forecasting: replay backtests, "
                                "the stream worker, the trainer, and tools.")
    p.add_argument("--version", action="version", version=f"streamseq {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (replay, worker, train, demo, tools):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return int(a.fn(a) or 0)
    except UsageError as exc:
        print(f"streamseq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamseqError as exc:
        print(f"streamseq: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("streamseq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as exc:  # an optional dependency of this command is not installed
        missing = MissingExtra.of(exc, f"streamseq {a.command}")
        if missing is None:
            raise
        print(f"streamseq: error: {missing}", file=sys.stderr)
        return EXIT_USAGE


__all__ = ["main", "build_parser", "EXIT_RUNTIME", "EXIT_USAGE"]
