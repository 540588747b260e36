#!/usr/bin/env python3
"""What answering in XML costs: times Patient/$everything for one invented patient with
250 resources (the Patient and 249 Observations with narrative) as spliced JSON, as indented
JSON (_pretty=true) and as XML (converted at the response boundary through fhirbolt).

    cargo build --release
    ./target/release/hl7bridge serve &        # any database
    python3 benches/format_cost.py [BASE_URL] [REPEATS]

Prints, per format, the body size and the median and 90th-percentile latency over the
repeats (one client, sequential, loopback).
"""
import json
import statistics
import sys
import time
import urllib.request

BASE = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080").rstrip("/")
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
OBSERVATIONS = 249


def seed():
    entries = [{"fullUrl": "urn:uuid:7d3c1a52-0000-4000-8000-000000000250",
                "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": "Benchley"}]}}]
    for n in range(OBSERVATIONS):
        entries.append({"request": {"method": "POST", "url": "Observation"}, "resource": {
            "resourceType": "Observation", "status": "final",
            "text": {"status": "generated", "div":
                     f"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Pulse {60 + n % 40} /min</p></div>"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
            "subject": {"reference": "urn:uuid:7d3c1a52-0000-4000-8000-000000000250"},
            "effectiveDateTime": f"2024-01-{1 + n % 28:02d}T08:{n % 60:02d}:00Z",
            "valueQuantity": {"value": 60 + n % 40, "unit": "/min",
                              "system": "http://unitsofmeasure.org", "code": "/min"}}})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    request = urllib.request.Request(BASE + "/", data=json.dumps(bundle).encode(),
                                      headers={"content-type": "application/fhir+json"})
    with urllib.request.urlopen(request) as response:
        answer = json.load(response)
    return answer["entry"][0]["response"]["location"].split("/")[1]


def timed(url):
    times, size = [], 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        with urllib.request.urlopen(url) as response:
            size = len(response.read())
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return size, statistics.median(times), times[int(len(times) * 0.9) - 1]


def main():
    patient = seed()
    url = f"{BASE}/Patient/{patient}/$everything"
    timed(url)  # warm the caches
    for name, query in [("json", ""), ("json _pretty", "?_pretty=true"), ("xml", "?_format=xml")]:
        size, median, p90 = timed(url + query)
        print(f"{name:<13} {size:>9} bytes  median {median:7.2f} ms  p90 {p90:7.2f} ms")


if __name__ == "__main__":
    main()
