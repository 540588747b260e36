//! The change-feed outbox: one row per committed create, update or delete, written in the same
//! transaction as the change and published to Kafka by a relay.
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
                    .table("change_outbox")
                    .col(big_pk_auto("seq"))
                    .col(string("partition_key"))
                    .col(string("resource_type"))
                    .col(string("resource_id"))
                    .col(big_integer("version_id"))
                    .col(text("entry"))
                    .col(string("traceparent"))
                    .col(string("tracestate"))
                    .col(big_integer("created_us"))
                    .col(big_integer_null("published_us"))
                    .to_owned(),
            )
            .await?;
        // The relay's scan (unpublished, in commit order) and the pruning of published rows.
        manager
            .create_index(
                Index::create()
                    .name("change_outbox_pending")
                    .table("change_outbox")
                    .col("published_us")
                    .col("seq")
                    .to_owned(),
            )
            .await
    }
}
