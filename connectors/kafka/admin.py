"""Creating the pipeline's topics: idempotent, and strict about partition counts.

The changelog must be co-partitioned with the source topic, so a topic that
exists with another partition count is an error, never silently accepted.
"""
from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka import errors as kerr

from ..common.errors import KafkaConnectorError, TopicMismatchError
from ..common.topics import TopicSpec, changelog_spec
from .settings import KafkaSettings

__all__ = ["TopicMismatchError", "TopicSpec", "changelog_spec", "ensure_topics", "topic_partition_counts"]

log = logging.getLogger(__name__)


def ensure_topics(settings: KafkaSettings, specs: list[TopicSpec], timeout_s: float = 30.0) -> dict[str, str]:
    """Create the missing topics; {name: "created" | "exists"}.

    Raises TopicMismatchError naming every topic whose partition count differs
    (existing topics are never altered; their config is left as it is).
    """
    admin = KafkaAdminClient(**settings.admin_kwargs())
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        result = {s.name: "exists" for s in specs if s.name in existing}
        if missing:
            response = admin.create_topics(
                {s.name: {"num_partitions": s.partitions, "replication_factor": s.replication_factor,
                          "configs": dict(s.config)} for s in missing},
                timeout_ms=int(timeout_s * 1000), raise_errors=False,
            )
            errors = {t["name"]: t for t in response.get("topics", [])}
            for s in missing:
                code = errors.get(s.name, {}).get("error_code", 0)
                if code == 0:
                    result[s.name] = "created"
                elif code == kerr.TopicAlreadyExistsError.errno:  # created meanwhile by another worker
                    result[s.name] = "exists"
                else:
                    message = errors[s.name].get("error_message") or kerr.for_code(code).__name__
                    raise KafkaConnectorError(f"cannot create topic {s.name!r}: {message}")
            admin.wait_for_topics([s.name for s in missing if result[s.name] == "created"],
                                  timeout_ms=int(timeout_s * 1000))
        counts = topic_partition_counts(admin, [s.name for s in specs])
        wrong = [f"{s.name!r} has {counts.get(s.name)} partitions, expected {s.partitions}"
                 for s in specs if counts.get(s.name) != s.partitions]
        if wrong:
            raise TopicMismatchError("; ".join(wrong))
        for name, outcome in result.items():
            log.info("topic %s: %s", name, outcome)
        return result
    finally:
        admin.close()


def topic_partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names) if t.get("error_code", 0) == 0}
