//! Every inbound HL7v2 message, accepted or rejected, with the ACK that answered it.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "hl7_message")]
pub struct Model {
    /// A UUID assigned on receipt.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub received_at_us: i64,
    pub peer: String,
    /// MSH-3, MSH-4 and MSH-10 as sent; empty when unreadable.
    pub sending_application: String,
    pub sending_facility: String,
    pub control_id: String,
    pub message_type: String,
    /// SHA-256 of the raw bytes.
    pub payload_hash: String,
    #[sea_orm(column_type = "Blob")]
    pub raw: Vec<u8>,
    pub ack_code: String,
    #[sea_orm(column_type = "Text")]
    pub ack: String,
    pub trace_id: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
