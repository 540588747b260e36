//! Date search values: each as the half-open range of instants it covers, in microseconds since
//! the Unix epoch (`2024-03` covers the whole month; an open Period end is `i64::MAX`).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "date_index")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub resource_type: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub resource_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub param: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub low_us: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub high_us: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
