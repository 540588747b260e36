//! The benchmark's data, generated from a seed: nothing is read from disk, and the same seed
//! and patient count give the same bytes on every machine.

pub mod fhir;
pub mod hl7;
mod vocab;

use bytes::Bytes;

pub use fhir::Supporting;

/// The FHIR side: one supporting Bundle and one transaction Bundle per patient, serialised.
pub struct Dataset {
    pub supporting: Supporting,
    pub supporting_bundle: Bytes,
    pub bundles: Vec<Bytes>,
    /// Resources in each of `bundles`.
    pub resources: Vec<usize>,
}

impl Dataset {
    pub fn generate(seed: u64, patients: u64) -> Dataset {
        let supporting = Supporting::DEFAULT;
        let (bundles, resources) = (0..patients)
            .map(|index| {
                let generated = fhir::patient_bundle(seed, index, supporting);
                (to_bytes(&generated.bundle), generated.resources)
            })
            .unzip();
        Dataset {
            supporting,
            supporting_bundle: to_bytes(&fhir::supporting_bundle(seed, supporting)),
            bundles,
            resources,
        }
    }

    pub fn total_resources(&self) -> usize {
        self.resources.iter().sum()
    }

    pub fn total_bytes(&self) -> usize {
        self.bundles.iter().map(Bytes::len).sum()
    }
}

fn to_bytes(value: &serde_json::Value) -> Bytes {
    Bytes::from(value.to_string())
}
