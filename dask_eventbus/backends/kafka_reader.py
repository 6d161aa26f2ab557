"""Reading a Kafka topic back: every partition assigned to one consumer,
acknowledged offsets committed for a group. Apart from :mod:`.kafka` so that
a publisher process need not load the subscription runtime."""

from __future__ import annotations

import contextlib
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from .kafka import FETCH_MAX, _error_text, logger
from .subscription import Delivery, Subscription


class KafkaSubscription(Subscription):
    """Reads every assigned partition; commits acknowledged offsets for a group."""

    def __init__(self, consumer: Consumer, topic: str, *, commit: bool) -> None:
        super().__init__()
        self._consumer = consumer
        self._topic = topic
        self._commit = commit
        self._acked: dict[int, int] = {}

    def fetch(self, timeout: float) -> list[Delivery]:
        self._commit_acked(asynchronous=True)
        consume = self._consumer.consume
        # consume(n, timeout) waits until n records or the timeout: take what
        # is there, else wait for the first record only, then what followed.
        records = consume(FETCH_MAX, 0)
        if not records:
            records = consume(1, timeout)
            if records:
                records += consume(FETCH_MAX - 1, 0)
        deliveries = []
        for record in records:
            error = record.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                logger.debug("Kafka consumer: %s", error.str())
                continue
            deliveries.append(
                Delivery(record.value() or b"", (record.partition(), record.offset()))
            )
        return deliveries

    def ack(self, token: Any) -> None:
        if self._commit and token is not None:
            partition, offset = token
            self._acked[partition] = offset + 1

    def _commit_acked(self, *, asynchronous: bool) -> None:
        if not self._acked:
            return
        offsets = [TopicPartition(self._topic, p, o) for p, o in self._acked.items()]
        self._acked = {}
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            logger.warning("Could not commit Kafka consumer offsets: %s", _error_text(exc))

    def _close(self) -> None:
        try:
            self._commit_acked(asynchronous=False)
        finally:
            with contextlib.suppress(Exception):
                self._consumer.close()
