//! The backlog of resources whose search values a deferred import left to the reindex.
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
                    .table("index_backlog")
                    .col(string("resource_type"))
                    .col(string("resource_id"))
                    .primary_key(Index::create().col("resource_type").col("resource_id"))
                    .to_owned(),
            )
            .await
    }
}
