//! The audit trail (`audit_event`), listed newest first overall and per patient.
use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("audit_event")
                    .col(string("id").primary_key())
                    .col(big_integer("recorded_us"))
                    .col(string("source"))
                    .col(string("action"))
                    .col(string("subtype"))
                    .col(integer("outcome"))
                    .col(string("agent"))
                    .col(string("network"))
                    .col(text("entities"))
                    .col(string("patient_id"))
                    .col(string("trace_id"))
                    .col(text("detail"))
                    .to_owned(),
            )
            .await?;
        let indexes = [
            Index::create()
                .name("audit_event_recent")
                .table("audit_event")
                .col("recorded_us")
                .col("id")
                .to_owned(),
            Index::create()
                .name("audit_event_patient")
                .table("audit_event")
                .col("patient_id")
                .col("recorded_us")
                .to_owned(),
        ];
        for index in indexes {
            manager.create_index(index).await?;
        }
        Ok(())
    }
}
