//! Integration tests: the real server on ephemeral loopback ports, driven over HTTP and MLLP.
//!
//! The database is a fresh SQLite file per test, or, when `HL7BRIDGE_DATABASE_URL` points at
//! PostgreSQL, a fresh database created on that server per test.

mod auth;
mod bad_input;
mod collector_config;
mod corpus;
mod crash_safety;
mod deferred_index;
mod fhir_api;
mod fhir_conditional;
mod fhir_everything;
mod fhir_examples;
mod fhir_hostile;
mod fhir_patch;
mod fhir_rest;
mod fhir_search;
mod fhir_summary;
mod fhir_tracker_cases;
mod fhir_xml;
mod fhirpy_client;
mod group_commit;
mod import_cli;
mod kafka;
mod kafka_broker;
mod mllp_client;
mod mllp_enhanced;
mod mllp_hostile;
mod mllp_ingest;
mod mllp_lab_orders;
mod mllp_patient_records;
mod mllp_scheduling;
mod mllp_tracker_cases;
mod ops_endpoints;
mod otlp_export;
mod read_cache;
mod replay_cli;
mod replica;
mod send_cli;
mod support;
mod tls;
mod trace_journey;
