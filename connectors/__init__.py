"""Sources and sinks: file replay (polars), files, Kafka (kafka-python)."""
