//! Search indexes beyond identifiers: dates and strings (tokens such as `code` and `status`
//! share `token_index`, references `resource_ref`), and the resource listing order that search
//! pages follow.
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
                    .table("date_index")
                    .col(string("resource_type"))
                    .col(string("resource_id"))
                    .col(string("param"))
                    .col(big_integer("low_us"))
                    .col(big_integer("high_us"))
                    .primary_key(
                        Index::create()
                            .col("resource_type")
                            .col("resource_id")
                            .col("param")
                            .col("low_us")
                            .col("high_us"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("string_index")
                    .col(string("resource_type"))
                    .col(string("resource_id"))
                    .col(string("param"))
                    .col(string("value"))
                    .col(string("normalized"))
                    .primary_key(
                        Index::create()
                            .col("resource_type")
                            .col("resource_id")
                            .col("param")
                            .col("value"),
                    )
                    .to_owned(),
            )
            .await?;
        let indexes = [
            Index::create()
                .name("date_index_lookup")
                .table("date_index")
                .col("resource_type")
                .col("param")
                .col("low_us")
                .to_owned(),
            Index::create()
                .name("string_index_lookup")
                .table("string_index")
                .col("resource_type")
                .col("param")
                .col("normalized")
                .to_owned(),
            // Type and system history, newest first.
            Index::create()
                .name("resource_version_recent")
                .table("resource_version")
                .col("last_updated_us")
                .col("resource_type")
                .to_owned(),
            // Search pages: one type's live resources in (lastUpdated, id) order.
            Index::create()
                .name("resource_listing")
                .table("resource")
                .col("resource_type")
                .col("last_updated_us")
                .col("id")
                .to_owned(),
        ];
        for index in indexes {
            manager.create_index(index).await?;
        }
        Ok(())
    }
}
