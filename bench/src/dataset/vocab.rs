//! Invented names and a few real terminology codes, so generated records look like clinical
//! data (codes, units and plausible values) without describing anyone.

use crate::prng::Prng;

pub const GIVEN: &[&str] = &[
    "Arlo", "Brenna", "Caspian", "Delia", "Emrys", "Fenna", "Gideon", "Hollis", "Isolde", "Jory",
    "Kestrel", "Linnea", "Marlo", "Nerys", "Orrin", "Perrin", "Quillon", "Rowan", "Saoirse",
    "Tamsin", "Ulric", "Vesper", "Wren", "Yara", "Zephyr", "Anselm", "Briony", "Corin",
];

const FAMILY_HEAD: &[&str] = &[
    "Ash", "Bram", "Cald", "Dun", "Elm", "Fen", "Gar", "Hal", "Ivel", "Kel", "Lor", "Mar", "North",
    "Orm", "Pell", "Rav", "Stil", "Thorn", "Vale", "Wick",
];

const FAMILY_TAIL: &[&str] = &[
    "by", "croft", "dale", "field", "ford", "grove", "holm", "ley", "mere", "ridge", "stead",
    "ton", "well", "wood",
];

pub const CITIES: &[&str] = &[
    "Amberfold",
    "Brightwater",
    "Coldharbour",
    "Dunmere",
    "Eastwick",
    "Fallowmere",
    "Greyhaven",
    "Hollowbrook",
];

pub const STREETS: &[&str] = &["Lantern", "Quarry", "Orchard", "Mill", "Heron", "Juniper"];

pub fn family(prng: &mut Prng) -> String {
    format!("{}{}", prng.pick(FAMILY_HEAD), prng.pick(FAMILY_TAIL))
}

/// A measurement: LOINC code and name, UCUM unit, and a plausible range (tenths).
pub struct Measure {
    pub loinc: &'static str,
    pub name: &'static str,
    pub unit: &'static str,
    pub low_tenths: u64,
    pub high_tenths: u64,
    pub category: &'static str,
}

const fn measure(
    loinc: &'static str,
    name: &'static str,
    unit: &'static str,
    range: (u64, u64),
    category: &'static str,
) -> Measure {
    Measure {
        loinc,
        name,
        unit,
        low_tenths: range.0,
        high_tenths: range.1,
        category,
    }
}

pub const MEASURES: &[Measure] = &[
    measure("8302-2", "Body Height", "cm", (1450, 1950), "vital-signs"),
    measure("29463-7", "Body Weight", "kg", (450, 1200), "vital-signs"),
    measure(
        "39156-5",
        "Body mass index",
        "kg/m2",
        (180, 350),
        "vital-signs",
    ),
    measure("8867-4", "Heart rate", "/min", (550, 1100), "vital-signs"),
    measure(
        "9279-1",
        "Respiratory rate",
        "/min",
        (120, 200),
        "vital-signs",
    ),
    measure("2339-0", "Glucose", "mg/dL", (700, 1400), "laboratory"),
    measure("2093-3", "Cholesterol", "mg/dL", (1400, 2600), "laboratory"),
    measure("718-7", "Hemoglobin", "g/dL", (110, 175), "laboratory"),
    measure("6690-2", "Leukocytes", "10*3/uL", (35, 115), "laboratory"),
    measure("2947-0", "Sodium", "mmol/L", (1340, 1460), "laboratory"),
    measure("6298-4", "Potassium", "mmol/L", (34, 53), "laboratory"),
    measure("2160-0", "Creatinine", "mg/dL", (6, 14), "laboratory"),
    measure("17861-6", "Calcium", "mg/dL", (85, 105), "laboratory"),
    measure("2069-3", "Chloride", "mmol/L", (960, 1100), "laboratory"),
];

/// (code, display) pairs by coding system.
pub type Coded = (&'static str, &'static str);

pub const PANELS: &[Coded] = &[
    ("51990-0", "Basic metabolic panel"),
    ("58410-2", "CBC panel"),
    ("57698-3", "Lipid panel"),
    ("24323-8", "Comprehensive metabolic panel"),
];

pub const ENCOUNTER_TYPES: &[Coded] = &[
    ("185349003", "Encounter for check up"),
    ("162673000", "General examination of patient"),
    ("50849002", "Emergency room admission"),
    ("185345009", "Encounter for symptom"),
    ("698314001", "Consultation for treatment"),
];

pub const CONDITIONS: &[Coded] = &[
    ("444814009", "Viral sinusitis"),
    ("195662009", "Acute viral pharyngitis"),
    ("10509002", "Acute bronchitis"),
    ("15777000", "Prediabetes"),
    ("271737000", "Anemia"),
    ("59621000", "Essential hypertension"),
];

pub const PROCEDURES: &[Coded] = &[
    ("430193006", "Medication reconciliation"),
    ("710824005", "Assessment of health and social care needs"),
    ("171207006", "Depression screening"),
    ("23426006", "Measurement of respiratory function"),
];

pub const MEDICATIONS: &[Coded] = &[
    ("313782", "Acetaminophen 325 MG Oral Tablet"),
    ("308182", "Amoxicillin 250 MG Oral Capsule"),
    ("197361", "Amlodipine 5 MG Oral Tablet"),
    ("310965", "Ibuprofen 200 MG Oral Tablet"),
    (
        "860975",
        "Metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
];

pub const VACCINES: &[Coded] = &[
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("08", "Hep B, adolescent or pediatric"),
    ("113", "Td (adult) preservative free"),
    ("133", "Pneumococcal conjugate PCV 13"),
    ("208", "SARS-COV-2 (COVID-19) vaccine, mRNA"),
];
