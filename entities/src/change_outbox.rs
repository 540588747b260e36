//! Committed changes waiting to be published on the change feed, and recently published ones.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "change_outbox")]
pub struct Model {
    /// Assigned on insert; the relay publishes in this order.
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// The Kafka record key: `Patient/<id>` of the patient whose compartment holds the
    /// resource, else the resource's own `Type/id`.
    pub partition_key: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    /// The history Bundle entry as JSON text (`resource`, `request`, `response`).
    #[sea_orm(column_type = "Text")]
    pub entry: String,
    /// The W3C trace context of the write; empty when there was none.
    pub traceparent: String,
    pub tracestate: String,
    pub created_us: i64,
    /// When the broker acknowledged the record; `None` while pending.
    pub published_us: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
