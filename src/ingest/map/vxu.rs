//! VXU^V04: walks the order groups. Each RXA becomes an Immunization, with the ORC before it
//! (optional before v2.5) and the RXR after it; each OBX of the group an Observation `partOf`
//! it (funding, eligibility, VIS dates, ...). OBX before the first RXA (patient observations
//! such as evidence of immunity) are not mapped.

use serde_json::Value;

use super::ids::{resource_id, KeyCounter};
use super::immunization::{immunization_key, map_immunization, ImmunizationSegments};
use super::observation::{ObservationList, ReportContext};
use super::{patient_and_visit, Ctx, MapError, Mapped, Subject};
use crate::ingest::v2::Segment;

pub(super) fn map_vxu(ctx: &Ctx<'_>) -> Result<Mapped, MapError> {
    let (subject, mut resources) = patient_and_visit(ctx)?;
    let mut walk = VaccinationWalk {
        orc: None,
        current: None,
        keys: KeyCounter::default(),
        resources: Vec::new(),
    };
    for segment in ctx.msg.segments() {
        walk.visit(segment, ctx, &subject)?;
    }
    walk.finish(ctx, &subject)?;
    if walk.resources.is_empty() {
        return Err(MapError::missing_segment("RXA"));
    }
    resources.extend(walk.resources);
    Ok(Mapped::new(resources, subject.patient))
}

struct VaccinationWalk<'m> {
    orc: Option<Segment<'m>>,
    current: Option<Vaccination<'m>>,
    keys: KeyCounter,
    resources: Vec<Value>,
}

/// One RXA being read, with its ORC, RXR and observations.
struct Vaccination<'m> {
    orc: Option<Segment<'m>>,
    rxa: Segment<'m>,
    rxr: Option<Segment<'m>>,
    key: String,
    id: String,
    observations: ObservationList,
}

impl<'m> VaccinationWalk<'m> {
    fn visit(
        &mut self,
        segment: Segment<'m>,
        ctx: &Ctx<'_>,
        subject: &Subject,
    ) -> Result<(), MapError> {
        match (segment.name(), self.current.as_mut()) {
            ("ORC", _) => {
                self.finish(ctx, subject)?;
                self.orc = Some(segment);
            }
            ("RXA", _) => {
                self.finish(ctx, subject)?;
                let orc = self.orc.take();
                let key = immunization_key(
                    orc.as_ref(),
                    &segment,
                    ctx,
                    &subject.patient,
                    &mut self.keys,
                )?;
                self.current = Some(Vaccination {
                    orc,
                    rxa: segment,
                    rxr: None,
                    id: resource_id(&key),
                    key,
                    observations: ObservationList::default(),
                });
            }
            ("RXR", Some(vaccination)) if vaccination.rxr.is_none() => {
                vaccination.rxr = Some(segment);
            }
            ("OBX", Some(vaccination)) => vaccination.add_obx(&segment, ctx, subject)?,
            ("NTE", Some(vaccination)) => vaccination.observations.add_note(&segment),
            ("PRT" | "TQ1" | "TQ2", _) | (_, None) => {}
            (_, Some(vaccination)) => vaccination.observations.end_notes(),
        }
        Ok(())
    }

    fn finish(&mut self, ctx: &Ctx<'_>, subject: &Subject) -> Result<(), MapError> {
        let Some(vaccination) = self.current.take() else {
            return Ok(());
        };
        let segments = ImmunizationSegments {
            orc: vaccination.orc.as_ref(),
            rxa: &vaccination.rxa,
            rxr: vaccination.rxr.as_ref(),
        };
        let immunization = map_immunization(&segments, &vaccination.id, ctx, subject)?;
        self.resources.push(immunization);
        self.resources
            .extend(vaccination.observations.into_resources());
        Ok(())
    }
}

impl Vaccination<'_> {
    fn add_obx(
        &mut self,
        obx: &Segment<'_>,
        ctx: &Ctx<'_>,
        subject: &Subject,
    ) -> Result<(), MapError> {
        let report = ReportContext {
            part_of: Some(&self.id),
            ..ReportContext::of(subject)
        };
        self.observations.add(obx, &self.key, None, &report, ctx)
    }
}
