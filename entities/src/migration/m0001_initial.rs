//! The first schema: resources, their versions, the search and compartment indexes, and the raw
//! HL7v2 message store.
use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in tables() {
            manager.create_table(table).await?;
        }
        for index in indexes() {
            manager.create_index(index).await?;
        }
        Ok(())
    }
}

fn tables() -> Vec<TableCreateStatement> {
    vec![
        Table::create()
            .table("resource")
            .col(string("resource_type"))
            .col(string("id"))
            .col(big_integer("version_id"))
            .col(big_integer("last_updated_us"))
            .col(boolean("deleted"))
            .col(string("content_hash"))
            .col(text("content"))
            .primary_key(Index::create().col("resource_type").col("id"))
            .to_owned(),
        Table::create()
            .table("resource_version")
            .col(string("resource_type"))
            .col(string("id"))
            .col(big_integer("version_id"))
            .col(big_integer("last_updated_us"))
            .col(boolean("deleted"))
            .col(text("content"))
            .primary_key(
                Index::create()
                    .col("resource_type")
                    .col("id")
                    .col("version_id"),
            )
            .to_owned(),
        Table::create()
            .table("compartment")
            .col(string("patient_id"))
            .col(string("resource_type"))
            .col(string("resource_id"))
            .primary_key(
                Index::create()
                    .col("patient_id")
                    .col("resource_type")
                    .col("resource_id"),
            )
            .to_owned(),
        Table::create()
            .table("resource_ref")
            .col(string("source_type"))
            .col(string("source_id"))
            .col(string("path"))
            .col(string("target_type"))
            .col(string("target_id"))
            .primary_key(
                Index::create()
                    .col("source_type")
                    .col("source_id")
                    .col("path")
                    .col("target_type")
                    .col("target_id"),
            )
            .to_owned(),
        Table::create()
            .table("token_index")
            .col(string("resource_type"))
            .col(string("resource_id"))
            .col(string("param"))
            .col(string("system"))
            .col(string("value"))
            .primary_key(
                Index::create()
                    .col("resource_type")
                    .col("resource_id")
                    .col("param")
                    .col("system")
                    .col("value"),
            )
            .to_owned(),
        Table::create()
            .table("hl7_message")
            .col(string("id").primary_key())
            .col(big_integer("received_at_us"))
            .col(string("peer"))
            .col(string("sending_application"))
            .col(string("sending_facility"))
            .col(string("control_id"))
            .col(string("message_type"))
            .col(string("payload_hash"))
            .col(blob("raw"))
            .col(string("ack_code"))
            .col(text("ack"))
            .col(string("trace_id"))
            .to_owned(),
    ]
}

fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        // Removing a resource's memberships when it changes.
        Index::create()
            .name("compartment_member")
            .table("compartment")
            .col("resource_type")
            .col("resource_id")
            .to_owned(),
        // Which resources point at a given target.
        Index::create()
            .name("resource_ref_target")
            .table("resource_ref")
            .col("target_type")
            .col("target_id")
            .to_owned(),
        // identifier=[system|]value lookups.
        Index::create()
            .name("token_index_lookup")
            .table("token_index")
            .col("resource_type")
            .col("param")
            .col("value")
            .col("system")
            .to_owned(),
        // Duplicate detection by sender and control id.
        Index::create()
            .name("hl7_message_key")
            .table("hl7_message")
            .col("sending_application")
            .col("sending_facility")
            .col("control_id")
            .to_owned(),
    ]
}
