"""The naive Kafka plugin for the overhead benchmark (``-c naive-kafka``).

What one writes after reading Dask's scheduler-plugin docs and the
confluent-kafka README: a ``transition`` hook that encodes a small JSON
message and calls ``produce`` then ``poll(0)`` (to serve delivery reports)
inside the scheduler's event loop, with the same producer settings as the
``kafka`` backend (idempotence, ``acks=all``, ``linger.ms``) and one
``flush`` when the scheduler closes. librdkafka batches and sends in its own
threads, so this is the cheapest naive plugin of all brokers; what remains
in the hook is the encoding, the ``produce`` call and the poll.

Uses ``--option kafka.topic=...`` and ``--option kafka.config={...}`` like
the backend; see ``raw_kafka.py`` for starting a Tansu broker to run against.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import Producer
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_eventbus import create_backend
from dask_eventbus.backends.kafka import KafkaOptions, producer_config


class NaiveKafkaPlugin(SchedulerPlugin):
    name = "naive-kafka"

    def __init__(self, topic: str, config: dict[str, Any]) -> None:
        self.topic = topic
        self.producer = Producer(config)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        message = {"key": str(key), "start": start, "finish": finish}
        self.producer.produce(self.topic, json.dumps(message).encode(), str(key))
        self.producer.poll(0)

    async def close(self) -> None:
        self.producer.flush(30)


def naive_kafka(options: dict[str, Any]) -> SchedulerPlugin:
    settings = create_backend("kafka", options).options
    assert isinstance(settings, KafkaOptions)
    config = producer_config(settings)
    config.pop("allow.auto.create.topics", None)  # the naive plugin relies on auto-creation
    return NaiveKafkaPlugin(settings.topic, config)


BASELINES = {"naive-kafka": ("kafka", naive_kafka)}
