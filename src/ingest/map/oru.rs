//! ORU^R01: walks the segments in order, grouping each OBR with the ORC before it and the OBX,
//! SPM and NTE after it.

use serde_json::Value;

use super::diagnostic_report::ReportBuilder;
use super::ids::KeyCounter;
use super::patient::PID_3;
use super::{patient_and_visit, Ctx, MapError, Mapped, Subject};
use crate::ingest::v2::{Message, Segment};

pub(super) fn map_oru(ctx: &Ctx<'_>) -> Result<Mapped, MapError> {
    let (subject, mut resources) = patient_and_visit(ctx)?;
    resources.extend(map_reports(ctx, &subject)?);
    Ok(Mapped::new(resources, subject.patient))
}

/// The message's one PID; a second patient group is not supported.
pub(super) fn only_patient<'m>(msg: &'m Message) -> Result<Segment<'m>, MapError> {
    let mut pids = msg.segments_named("PID");
    let pid = pids
        .next()
        .ok_or_else(|| MapError::missing_segment("PID"))?;
    match pids.next() {
        Some(second) => {
            let message = "more than one patient in one message is not supported".to_owned();
            Err(MapError::at(207, &second, PID_3, message))
        }
        None => Ok(pid),
    }
}

/// The reports of the message, each followed by its observations.
struct ReportWalk<'m> {
    orc: Option<Segment<'m>>,
    current: Option<ReportBuilder<'m>>,
    report_keys: KeyCounter,
    resources: Vec<Value>,
}

fn map_reports(ctx: &Ctx<'_>, subject: &Subject) -> Result<Vec<Value>, MapError> {
    let mut walk = ReportWalk {
        orc: None,
        current: None,
        report_keys: KeyCounter::default(),
        resources: Vec::new(),
    };
    for segment in ctx.msg.segments() {
        walk.visit(segment, ctx, subject)?;
    }
    walk.finish_report(ctx, subject)?;
    Ok(walk.resources)
}

impl<'m> ReportWalk<'m> {
    fn visit(
        &mut self,
        segment: Segment<'m>,
        ctx: &Ctx<'_>,
        subject: &Subject,
    ) -> Result<(), MapError> {
        match (segment.name(), self.current.as_mut()) {
            ("ORC", _) => {
                self.finish_report(ctx, subject)?;
                self.orc = Some(segment);
            }
            ("OBR", _) => {
                self.finish_report(ctx, subject)?;
                let orc = self.orc.take();
                let report = ReportBuilder::start(segment, orc, ctx, &mut self.report_keys)?;
                self.current = Some(report);
            }
            ("OBX", Some(report)) => report.add_obx(&segment, ctx, subject)?,
            // Dropping it would acknowledge a result that is stored nowhere.
            ("OBX", None) => {
                let message = "an OBX before any OBR belongs to no report".to_owned();
                return Err(MapError::at(100, &segment, 0, message));
            }
            ("SPM", Some(report)) => report.enter_specimen(&segment),
            ("NTE", Some(report)) => report.add_note(&segment),
            ("PRT", _) | (_, None) => {}
            (_, Some(report)) => report.end_notes(),
        }
        Ok(())
    }

    fn finish_report(&mut self, ctx: &Ctx<'_>, subject: &Subject) -> Result<(), MapError> {
        if let Some(report) = self.current.take() {
            self.resources.extend(report.finish(ctx, subject)?);
        }
        Ok(())
    }
}
