//! The R4 Patient compartment (CompartmentDefinition `patient`), as element paths.
//!
//! The definition names search parameters; here each is written as the element path that
//! parameter reads, because membership is computed from the stored JSON at write time.
//! Types that the definition leaves out but that point at a patient through a plain `patient`
//! or `subject` element (Device, for one) are counted in too: `$everything` users expect a
//! patient's implants and the like, and HAPI and Blaze return them as well.

/// (resource type, element paths whose Patient reference puts the resource in the compartment)
const PATIENT_COMPARTMENT: &[(&str, &[&str])] = &[
    ("Account", &["subject"]),
    ("AdverseEvent", &["subject"]),
    ("AllergyIntolerance", &["patient", "recorder", "asserter"]),
    ("Appointment", &["participant.actor"]),
    ("AppointmentResponse", &["actor"]),
    ("AuditEvent", &["agent.who", "entity.what"]),
    ("Basic", &["subject", "author"]),
    ("BodyStructure", &["patient"]),
    ("CarePlan", &["subject", "activity.detail.performer"]),
    ("CareTeam", &["subject", "participant.member"]),
    ("ChargeItem", &["subject"]),
    ("Claim", &["patient", "payee.party"]),
    ("ClaimResponse", &["patient"]),
    ("ClinicalImpression", &["subject"]),
    ("Communication", &["subject", "sender", "recipient"]),
    (
        "CommunicationRequest",
        &["subject", "sender", "recipient", "requester"],
    ),
    ("Composition", &["subject", "author", "attester.party"]),
    ("Condition", &["subject", "asserter"]),
    ("Consent", &["patient"]),
    (
        "Coverage",
        &["policyHolder", "subscriber", "beneficiary", "payor"],
    ),
    ("CoverageEligibilityRequest", &["patient"]),
    ("CoverageEligibilityResponse", &["patient"]),
    ("DetectedIssue", &["patient"]),
    ("DeviceRequest", &["subject", "performer"]),
    ("DeviceUseStatement", &["subject"]),
    ("DiagnosticReport", &["subject"]),
    ("DocumentManifest", &["subject", "author", "recipient"]),
    ("DocumentReference", &["subject", "author"]),
    ("Encounter", &["subject"]),
    ("EnrollmentRequest", &["candidate"]),
    ("EpisodeOfCare", &["patient"]),
    ("ExplanationOfBenefit", &["patient", "payee.party"]),
    ("FamilyMemberHistory", &["patient"]),
    ("Flag", &["subject"]),
    ("Goal", &["subject"]),
    ("Group", &["member.entity"]),
    ("ImagingStudy", &["subject"]),
    ("Immunization", &["patient"]),
    ("ImmunizationEvaluation", &["patient"]),
    ("ImmunizationRecommendation", &["patient"]),
    ("Invoice", &["subject", "recipient"]),
    ("List", &["subject", "source"]),
    ("MeasureReport", &["subject"]),
    ("Media", &["subject"]),
    ("MedicationAdministration", &["subject", "performer.actor"]),
    ("MedicationDispense", &["subject", "receiver"]),
    ("MedicationRequest", &["subject"]),
    ("MedicationStatement", &["subject"]),
    ("MolecularSequence", &["patient"]),
    ("NutritionOrder", &["patient"]),
    ("Observation", &["subject", "performer"]),
    ("Patient", &["link.other"]),
    ("Person", &["link.target"]),
    ("Procedure", &["subject", "performer.actor"]),
    ("Provenance", &["target"]),
    ("QuestionnaireResponse", &["subject", "author"]),
    ("RelatedPerson", &["patient"]),
    ("RequestGroup", &["subject", "action.participant"]),
    ("ResearchSubject", &["individual"]),
    ("RiskAssessment", &["subject"]),
    ("Schedule", &["actor"]),
    ("ServiceRequest", &["subject", "performer"]),
    ("Specimen", &["subject"]),
    ("SupplyDelivery", &["patient"]),
    ("SupplyRequest", &["requester", "deliverTo"]),
    ("VisionPrescription", &["patient"]),
];

/// Whether the compartment definition names `resource_type` (its resources belong to a
/// patient's record when they point at one).
pub fn defines(resource_type: &str) -> bool {
    PATIENT_COMPARTMENT.iter().any(|(t, _)| *t == resource_type)
}

/// Paths that count for types outside the definition.
const FALLBACK_PATHS: &[&str] = &["patient", "subject"];

/// Whether a reference to a Patient at `path` inside a `resource_type` puts that resource in
/// the referenced patient's compartment.
pub fn is_membership_path(resource_type: &str, path: &str) -> bool {
    let paths = PATIENT_COMPARTMENT
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map_or(FALLBACK_PATHS, |(_, paths)| *paths);
    paths.contains(&path)
}

/// Resource types that `$everything` adds once, as `include`, when compartment members
/// reference them.
pub const SUPPORTING_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
    "Device",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_subject_is_membership_but_its_encounter_is_not() {
        assert!(is_membership_path("Observation", "subject"));
        assert!(!is_membership_path("Observation", "encounter"));
    }

    #[test]
    fn provenance_joins_through_its_target() {
        assert!(is_membership_path("Provenance", "target"));
    }

    #[test]
    fn a_device_outside_the_definition_joins_through_its_patient() {
        assert!(is_membership_path("Device", "patient"));
        assert!(!is_membership_path("Device", "owner"));
    }

    #[test]
    fn the_table_is_sorted_and_has_no_duplicates() {
        let names: Vec<_> = PATIENT_COMPARTMENT.iter().map(|(t, _)| *t).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}
