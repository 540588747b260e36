//! Schema migrations, applied in order on start. A migration, once released, never changes.
use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_change_outbox;
mod m0003_search_index;
mod m0004_audit_event;
mod m0005_index_backlog;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_change_outbox::Migration),
            Box::new(m0003_search_index::Migration),
            Box::new(m0004_audit_event::Migration),
            Box::new(m0005_index_backlog::Migration),
        ]
    }
}
