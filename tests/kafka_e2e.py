#!/usr/bin/env python3
"""hl7bridge's Kafka adapter seen from an independent client (confluent-kafka).

Run by the Rust test `kafka_broker` against a real Kafka-protocol broker (tansu) and a running
hl7bridge; usable by hand too:

    python3 tests/kafka_e2e.py topics BROKERS
    python3 tests/kafka_e2e.py check BROKERS http://127.0.0.1:8080

`topics` creates the four topics (the broker does not create them on demand). `check` produces
an HL7v2 result and a FHIR Patient (each with a traceparent header) and a poison record, waits
until the FHIR API serves what they hold, then reads the change feed and the dead-letter topic
and checks keys, headers and payloads. Exits non-zero, naming the failed check, otherwise.
Every patient here is invented.
"""

import json
import secrets
import sys
import time
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

HL7_TOPIC = "hl7v2.inbound"
FHIR_TOPIC = "fhir.inbound"
CHANGE_TOPIC = "fhir.changes"
DEAD_LETTER_TOPIC = "hl7bridge.dead-letter"
EXTENSION = "/StructureDefinition/w3c-trace-context"


def fail(message):
    print(f"kafka_e2e: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def create_topics(brokers):
    admin = AdminClient({"bootstrap.servers": brokers})
    topics = [NewTopic(t, num_partitions=1, replication_factor=1)
              for t in (HL7_TOPIC, FHIR_TOPIC, CHANGE_TOPIC, DEAD_LETTER_TOPIC)]
    for topic, future in admin.create_topics(topics, request_timeout=30).items():
        try:
            future.result()
        except Exception as err:  # an existing topic is fine
            if "TOPIC_ALREADY_EXISTS" not in str(err):
                fail(f"creating {topic}: {err}")
    print("kafka_e2e: topics created")


def oru(control_id, mrn):
    segments = [
        f"MSH|^~\\&|E2ELAB|E2EFAC|HL7BRIDGE|HOSP|20240701093000+0000||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||{mrn}^^^E2EFAC^MR||Imaginary^Ivo||19750505|M",
        "OBR|1|ORD1|FIL1|2345-7^Glucose^LN|||20240701090000+0000|||||||||||||||20240701092500+0000|||F",
        "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|3.9-6.1||||F|||20240701090000+0000",
    ]
    return "\r".join(segments).encode()


def traceparent():
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_for_patient(base, identifier):
    deadline = time.time() + 60
    while time.time() < deadline:
        bundle = get_json(f"{base}/Patient?identifier={identifier}")
        entries = bundle.get("entry", [])
        if entries:
            if len(entries) != 1:
                fail(f"{identifier}: {len(entries)} patients, expected one")
            return entries[0]["resource"]["id"]
        time.sleep(0.2)
    fail(f"{identifier} was not stored within 60 s")


def read(brokers, topic, done, timeout=60):
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"e2e-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    records = []
    deadline = time.time() + timeout
    try:
        while not done(records):
            if time.time() > deadline:
                fail(f"{topic}: expected records did not arrive; read {len(records)}")
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                print(f"kafka_e2e: consumer: {message.error()}", file=sys.stderr)
                continue
            records.append(message)
    finally:
        consumer.close()
    return records


def headers_of(message):
    return {k: (v.decode() if v is not None else "") for k, v in (message.headers() or [])}


def changed(message):
    entry = json.loads(message.value())["entry"][0]
    url = entry["request"]["url"]
    if "/" not in url:
        url = f"{url}/{entry['resource']['id']}"
    return url


def check(brokers, base):
    run = secrets.token_hex(4).upper()
    hl7_mrn, fhir_mrn = f"E2E{run}A", f"E2E{run}B"
    hl7_trace, fhir_trace = traceparent(), traceparent()
    poison = b'{"resourceType": "Patient", "name": [ this is not JSON'

    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    producer.produce(HL7_TOPIC, oru(f"E2E{run}", hl7_mrn),
                     headers=[("traceparent", hl7_trace.encode())])
    patient = {"resourceType": "Patient",
               "identifier": [{"system": "urn:e2e:mrn", "value": fhir_mrn}],
               "name": [{"family": "Fictive", "given": ["Fay"]}]}
    producer.produce(FHIR_TOPIC, json.dumps(patient).encode(), key=b"fhir-key",
                     headers=[("traceparent", fhir_trace.encode())])
    producer.produce(FHIR_TOPIC, poison, key=b"poison-key",
                     headers=[("traceparent", fhir_trace.encode())])
    if producer.flush(30) != 0:
        fail("the producer could not deliver the test records")

    hl7_patient = wait_for_patient(base, hl7_mrn)
    fhir_patient = wait_for_patient(base, f"urn:e2e:mrn|{fhir_mrn}")
    everything = get_json(f"{base}/Patient/{hl7_patient}/$everything")
    from_hl7 = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in everything.get("entry", []) if e["search"]["mode"] == "match"}
    if not any(r.startswith("Observation/") for r in from_hl7):
        fail(f"the HL7v2 result produced no Observation: {sorted(from_hl7)}")

    wanted = from_hl7 | {f"Patient/{fhir_patient}"}
    changes = read(brokers, CHANGE_TOPIC,
                   lambda records: wanted <= {changed(m) for m in records})
    for message in changes:
        resource = changed(message)
        if resource not in wanted:
            continue
        headers = headers_of(message)
        key = message.key().decode()
        bundle = json.loads(message.value())
        if bundle.get("type") != "history":
            fail(f"{resource}: change Bundle type {bundle.get('type')}")
        own_trace = hl7_trace if resource in from_hl7 else fhir_trace
        expected_key = f"Patient/{hl7_patient if resource in from_hl7 else fhir_patient}"
        if key != expected_key:
            fail(f"{resource}: key {key!r}, expected the patient id {expected_key!r}")
        header = headers.get("traceparent", "")
        if header[3:35] != own_trace[3:35]:
            fail(f"{resource}: traceparent {header!r} does not continue {own_trace!r}")
        extensions = [e for e in bundle["meta"].get("extension", [])
                      if e["url"].endswith(EXTENSION)]
        carried = {p["url"]: p["valueString"] for p in extensions[0]["extension"]} if extensions else {}
        if carried.get("traceparent") != header:
            fail(f"{resource}: Bundle.meta carries {carried}, the header {header!r}")
        if bundle["entry"][0]["resource"]["id"] != resource.split("/")[1]:
            fail(f"{resource}: the entry holds another resource")
    print(f"kafka_e2e: {len(wanted)} changes checked on {CHANGE_TOPIC}")

    dead = read(brokers, DEAD_LETTER_TOPIC,
                lambda records: any(m.value() == poison for m in records))
    message = next(m for m in dead if m.value() == poison)
    headers = headers_of(message)
    expectations = {
        "hl7bridge.source.topic": FHIR_TOPIC,
        "traceparent": fhir_trace,
    }
    for name, value in expectations.items():
        if headers.get(name) != value:
            fail(f"dead letter header {name}: {headers.get(name)!r}, expected {value!r}")
    if not headers.get("hl7bridge.error.code", "").startswith("json"):
        fail(f"dead letter error code {headers.get('hl7bridge.error.code')!r}")
    for name in ("hl7bridge.source.partition", "hl7bridge.source.offset"):
        if not headers.get(name, "").isdigit():
            fail(f"the dead letter's {name} is {headers.get(name)!r}")
    if message.key() != b"poison-key":
        fail(f"the dead letter's key is {message.key()!r}")
    print("kafka_e2e: dead letter checked")
    print("kafka_e2e: ok")


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("topics", "check"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "topics":
        create_topics(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3].rstrip("/"))


if __name__ == "__main__":
    main()
