//! Literal references held by a resource (`Type/id` after resolution), one row per distinct
//! target and element path.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "resource_ref")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub source_type: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub source_id: String,
    /// Element path without indices, e.g. `participant.individual`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub path: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub target_type: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub target_id: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
