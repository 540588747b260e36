//! The audit trail: one row per FHIR API interaction and per accepted HL7v2 message. Rows name
//! resources by reference only, never by content, so the trail holds no more patient data than
//! the ids it points at.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_event")]
pub struct Model {
    /// A UUID.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub recorded_us: i64,
    /// `fhir`, `mllp` or `kafka`: the door the interaction came through.
    pub source: String,
    /// FHIR's AuditEvent.action: C, R, U, D or E.
    pub action: String,
    /// The FHIR interaction (`read`, `search-type`, `create`, …) or `hl7v2-message`.
    pub subtype: String,
    /// FHIR's AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure.
    pub outcome: i32,
    /// Who: a token's subject, `anonymous` without authentication, or the HL7v2 sender.
    pub agent: String,
    /// The caller's network address.
    pub network: String,
    /// References of the resources concerned, as a JSON array of `Type/id` (or `Type` alone
    /// for a search).
    #[sea_orm(column_type = "Text")]
    pub entities: String,
    /// The patient whose record was concerned, when there is exactly one; else empty.
    pub patient_id: String,
    pub trace_id: String,
    /// The HTTP status, or the ACK code, and what was refused, without request values.
    #[sea_orm(column_type = "Text")]
    pub detail: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
