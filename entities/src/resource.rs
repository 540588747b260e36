//! The current version of each resource.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "resource")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub resource_type: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub version_id: i64,
    /// Microseconds since the Unix epoch; `meta.lastUpdated` in the content says the same.
    pub last_updated_us: i64,
    pub deleted: bool,
    /// SHA-256 of the content without `meta.versionId` and `meta.lastUpdated`: an unchanged
    /// resource written again keeps its version.
    pub content_hash: String,
    #[sea_orm(column_type = "Text")]
    pub content: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
