"""Connectors are found by name through entry points, so the engine never imports them."""
from __future__ import annotations

from importlib.metadata import entry_points

from .errors import MissingExtra, StreamseqError


def load(group: str, name: str):
    for ep in entry_points(group=f"streamseq.{group}"):
        if ep.name == name:
            try:
                return ep.load()
            except ImportError as exc:  # an optional dependency of this connector is missing
                missing = MissingExtra.of(exc, f"the {name} {group[:-1]}")
                if missing is None:
                    raise
                raise missing from exc
    raise StreamseqError(
        f"no {group[:-1]} named {name!r} is installed (entry point group streamseq.{group}); "
        "is the streamseq package installed with its connectors?"
    )
