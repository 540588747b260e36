//! Match URLs: the search criteria of conditional creates (`ifNoneExist`), conditional updates
//! and deletes, and conditional references (`Organization?identifier=http://x|123`).
//!
//! A match URL may use any search parameter this server indexes for the type, and `_id` and
//! `_lastUpdated`. A parameter it does not know, and any result parameter (`_count`, `_sort`),
//! is refused with 400: ignoring a criterion would widen the match, and a conditional update
//! would then overwrite a resource the client never meant.
//!
//! A value that is the `fullUrl` of an entry of the same Bundle (`patient=urn:uuid:…`) stands
//! for the resource that entry creates or matches, and is replaced by its `Type/id` before
//! the match is made.
//!
//! A `+` in a match URL is a plus sign, not a space: these URLs come from Bundle entries, not
//! from HTML forms, and identifier values and time offsets contain real plus signs.

use super::error::FhirError;
use super::id::is_resource_type;
use super::search::{match_criteria, split_alternatives, token_alternatives};
use crate::store::{Criterion, IdentifierLookup};

/// A match URL as read: its type and its (name, value) pairs, percent-decoded, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MatchUrl {
    pub resource_type: String,
    pairs: Vec<(String, String)>,
}

/// What answers a match URL once the `fullUrl`s in it are resolved.
#[derive(Debug, Clone)]
pub enum Match {
    /// A single `identifier` criterion with one value: a Bundle's lookups of this kind (a
    /// Synthea patient Bundle holds hundreds) are answered together by one query.
    Identifier(IdentifierLookup),
    /// Anything else: a search.
    Search(SearchMatch),
}

/// A match URL answered by a search.
#[derive(Debug, Clone)]
pub struct SearchMatch {
    pub resource_type: String,
    /// The resolved match URL, canonical enough to key the answers of one Bundle.
    pub key: String,
    pub criteria: Vec<Criterion>,
}

impl Match {
    pub fn resource_type(&self) -> &str {
        match self {
            Match::Identifier(lookup) => &lookup.resource_type,
            Match::Search(search) => &search.resource_type,
        }
    }
}

/// What a value in a match URL stands for: `Some("Type/id")` for an entry's `fullUrl`, `None`
/// for a value to be taken as written.
pub type Placeholders<'a> = &'a dyn Fn(&str) -> Result<Option<String>, FhirError>;

impl MatchUrl {
    /// Reads the query part of a match URL for `resource_type`; a leading `?` or `Type?` is
    /// allowed. Every parameter is checked now, so an unknown one fails the entry before
    /// anything is planned.
    pub fn parse(resource_type: &str, query: &str) -> Result<MatchUrl, FhirError> {
        let query = query.trim_start_matches('?');
        let query = match query.split_once('?') {
            Some((prefix, rest)) if prefix == resource_type => rest,
            _ => query,
        };
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let (name, value) = (decoded(name)?, decoded(value)?);
            if name.is_empty() {
                return Err(FhirError::invalid("a criterion without a name"));
            }
            if value.is_empty() {
                return Err(FhirError::invalid(format!(
                    "the criterion {name} has no value"
                )));
            }
            pairs.push((name, value));
        }
        if pairs.is_empty() {
            return Err(FhirError::invalid(
                "a match URL needs at least one search criterion",
            ));
        }
        let url = MatchUrl {
            resource_type: resource_type.to_string(),
            pairs,
        };
        url.resolve(&|_| Ok(None))?;
        Ok(url)
    }

    /// The match, with every value of a reference parameter that names a `fullUrl` replaced
    /// by what `placeholders` says it stands for. Values of other parameters are taken as
    /// written: `identifier=urn:uuid:…` is an identifier, not a placeholder.
    pub fn resolve(&self, placeholders: Placeholders) -> Result<Match, FhirError> {
        let mut pairs = Vec::with_capacity(self.pairs.len());
        for (name, value) in &self.pairs {
            if !self.is_reference(name) {
                pairs.push((name.clone(), value.clone()));
                continue;
            }
            let resolved = split_alternatives(value)
                .into_iter()
                .map(|v| Ok(escaped(&placeholders(&v)?.unwrap_or(v))))
                .collect::<Result<Vec<_>, FhirError>>()?;
            pairs.push((name.clone(), resolved.join(",")));
        }
        if self.is_identifier_only() {
            let token = token_alternatives(&pairs[0].1).remove(0);
            return Ok(Match::Identifier(identifier_lookup(
                &self.resource_type,
                token,
            )?));
        }
        let criteria = match_criteria(&self.resource_type, &pairs)?;
        let query: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
        Ok(Match::Search(SearchMatch {
            resource_type: self.resource_type.clone(),
            key: format!("{}?{}", self.resource_type, query.join("&")),
            criteria,
        }))
    }

    /// Whether this is one `identifier` criterion with one value (matched on identifiers
    /// alone, with no other index rows).
    pub fn is_identifier_only(&self) -> bool {
        matches!(self.pairs.as_slice(),
            [(name, value)] if name == "identifier" && split_alternatives(value).len() == 1)
    }

    /// The id a condition of `_id` alone names, when it names one valid id.
    pub fn sole_id(&self) -> Option<String> {
        let [(name, value)] = self.pairs.as_slice() else {
            return None;
        };
        let mut ids = split_alternatives(value);
        let one = name == "_id" && ids.len() == 1 && super::id::is_valid_id(&ids[0]);
        one.then(|| ids.remove(0))
    }

    /// Whether `name` is a reference parameter of the type, whose values may be `fullUrl`s.
    fn is_reference(&self, name: &str) -> bool {
        crate::store::search_params::find(&self.resource_type, name)
            .is_some_and(|p| matches!(p.kind, crate::store::search_params::Kind::Reference { .. }))
    }

    /// The values of reference parameters, split at commas: where `fullUrl`s may stand.
    pub fn reference_values(&self) -> Vec<String> {
        let references = self.pairs.iter().filter(|(n, _)| self.is_reference(n));
        references
            .flat_map(|(_, v)| split_alternatives(v))
            .collect()
    }
}

