#!/usr/bin/env python3
"""hl7bridge driven by a real FHIR client library (fhirpy), as an application would use it.

    python3 tests/fhirpy_check.py http://127.0.0.1:8080

Creates, reads, updates, searches (following next links), counts, pages through history,
calls $everything and deletes; exits non-zero naming the first check that failed. Every
patient is invented. Run by the Rust test `fhirpy_client`.
"""

import secrets
import sys
import urllib.parse

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound


def check(condition, message):
    if not condition:
        print(f"fhirpy_check: FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main(base):
    client = SyncFHIRClient(base)
    run = secrets.token_hex(4)
    family = f"Fhirpy{run}"

    # create, read, update
    patient = client.resource(
        "Patient",
        identifier=[{"system": "urn:fhirpy:test", "value": run}],
        name=[{"family": family, "given": ["Imagined"]}],
        gender="female",
        birthDate="1985-03-04",
    )
    patient.save()
    check(patient.id, "create returned an id")
    read = client.reference("Patient", patient.id).to_resource()
    check(read["name"][0]["family"] == family, "read returns what was created")
    check(read["meta"]["versionId"] == "1", "the first version is 1")
    for gender in ["other", "male", "female", "unknown", "other"]:
        patient["gender"] = gender
        patient.save()
    read = client.reference("Patient", patient.id).to_resource()
    check(read["gender"] == "other" and read["meta"]["versionId"] == "6", f"updates: {read['meta']}")

    # search, by several parameters, following next links
    found = client.resources("Patient").search(family=family, gender="other").fetch_all()
    check([p.id for p in found] == [patient.id], f"search found {len(found)}")
    pager = f"Pager{run}"
    for n in range(23):
        client.resource("Patient", name=[{"family": pager, "given": [f"N{n}"]}]).save()
    every = client.resources("Patient").search(family=pager).limit(5).fetch_all()
    ids = [p.id for p in every]
    check(len(ids) == 23 and len(set(ids)) == 23, f"paging yielded {len(ids)} ({len(set(ids))} distinct)")
    check(client.resources("Patient").search(family=pager).count() == 23, "count")
    check(client.resources("Patient").search(identifier=f"urn:fhirpy:test|{run}").first().id == patient.id,
          "search by identifier")

    # history, two versions a page
    versions = []
    page = client.execute(f"Patient/{patient.id}/_history", method="get", params={"_count": 2})
    while True:
        versions.extend(e["resource"]["meta"]["versionId"] for e in page.get("entry", []) if "resource" in e)
        nxt = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        if not nxt:
            break
        url = urllib.parse.urlsplit(nxt[0])
        path = url.path[len(urllib.parse.urlsplit(base).path.rstrip("/")) + 1:]
        page = client.execute(path, method="get", params=dict(urllib.parse.parse_qsl(url.query)))
    check(versions == ["6", "5", "4", "3", "2", "1"], f"history pages: {versions}")

    # $everything
    observation = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        subject=patient.to_reference(),
        effectiveDateTime="2024-05-06T07:08:09Z",
        valueQuantity={"value": 36.6, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"},
    )
    observation.save()
    everything = client.execute(f"Patient/{patient.id}/$everything", method="get")
    kinds = sorted(e["resource"]["resourceType"] for e in everything["entry"])
    check(kinds == ["Observation", "Patient"], f"$everything holds {kinds}")
    by_code = client.resources("Observation").search(patient=patient.id, code="http://loinc.org|8310-5").fetch_all()
    check([o.id for o in by_code] == [observation.id], "observation search by patient and code")

    # delete
    observation.delete()
    try:
        client.reference("Observation", observation.id).to_resource()
        check(False, "a deleted resource cannot be read")
    except (ResourceNotFound, OperationOutcome):
        pass
    # a refused write surfaces as an OperationOutcome
    try:
        client.resource("Patient", gender=7).save()
        check(False, "an invalid resource is refused")
    except OperationOutcome:
        pass
    print("fhirpy_check: ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
