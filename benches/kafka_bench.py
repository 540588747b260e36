#!/usr/bin/env python3
"""The Kafka client of figure 8 in benches/run.sh, with Python's confluent-kafka:

    python3 benches/kafka_bench.py produce BROKERS DIR
    python3 benches/kafka_bench.py check BROKERS

`produce` creates the server's four topics (the broker does not create them on demand; the
FHIR topic with PARTITIONS partitions, the others with one) and puts every line of
DIR/records.ndjson (one transaction Bundle, written by `hl7bridge-bench kafka-prepare`) on the
FHIR topic as one record, keyed by its patient, then writes what it did to DIR/produced.json.

`check` prints, as JSON, the server's consumer group's committed offsets on the FHIR topic,
summed over its partitions (on a fresh topic, the records the group is done with), and the
records on the dead-letter topic, read from its beginning to its end. It joins no group.
Counting records by their offsets alone would need ListOffsets, whose answer tansu 0.6.0
(in-memory storage) gets wrong: the base offset of a partition's last batch plus one, not the
offset after its last record.

The topic and group names are the server's defaults: run.sh clears every HL7BRIDGE_* variable.
Every patient in the records is invented.
"""

import json
import sys
import time
from pathlib import Path

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

HL7_TOPIC = "hl7v2.inbound"
FHIR_TOPIC = "fhir.inbound"
CHANGE_TOPIC = "fhir.changes"
DEAD_LETTER_TOPIC = "hl7bridge.dead-letter"
GROUP = "hl7bridge"
PARTITIONS = 4
TIMEOUT_S = 30


def fail(message):
    print(f"kafka_bench: {message}", file=sys.stderr)
    sys.exit(1)


def create_topics(brokers):
    admin = AdminClient({"bootstrap.servers": brokers})
    partitions = {FHIR_TOPIC: PARTITIONS}
    topics = [NewTopic(t, num_partitions=partitions.get(t, 1), replication_factor=1)
              for t in (HL7_TOPIC, FHIR_TOPIC, CHANGE_TOPIC, DEAD_LETTER_TOPIC)]
    for topic, future in admin.create_topics(topics, request_timeout=TIMEOUT_S).items():
        try:
            future.result()
        except KafkaException as err:
            fail(f"creating {topic}: {err}")


def produce(brokers, directory):
    lines = (Path(directory) / "records.ndjson").read_bytes().splitlines()
    create_topics(brokers)
    failures = []

    def delivered(err, _message):
        if err is not None:
            failures.append(str(err))

    producer = Producer({
        "bootstrap.servers": brokers,
        "acks": "all",
        "linger.ms": 5,
    })
    started = time.monotonic()
    size = 0
    for number, line in enumerate(lines):
        # One patient a record here; a producer keys one patient's records alike.
        producer.produce(FHIR_TOPIC, line, key=f"bench-patient-{number}".encode(),
                         on_delivery=delivered)
        producer.poll(0)
        size += len(line)
    left = producer.flush(TIMEOUT_S)
    seconds = time.monotonic() - started
    if left or failures:
        first = failures[0] if failures else "no answer"
        fail(f"{left + len(failures)} of {len(lines)} records were not delivered ({first})")
    result = {"topic": FHIR_TOPIC, "partitions": PARTITIONS, "records": len(lines),
              "bytes": size, "seconds": round(seconds, 3)}
    (Path(directory) / "produced.json").write_text(json.dumps(result) + "\n")
    print(f"kafka_bench: {len(lines)} records ({size / 1e6:.1f} MB) on {FHIR_TOPIC} "
          f"in {seconds:.1f} s", file=sys.stderr)


def partitions_of(consumer, topic):
    metadata = consumer.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None:
        fail(f"{topic}: {metadata.error if metadata else 'unknown topic'}")
    return [TopicPartition(topic, p) for p in sorted(metadata.partitions)]


def read_to_end(consumer, topic):
    """Records on every partition of `topic`, read from the beginning until each reports its end."""
    partitions = partitions_of(consumer, topic)
    consumer.assign([TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])
    at_end = set()
    records = 0
    deadline = time.monotonic() + TIMEOUT_S
    while len(at_end) < len(partitions):
        if time.monotonic() > deadline:
            fail(f"{topic}: not read to its end within {TIMEOUT_S} s ({records} records so far)")
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error() is None:
            records += 1
        elif message.error().code() == KafkaError._PARTITION_EOF:
            at_end.add(message.partition())
        else:
            fail(f"{topic}: {message.error()}")
    consumer.unassign()
    return records


def check(brokers):
    # Neither consumer subscribes, so neither joins a group, and neither commits anything:
    # the first names the server's group only to read its committed offsets.
    group = Consumer({"bootstrap.servers": brokers, "group.id": GROUP,
                      "enable.auto.commit": False})
    try:
        committed = 0
        for tp in group.committed(partitions_of(group, FHIR_TOPIC), timeout=TIMEOUT_S):
            if tp.error is not None:
                fail(f"committed offset of {tp.topic}/{tp.partition}: {tp.error}")
            committed += max(tp.offset, 0)
    finally:
        group.close()
    reader = Consumer({"bootstrap.servers": brokers, "group.id": f"{GROUP}-bench-reader",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        dead_letters = read_to_end(reader, DEAD_LETTER_TOPIC)
    finally:
        reader.close()
    print(json.dumps({"committed": committed, "dead_letters": dead_letters}))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "produce":
        produce(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
