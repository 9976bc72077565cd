"""Feeding a topic from any SourcePartition: see connectors.common.feed (the same for every client)."""
from ..common.feed import feed, observation_messages

__all__ = ["feed", "observation_messages"]
