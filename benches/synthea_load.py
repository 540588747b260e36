#!/usr/bin/env python3
"""Loads the Synthea bundles of ../shared/corpus/fhir into a running hl7bridge and times the
load and Patient/$everything. A smoke measurement, not the benchmark suite (issue 7).

    cargo build --release
    ./target/release/hl7bridge serve &        # on an empty database
    python3 benches/synthea_load.py [BASE_URL] [EVERYTHING_REPEATS]

Prints one line per bundle: entries, load seconds, resources per second; for patient bundles
also the $everything size and its mean latency over the repeats (one client, sequential).
"""
import glob
import json
import os
import sys
import time
import urllib.request

BASE = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080").rstrip("/")
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "fhir")


def post_bundle(path):
    with open(path, "rb") as f:
        data = f.read()
    request = urllib.request.Request(
        BASE + "/", data=data, headers={"content-type": "application/fhir+json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request) as response:
        bundle = json.load(response)
    return time.perf_counter() - start, bundle


def everything_ms(patient_id):
    url = f"{BASE}/Patient/{patient_id}/$everything"
    start = time.perf_counter()
    for _ in range(REPEATS):
        with urllib.request.urlopen(url) as response:
            entries = len(json.load(response)["entry"])
    return entries, (time.perf_counter() - start) / REPEATS * 1000


def main():
    files = sorted(glob.glob(os.path.join(CORPUS, "synthea__*.json")))
    if not files:
        sys.exit(f"no Synthea bundles under {CORPUS}")
    shared = [f for f in files if "Information" in f]
    patients = [f for f in files if "Information" not in f]
    for path in sorted(shared, key=lambda p: "practitioner" in p):
        seconds, bundle = post_bundle(path)
        n = len(bundle["entry"])
        print(f"{os.path.basename(path)[:40]:40} {n:5} entries {seconds:6.3f} s {n / seconds:8.0f}/s")
    for path in patients:
        seconds, bundle = post_bundle(path)
        n = len(bundle["entry"])
        locations = [e["response"].get("location", "") for e in bundle["entry"]]
        patient = next(l.split("/")[1] for l in locations if l.startswith("Patient/"))
        entries, ms = everything_ms(patient)
        print(
            f"{os.path.basename(path)[:40]:40} {n:5} entries {seconds:6.3f} s {n / seconds:8.0f}/s"
            f"   $everything {entries} entries {ms:6.1f} ms"
        )


if __name__ == "__main__":
    main()
