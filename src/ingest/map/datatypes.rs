//! HL7 data types (CWE, CX, EI, NM, ED) to FHIR data types, shared by the resource mappers,
//! and a JSON builder that never writes the empty strings, arrays or objects FHIR forbids.

use serde_json::{Map, Number, Value};

use crate::ingest::v2::{Repetition, Segment};

/// Coding-system names (HL7 table 0396) with a known FHIR system URI. `HL7nnnn` names become
/// `http://terminology.hl7.org/CodeSystem/v2-nnnn`; any other name becomes
/// `urn:hl7bridge:v2:codesystem:<name, percent-encoded>`.
const CODING_SYSTEMS: &[(&str, &str)] = &[
    ("LN", "http://loinc.org"),
    ("SCT", "http://snomed.info/sct"),
    ("UCUM", "http://unitsofmeasure.org"),
    ("I9", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("I9C", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("I9CDX", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("I10", "http://hl7.org/fhir/sid/icd-10"),
    ("I10C", "http://hl7.org/fhir/sid/icd-10-cm"),
    ("C4", "http://www.ama-assn.org/go/cpt"),
    ("CPT", "http://www.ama-assn.org/go/cpt"),
    ("CVX", "http://hl7.org/fhir/sid/cvx"),
    ("NDC", "http://hl7.org/fhir/sid/ndc"),
    ("RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm"),
    ("CDCREC", "urn:oid:2.16.840.1.113883.6.238"),
];

/// HL7 table 0203 identifier types written as codes of the FHIR v2-0203 system; any other
/// CX-5 value is kept as `type.text`.
const IDENTIFIER_TYPES_0203: &[&str] = &[
    "AN", "BR", "DL", "DN", "EI", "EN", "FGN", "FILL", "JHN", "MA", "MC", "MR", "NH", "NI", "NIIP",
    "NPI", "PGN", "PI", "PLAC", "PN", "PPN", "PRN", "PT", "RRI", "SB", "SN", "SR", "SS", "TAX",
    "U", "VN", "XX",
];

const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// A JSON object under construction; absent and empty values are left out.
#[derive(Debug, Default)]
pub(super) struct Obj(Map<String, Value>);

impl Obj {
    pub(super) fn new() -> Self {
        Obj(Map::new())
    }

    pub(super) fn resource(resource_type: &str, id: &str) -> Self {
        Obj::new()
            .text("resourceType", Some(resource_type))
            .text("id", Some(id))
    }

    /// A string element, left out when absent or blank.
    pub(super) fn text(mut self, key: &str, value: Option<impl Into<String>>) -> Self {
        let value = value.map(Into::into).filter(|v| !v.trim().is_empty());
        if let Some(value) = value {
            self.0.insert(key.to_owned(), Value::String(value));
        }
        self
    }

    /// Any element, left out when absent, an empty object or an empty array.
    pub(super) fn value(mut self, key: &str, value: Option<Value>) -> Self {
        if let Some(value) = value.filter(|v| !is_empty_json(v)) {
            self.0.insert(key.to_owned(), value);
        }
        self
    }

    /// An array element, left out when empty.
    pub(super) fn list(self, key: &str, values: Vec<Value>) -> Self {
        self.value(key, Some(Value::Array(values)))
    }

    pub(super) fn build(self) -> Value {
        Value::Object(self.0)
    }

    /// The object, or `None` when nothing was written into it.
    pub(super) fn build_non_empty(self) -> Option<Value> {
        Some(self.build()).filter(|v| !is_empty_json(v))
    }
}

fn is_empty_json(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::String(text) => text.is_empty(),
        _ => false,
    }
}

/// `{"reference": "<type>/<id>"}`.
pub(super) fn reference(resource_type: &str, id: &str) -> Value {
    Obj::new()
        .text("reference", Some(format!("{resource_type}/{id}")))
        .build()
}

/// A FHIR `code`: no leading, trailing or repeated whitespace.
pub(super) fn code(text: Option<String>) -> Option<String> {
    let code = text?.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(code).filter(|c| !c.is_empty())
}

/// A string value without surrounding whitespace, `None` when nothing is left.
pub(super) fn trimmed(text: Option<String>) -> Option<String> {
    Some(text?.trim().to_owned()).filter(|t| !t.is_empty())
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URN parts.
pub(super) fn uri_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The FHIR system URI for an HL7 coding-system name.
pub(super) fn coding_system_uri(name: &str) -> String {
    let name = name.trim();
    if let Some((_, uri)) = CODING_SYSTEMS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    {
        return (*uri).to_owned();
    }
    let table = name
        .strip_prefix("HL7")
        .filter(|t| t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit()));
    match table {
        Some(table) => format!("http://terminology.hl7.org/CodeSystem/v2-{table}"),
        None => format!("urn:hl7bridge:v2:codesystem:{}", uri_part(name)),
    }
}

/// CE/CWE/CNE to a CodeableConcept: codings from components 1-3 and 4-6, text from the
/// original text (component 9) or else the text of the first triplet.
pub(super) fn codeable_concept(cwe: &Repetition<'_>) -> Option<Value> {
    let codings: Vec<Value> = [(1, 2, 3), (4, 5, 6)]
        .into_iter()
        .filter_map(|(c, d, s)| coding(cwe, c, d, s))
        .collect();
    let text = cwe.component(9).or_else(|| cwe.component(2));
    Obj::new()
        .list("coding", codings)
        .text("text", text)
        .build_non_empty()
}

/// The first repetition of a CWE field as a CodeableConcept.
pub(super) fn first_cwe(seg: &Segment<'_>, field: usize) -> Option<Value> {
    let rep = seg.field(field)?.repetition(1)?;
    codeable_concept(&rep)
}

/// Every repetition of a CWE field, each a CodeableConcept.
pub(super) fn all_cwe(seg: &Segment<'_>, field: usize) -> Vec<Value> {
    let Some(field) = seg.field(field) else {
        return Vec::new();
    };
    let concepts = field.repetitions().filter_map(|r| codeable_concept(&r));
    concepts.collect()
}

fn coding(cwe: &Repetition<'_>, code_at: usize, display: usize, system: usize) -> Option<Value> {
    let code = code(cwe.component(code_at))?;
    let system = cwe.component(system).map(|name| coding_system_uri(&name));
    let coding = Obj::new().text("system", system).text("code", Some(code));
    Some(coding.text("display", cwe.component(display)).build())
}

/// An identifier read from a CX (PID-3, PV1-19) or an EI (OBR-2, OBR-3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ident {
    pub(super) value: String,
    /// From the assigning authority, by [`super::ids::authority_system`].
    pub(super) system: Option<String>,
    /// CX-5 identifier type code.
    pub(super) type_code: Option<String>,
}

impl Ident {
    /// CX: value in component 1, assigning authority (HD) in the subcomponents of
    /// component 4, type in component 5.
    pub(super) fn from_cx(cx: &Repetition<'_>) -> Option<Ident> {
        Ident::with_authority_in(cx, 4, 5)
    }

    /// XCN: id number in component 1, assigning authority (HD) in the subcomponents of
    /// component 9, identifier type in component 13.
    pub(super) fn from_xcn(xcn: &Repetition<'_>) -> Option<Ident> {
        Ident::with_authority_in(xcn, 9, 13)
    }

    /// Value in component 1, the assigning authority's HD in the subcomponents of component
    /// `authority`, the identifier type in component `type_at`.
    fn with_authority_in(rep: &Repetition<'_>, authority: usize, type_at: usize) -> Option<Ident> {
        let hd = |m| rep.subcomponent(authority, m);
        Some(Ident {
            value: trimmed(rep.component(1))?,
            system: super::ids::authority_system(hd(1), hd(2), hd(3)),
            type_code: code(rep.component(type_at)),
        })
    }

    /// EI: value in component 1, namespace, universal id and its type in components 2-4.
    pub(super) fn from_ei(ei: &Repetition<'_>) -> Option<Ident> {
        let system =
            super::ids::authority_system(ei.component(2), ei.component(3), ei.component(4));
        Some(Ident {
            value: trimmed(ei.component(1))?,
            system,
            type_code: None,
        })
    }

    /// The EI in the first repetition of `seg`-`field` (an order number).
    pub(super) fn ei_at(seg: &Segment<'_>, field: usize) -> Option<Ident> {
        let rep = seg.field(field)?.repetition(1)?;
        Ident::from_ei(&rep)
    }

    /// EI written in the subcomponents of component `n` (EIP: 1 placer's, 2 filler's part).
    pub(super) fn from_ei_in(rep: &Repetition<'_>, n: usize) -> Option<Ident> {
        let sub = |m| rep.subcomponent(n, m);
        Some(Ident {
            value: trimmed(sub(1))?,
            system: super::ids::authority_system(sub(2), sub(3), sub(4)),
            type_code: None,
        })
    }

    pub(super) fn with_type(mut self, type_code: &str) -> Ident {
        self.type_code = Some(type_code.to_owned());
        self
    }

    pub(super) fn to_fhir(&self) -> Value {
        Obj::new()
            .value("type", self.type_code.as_deref().map(identifier_type))
            .text("system", self.system.clone())
            .text("value", Some(self.value.clone()))
            .build()
    }
}

fn identifier_type(code: &str) -> Value {
    if IDENTIFIER_TYPES_0203.contains(&code) {
        let coding = Obj::new()
            .text("system", Some(V2_0203))
            .text("code", Some(code));
        Obj::new().list("coding", vec![coding.build()]).build()
    } else {
        Obj::new().text("text", Some(code)).build()
    }
}

/// An HL7 NM as a FHIR decimal, keeping its digits: `072.40` becomes `72.40`.
pub(super) fn decimal(raw: &str) -> Option<Number> {
    let raw = raw.trim();
    let (negative, unsigned) = match raw.as_bytes().first()? {
        b'-' => (true, &raw[1..]),
        b'+' => (false, &raw[1..]),
        _ => (false, raw),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (integer.is_empty() && fraction.is_empty()) || !digits(integer) || !digits(fraction) {
        return None;
    }
    let integer = integer.trim_start_matches('0');
    let mut text = String::from(if negative { "-" } else { "" });
    text.push_str(if integer.is_empty() { "0" } else { integer });
    if !fraction.is_empty() {
        text.push('.');
        text.push_str(fraction);
    }
    serde_json::from_str(&text).ok()
}

/// Standard base64 with padding, for Attachment.data.
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            let sextet = (n >> (18 - 6 * i)) & 0x3F;
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[sextet as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// Whether `text` is standard padded base64.
pub(super) fn is_base64(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    text.len() % 4 == 0
        && padding <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::v2::parse_message;

    fn with_field<T>(field: &str, f: impl FnOnce(&Repetition<'_>) -> T) -> T {
        let text = format!("MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5.1\rOBX|1|CWE|{field}");
        let msg = parse_message(text.as_bytes()).unwrap();
        let rep = msg
            .segment("OBX")
            .unwrap()
            .field(3)
            .unwrap()
            .repetition(1)
            .unwrap();
        f(&rep)
    }

    #[test]
    fn coding_system_table_maps_known_names_and_others_to_urns() {
        for (name, uri) in CODING_SYSTEMS {
            assert_eq!(coding_system_uri(name), *uri);
        }
        assert_eq!(coding_system_uri("ln"), "http://loinc.org");
        assert_eq!(
            coding_system_uri("HL70078"),
            "http://terminology.hl7.org/CodeSystem/v2-0078"
        );
        assert_eq!(
            coding_system_uri("99 LAB"),
            "urn:hl7bridge:v2:codesystem:99%20LAB"
        );
        assert_eq!(
            coding_system_uri("HL7007"),
            "urn:hl7bridge:v2:codesystem:HL7007"
        );
    }

    #[test]
    fn cwe_becomes_a_codeable_concept_with_original_text() {
        let cc = with_field(
            "260373001^Detected^SCT^LA11882-0^Detected^LN^^^Virus found",
            codeable_concept,
        );
        let cc = cc.unwrap();
        assert_eq!(cc["coding"][0]["system"], "http://snomed.info/sct");
        assert_eq!(cc["coding"][1]["code"], "LA11882-0");
        assert_eq!(cc["text"], "Virus found");
    }

    #[test]
    fn cwe_with_only_original_text_has_text_only() {
        let cc = with_field("^^^^^^^^Chief complaint", codeable_concept).unwrap();
        assert_eq!(cc, serde_json::json!({"text": "Chief complaint"}));
        assert_eq!(with_field("^^^", codeable_concept), None);
    }

    #[test]
    fn identifier_types_in_table_0203_are_coded() {
        for code in IDENTIFIER_TYPES_0203 {
            assert_eq!(identifier_type(code)["coding"][0]["system"], V2_0203);
        }
        assert_eq!(
            identifier_type("INS-C"),
            serde_json::json!({"text": "INS-C"})
        );
    }

    #[test]
    fn cx_reads_value_authority_and_type() {
        let ident = with_field("M-1^^^HOSP&1.2.840.1&ISO^MR", Ident::from_cx).unwrap();
        assert_eq!(ident.value, "M-1");
        assert_eq!(ident.system.as_deref(), Some("urn:oid:1.2.840.1"));
        assert_eq!(ident.type_code.as_deref(), Some("MR"));
        assert_eq!(with_field("^^^HOSP", Ident::from_cx), None);
    }

    #[test]
    fn decimals_keep_their_digits() {
        let text = |raw| decimal(raw).map(|n| n.to_string());
        assert_eq!(text("072.40").as_deref(), Some("72.40"));
        assert_eq!(text("+5").as_deref(), Some("5"));
        assert_eq!(text("-.5").as_deref(), Some("-0.5"));
        assert_eq!(text("5.").as_deref(), Some("5"));
        assert_eq!(text("000").as_deref(), Some("0"));
        assert_eq!(text(" 12 ").as_deref(), Some("12"));
        for bad in ["", ".", "1e5", "1.2.3", "<5", "--1", "12a"] {
            assert_eq!(decimal(bad), None, "{bad}");
        }
    }

    #[test]
    fn base64_matches_the_standard_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded);
            assert!(is_base64(encoded));
        }
        assert!(!is_base64("Zm9"));
        assert!(!is_base64("Zm9v YmFy"));
    }

    #[test]
    fn json_builder_leaves_out_empty_values() {
        let obj = Obj::new()
            .text("a", Some(""))
            .text("b", Some("  "))
            .text("c", None::<String>)
            .list("d", vec![])
            .value("e", Some(serde_json::json!({})))
            .text("f", Some("x"));
        assert_eq!(obj.build(), serde_json::json!({"f": "x"}));
        assert_eq!(Obj::new().build_non_empty(), None);
    }

    #[test]
    fn uri_parts_are_percent_encoded() {
        assert_eq!(uri_part("IA PHIMS|Stage:1"), "IA%20PHIMS%7CStage%3A1");
        assert_eq!(uri_part("Zoë"), "Zo%C3%AB");
    }
}