/// Parses a conditional reference, `Type?criteria`; `None` for any other reference.
pub fn parse_conditional_reference(reference: &str) -> Option<Result<MatchUrl, FhirError>> {
    let (resource_type, query) = reference.split_once('?')?;
    if !is_resource_type(resource_type) {
        return Some(Err(FhirError::invalid(format!(
            "conditional reference to unknown resource type {resource_type:?}"
        ))));
    }
    Some(MatchUrl::parse(resource_type, query))
}

/// `identifier=[system|]value` for one type.
/// `value` written as one search value: the characters search syntax gives a meaning
/// escaped, so that splitting it again yields `value`.
fn escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '|' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn identifier_lookup(
    resource_type: &str,
    (system, value): (Option<String>, Option<String>),
) -> Result<IdentifierLookup, FhirError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Err(FhirError::invalid("identifier criteria without a value"));
    };
    Ok(IdentifierLookup {
        resource_type: resource_type.to_string(),
        system,
        value,
    })
}

fn decoded(text: &str) -> Result<String, FhirError> {
    percent_decode(text)
        .filter(|t| !t.chars().any(char::is_control))
        .ok_or_else(|| FhirError::invalid("malformed percent-encoding or a control character"))
}

/// Decodes `%XX` escapes; `+` stays a plus. `None` for a malformed escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::ResponseError;

    fn lookup(resource_type: &str, query: &str) -> IdentifierLookup {
        match MatchUrl::parse(resource_type, query)
            .unwrap()
            .resolve(&|_| Ok(None))
            .unwrap()
        {
            Match::Identifier(lookup) => lookup,
            other => panic!("not an identifier lookup: {other:?}"),
        }
    }

    #[test]
    fn a_conditional_reference_with_a_system_is_split() {
        let url = parse_conditional_reference("Organization?identifier=https://x.test/id|a1")
            .unwrap()
            .unwrap();
        assert_eq!(url.resource_type, "Organization");
        let Match::Identifier(lookup) = url.resolve(&|_| Ok(None)).unwrap() else {
            panic!("one identifier is a lookup");
        };
        assert_eq!(lookup.system.as_deref(), Some("https://x.test/id"));
        assert_eq!(lookup.value, "a1");
    }

    #[test]
    fn a_plus_is_a_plus_and_percent_escapes_are_decoded() {
        let lookup = lookup("Patient", "identifier=urn:x%7Ca+b");
        assert_eq!(lookup.system.as_deref(), Some("urn:x"));
        assert_eq!(lookup.value, "a+b");
    }

    #[test]
    fn a_leading_bar_means_no_system() {
        assert_eq!(
            lookup("Patient", "identifier=%7C42").system.as_deref(),
            Some("")
        );
    }

    #[test]
    fn a_leading_type_and_question_mark_are_allowed() {
        assert_eq!(lookup("Patient", "Patient?identifier=7").value, "7");
        assert_eq!(lookup("Patient", "?identifier=7").value, "7");
    }

    #[test]
    fn several_criteria_make_a_search_keyed_by_their_resolved_text() {
        let url = MatchUrl::parse(
            "Observation",
            "patient=urn:uuid:p1&code=http://loinc.org|1-8",
        )
        .unwrap();
        let resolved = url
            .resolve(&|v| Ok((v == "urn:uuid:p1").then(|| "Patient/abc".to_string())))
            .unwrap();
        let Match::Search(search) = resolved else {
            panic!("two criteria are a search");
        };
        assert_eq!(
            search.key,
            "Observation?patient=Patient/abc&code=http://loinc.org|1-8"
        );
        assert_eq!(search.criteria.len(), 2);
    }

    #[test]
    fn unknown_and_result_parameters_are_refused_not_ignored() {
        for query in [
            "nickname=x",
            "family=x&_count=1",
            "_sort=birthdate&family=x",
        ] {
            let err = MatchUrl::parse("Patient", query).unwrap_err();
            assert_eq!(err.status_code(), actix_web::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn empty_criteria_are_refused() {
        for query in ["", "?", "identifier=", "family=x&gender="] {
            assert!(MatchUrl::parse("Patient", query).is_err(), "{query:?}");
        }
    }

    #[test]
    fn a_plain_reference_is_not_conditional() {
        assert!(parse_conditional_reference("Patient/1").is_none());
    }

    #[test]
    fn a_broken_escape_is_refused() {
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
    }
}
