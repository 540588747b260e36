//! OUL^R22 (specimen-oriented results): walks the specimen groups. Each SPM becomes a
//! Specimen, and the OBX directly after it Observations of the specimen; each OBR in the group
//! becomes a DiagnosticReport with its OBX as Observations, as in ORU^R01, all referring to the
//! Specimen. In OUL the ORC follows its OBR; it is found by looking ahead within the order.

use serde_json::Value;

use super::diagnostic_report::ReportBuilder;
use super::ids::KeyCounter;
use super::specimen::{SpecimenGroup, SpecimenParent};
use super::{patient_and_visit, Ctx, MapError, Mapped, Subject};
use crate::ingest::v2::Segment;

pub(super) fn map_oul(ctx: &Ctx<'_>) -> Result<Mapped, MapError> {
    if ctx.msg.segment("SPM").is_none() {
        return Err(MapError::missing_segment("SPM"));
    }
    let (subject, mut resources) = patient_and_visit(ctx)?;
    let segments: Vec<Segment<'_>> = ctx.msg.segments().collect();
    let mut walk = SpecimenWalk {
        specimen: None,
        report: None,
        specimen_keys: KeyCounter::default(),
        report_keys: KeyCounter::default(),
        resources: Vec::new(),
        specimen_ids: Vec::new(),
    };
    for (index, segment) in segments.iter().enumerate() {
        walk.visit(*segment, &segments[index + 1..], ctx, &subject)?;
    }
    walk.finish_specimen(ctx, &subject)?;
    resources.extend(walk.resources);
    let mut mapped = Mapped::new(resources, subject.patient);
    mapped.amended = walk.specimen_ids;
    Ok(mapped)
}

struct SpecimenWalk<'m> {
    specimen: Option<SpecimenGroup>,
    report: Option<ReportBuilder<'m>>,
    specimen_keys: KeyCounter,
    report_keys: KeyCounter,
    resources: Vec<Value>,
    /// Specimens amend their stored versions (see `specimen.rs`).
    specimen_ids: Vec<String>,
}

impl<'m> SpecimenWalk<'m> {
    fn visit(
        &mut self,
        segment: Segment<'m>,
        rest: &[Segment<'m>],
        ctx: &Ctx<'_>,
        subject: &Subject,
    ) -> Result<(), MapError> {
        match segment.name() {
            "SPM" => {
                self.finish_specimen(ctx, subject)?;
                let keys = &mut self.specimen_keys;
                let group =
                    SpecimenGroup::start(&segment, SpecimenParent::None, ctx, subject, keys)?;
                self.specimen = Some(group);
            }
            "OBR" => {
                self.finish_report(ctx, subject)?;
                let orc = order_control_after(rest);
                let report = ReportBuilder::start(segment, orc, ctx, &mut self.report_keys)?;
                let report = match &self.specimen {
                    Some(specimen) => report.on_specimen(&specimen.id),
                    None => report,
                };
                self.report = Some(report);
            }
            "OBX" => match (self.report.as_mut(), self.specimen.as_mut()) {
                (Some(report), _) => report.add_obx(&segment, ctx, subject)?,
                (None, Some(specimen)) => specimen.add_obx(&segment, ctx, subject)?,
                (None, None) => {}
            },
            "NTE" => match (self.report.as_mut(), self.specimen.as_mut()) {
                (Some(report), _) => report.add_note(&segment),
                (None, Some(specimen)) => specimen.add_note(&segment),
                (None, None) => {}
            },
            "ORC" | "TQ1" | "TQ2" | "PRT" | "TCD" | "SID" => {}
            _ => {
                if let Some(report) = self.report.as_mut() {
                    report.end_notes();
                }
                if let Some(specimen) = self.specimen.as_mut() {
                    specimen.end_notes();
                }
            }
        }
        Ok(())
    }

    fn finish_report(&mut self, ctx: &Ctx<'_>, subject: &Subject) -> Result<(), MapError> {
        if let Some(report) = self.report.take() {
            self.resources.extend(report.finish(ctx, subject)?);
        }
        Ok(())
    }

    fn finish_specimen(&mut self, ctx: &Ctx<'_>, subject: &Subject) -> Result<(), MapError> {
        self.finish_report(ctx, subject)?;
        if let Some(specimen) = self.specimen.take() {
            self.specimen_ids.push(specimen.id.clone());
            self.resources.extend(specimen.finish());
        }
        Ok(())
    }
}

/// The ORC of the order whose OBR was just read: the first ORC before the next OBR or SPM.
fn order_control_after<'m>(rest: &[Segment<'m>]) -> Option<Segment<'m>> {
    rest.iter()
        .take_while(|s| !matches!(s.name(), "OBR" | "SPM"))
        .find(|s| s.name() == "ORC")
        .copied()
}
