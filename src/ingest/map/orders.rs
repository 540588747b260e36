//! OML^O21 and ORM^O01: walks the order groups. Each ORC starts an order, whose TQ1, OBR,
//! NTE, OBX and SPM follow it; the order becomes a ServiceRequest, each OBX of the order an
//! Observation it names as `supportingInfo`, each SPM a Specimen (with its own OBX as
//! Observations of the specimen). An OBR without an ORC before it is an order of its own.
//!
//! An order group of an ORC alone (a status change: cancelled as requested, on hold) amends
//! the stored ServiceRequest rather than replacing it, so the code and details of the order
//! stay; Specimens always amend theirs (see `specimen.rs`). Pharmacy, dietary and supply
//! orders (RXO, ODS, ODT, RQD, RQ1) are not supported (200).

use serde_json::Value;

use super::ids::{resource_id, KeyCounter};
use super::observation::{ObservationList, ReportContext};
use super::service_request::{map_service_request, OrderLinks, OrderSegments};
use super::specimen::{SpecimenGroup, SpecimenParent};
use super::{patient_and_visit, Ctx, MapError, Mapped, Subject};
use crate::ingest::v2::Segment;

/// Order detail segments of orders this server does not map.
const UNSUPPORTED_DETAILS: &[&str] = &["RXO", "ODS", "ODT", "RQD", "RQ1"];

pub(super) fn map_orders(ctx: &Ctx<'_>) -> Result<Mapped, MapError> {
    let (subject, mut resources) = patient_and_visit(ctx)?;
    let mut walk = OrderWalk {
        current: None,
        order_keys: KeyCounter::default(),
        specimen_keys: KeyCounter::default(),
        resources: Vec::new(),
        amended: Vec::new(),
    };
    for segment in ctx.msg.segments() {
        walk.visit(segment, ctx, &subject)?;
    }
    walk.finish_order(ctx, &subject)?;
    if walk.resources.is_empty() {
        return Err(MapError::missing_segment("ORC"));
    }
    resources.extend(walk.resources);
    let mut mapped = Mapped::new(resources, subject.patient);
    mapped.amended = walk.amended;
    Ok(mapped)
}

struct OrderWalk<'m> {
    current: Option<OrderBuilder<'m>>,
    order_keys: KeyCounter,
    specimen_keys: KeyCounter,
    resources: Vec<Value>,
    amended: Vec<String>,
}

impl<'m> OrderWalk<'m> {
    fn visit(
        &mut self,
        segment: Segment<'m>,
        ctx: &Ctx<'_>,
        subject: &Subject,
    ) -> Result<(), MapError> {
        let name = segment.name();
        if UNSUPPORTED_DETAILS.contains(&name) {
            let message = format!("{name} orders are not supported; OBR orders are");
            return Err(MapError::at(200, &segment, 0, message));
        }
        match (name, self.current.as_mut()) {
            ("ORC", _) => {
                self.finish_order(ctx, subject)?;
                self.current = Some(OrderBuilder::new(Some(segment)));
            }
            ("OBR", Some(order)) if order.segments.obr.is_none() && !order.started() => {
                order.segments.obr = Some(segment);
            }
            ("OBR", _) => {
                self.finish_order(ctx, subject)?;
                let mut order = OrderBuilder::new(None);
                order.segments.obr = Some(segment);
                self.current = Some(order);
            }
            ("TQ1", Some(order)) if order.segments.tq1.is_none() => {
                order.segments.tq1 = Some(segment);
            }
            ("OBX", Some(order)) => {
                let keys = &mut self.order_keys;
                order.add_obx(&segment, ctx, subject, keys)?;
            }
            ("SPM", Some(order)) => {
                let keys = (&mut self.order_keys, &mut self.specimen_keys);
                order.add_specimen(&segment, ctx, subject, keys)?;
            }
            ("NTE", Some(order)) => order.add_note(segment),
            ("PRT" | "TCD", _) | (_, None) => {}
            (_, Some(order)) => order.end_notes(),
        }
        Ok(())
    }

