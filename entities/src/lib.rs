//! The hl7bridge schema: sea-orm entities and the migrations that create them. Nothing else.
//!
//! - `resource`: the current version of every FHIR resource, its canonical JSON kept as text so
//!   Bundles can be assembled by splicing stored bytes.
//! - `resource_version`: every version ever written, for vread and history.
//! - `compartment`: which patient compartments a resource belongs to (`$everything`).
//! - `resource_ref`: the references a resource holds, for one-hop includes.
//! - `token_index`: identifiers and codes, for token search and conditional references.
//! - `date_index`, `string_index`: date and string search values.
//! - `hl7_message`: every inbound HL7v2 message, accepted or not, kept raw with its ACK.
//! - `change_outbox`: committed changes for the Kafka change feed, written with the change.
//! - `audit_event`: the audit trail of FHIR interactions and accepted HL7v2 messages.
//! - `index_backlog`: resources whose search values an import deferred to the reindex.

pub mod audit_event;
pub mod change_outbox;
pub mod compartment;
pub mod date_index;
pub mod hl7_message;
pub mod index_backlog;
pub mod migration;
pub mod resource;
pub mod resource_ref;
pub mod resource_version;
pub mod string_index;
pub mod token_index;

pub use migration::Migrator;
pub use sea_orm_migration::MigratorTrait;
