"""The dead-letter message, the same for every Kafka client library."""
from __future__ import annotations

import base64
import hashlib

import orjson

from streamseq.records import MAX_KEY_BYTES, DeadLetter


def dead_letter_json(letter: DeadLetter, max_payload_bytes: int = 262_144) -> bytes:
    """The dead-letter message value.

    ``payload`` is the original record as UTF-8 text when it decodes, else
    base64 (``payload_encoding`` says which); payloads over ``max_payload_bytes``
    are cut (``payload_truncated``), ``payload_size`` is the original size.

    >>> orjson.loads(dead_letter_json(DeadLetter("not_json: x", "obs", 2, 17, b"\\xff", "k")))["payload"]
    '/w=='
    """
    payload = letter.payload
    raw = payload.encode("utf-8") if isinstance(payload, str) else payload
    body: dict = {
        "reason": letter.reason[:4096],
        "source": letter.source,
        "partition": int(letter.partition),
        "offset": int(letter.offset),
        "key": bounded_key(letter.key),
    }
    if raw is None:
        body.update(payload=None, payload_encoding=None, payload_size=0, payload_truncated=False)
        return orjson.dumps(body)
    size = len(raw)
    cut = raw[:max_payload_bytes]
    try:
        text, encoding = cut.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        if size > max_payload_bytes and e.start >= len(cut) - 3:  # the cut split a character
            text, encoding = cut[: e.start].decode("utf-8"), "utf-8"
        else:
            text, encoding = base64.b64encode(cut).decode("ascii"), "base64"
    body.update(payload=text, payload_encoding=encoding, payload_size=size,
                payload_truncated=size > max_payload_bytes)
    return orjson.dumps(body)


def bounded_key(key: str | None) -> str | None:
    """A key as dead letters carry it: keys over MAX_KEY_BYTES are cut and marked with their size
    and digest, so one oversized key can't make a dead letter larger than the broker accepts.

    >>> len(bounded_key("k" * 5000).encode()) <= MAX_KEY_BYTES
    True
    """
    if key is None:
        return None
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.sha256(raw).hexdigest()[:16]
    tail = f"...[{len(raw)} bytes, sha256 {digest}]"
    return raw[: MAX_KEY_BYTES - len(tail)].decode("utf-8", "ignore") + tail