    fn finish_order(&mut self, ctx: &Ctx<'_>, subject: &Subject) -> Result<(), MapError> {
        let Some(mut order) = self.current.take() else {
            return Ok(());
        };
        let id = order.id(ctx, &mut self.order_keys)?.to_owned();
        if order.segments.obr.is_none() {
            self.amended.push(id.clone());
        }
        let links = OrderLinks {
            supporting_info: order.observations.ids(),
            specimens: order.specimens.iter().map(|s| s.id.clone()).collect(),
        };
        let request = map_service_request(&order.segments, &id, ctx, subject, links, &order.notes)?;
        self.resources.push(request);
        self.resources.extend(order.observations.into_resources());
        for specimen in order.specimens {
            self.amended.push(specimen.id.clone());
            self.resources.extend(specimen.finish());
        }
        Ok(())
    }
}

/// Where an NTE goes: the order's notes, the last observation, or nowhere.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NoteTarget {
    Order,
    LastObservation,
    LastSpecimen,
    Nothing,
}

/// One order group being read.
struct OrderBuilder<'m> {
    segments: OrderSegments<'m>,
    /// The ServiceRequest's key and id, fixed once a child needs them.
    key: Option<(String, String)>,
    notes: Vec<Segment<'m>>,
    observations: ObservationList,
    specimens: Vec<SpecimenGroup>,
    notes_to: NoteTarget,
}

impl<'m> OrderBuilder<'m> {
    fn new(orc: Option<Segment<'m>>) -> Self {
        OrderBuilder {
            segments: OrderSegments {
                orc,
                tq1: None,
                obr: None,
            },
            key: None,
            notes: Vec::new(),
            observations: ObservationList::default(),
            specimens: Vec::new(),
            notes_to: NoteTarget::Order,
        }
    }

    /// Whether a child (OBX, SPM) fixed the order's key already.
    fn started(&self) -> bool {
        self.key.is_some()
    }

    fn key_and_id(
        &mut self,
        ctx: &Ctx<'_>,
        keys: &mut KeyCounter,
    ) -> Result<(&str, &str), MapError> {
        let pair = match self.key.take() {
            Some(pair) => pair,
            None => {
                let key = self.segments.key(ctx, keys)?;
                let id = resource_id(&key);
                (key, id)
            }
        };
        let (key, id) = self.key.insert(pair);
        Ok((key.as_str(), id.as_str()))
    }

    fn id(&mut self, ctx: &Ctx<'_>, keys: &mut KeyCounter) -> Result<&str, MapError> {
        Ok(self.key_and_id(ctx, keys)?.1)
    }

    fn add_obx(
        &mut self,
        obx: &Segment<'_>,
        ctx: &Ctx<'_>,
        subject: &Subject,
        keys: &mut KeyCounter,
    ) -> Result<(), MapError> {
        if let Some(specimen) = self.specimens.last_mut() {
            specimen.add_obx(obx, ctx, subject)?;
            self.notes_to = NoteTarget::LastSpecimen;
            return Ok(());
        }
        let (order_key, _) = self.key_and_id(ctx, keys)?;
        let order_key = order_key.to_owned();
        let report = ReportContext::of(subject);
        self.observations.add(obx, &order_key, None, &report, ctx)?;
        self.notes_to = NoteTarget::LastObservation;
        Ok(())
    }

    fn add_specimen(
        &mut self,
        spm: &Segment<'_>,
        ctx: &Ctx<'_>,
        subject: &Subject,
        (order_keys, specimen_keys): (&mut KeyCounter, &mut KeyCounter),
    ) -> Result<(), MapError> {
        let (key, id) = self.key_and_id(ctx, order_keys)?;
        let parent = SpecimenParent::Order {
            key,
            request_id: id,
        };
        let group = SpecimenGroup::start(spm, parent, ctx, subject, specimen_keys)?;
        self.specimens.push(group);
        self.notes_to = NoteTarget::Nothing;
        Ok(())
    }

    fn add_note(&mut self, nte: Segment<'m>) {
        match self.notes_to {
            NoteTarget::Order if self.segments.obr.is_some() => self.notes.push(nte),
            NoteTarget::LastObservation => self.observations.add_note(&nte),
            NoteTarget::LastSpecimen => {
                if let Some(specimen) = self.specimens.last_mut() {
                    specimen.add_note(&nte);
                }
            }
            _ => {}
        }
    }

    /// A segment other than NTE, PRT or TCD ends the notes of what came before it.
    fn end_notes(&mut self) {
        self.notes_to = NoteTarget::Nothing;
        self.observations.end_notes();
        if let Some(specimen) = self.specimens.last_mut() {
            specimen.end_notes();
        }
    }
}
