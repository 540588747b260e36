//! Search criteria in conditional operations and conditional references
//! (`Organization?identifier=http://x|123`). Only `identifier` is supported for now.
//!
//! A `+` in a match URL is a plus sign, not a space: these URLs come from Bundle entries, not
//! from HTML forms, and identifier values and time offsets contain real plus signs.

use super::error::FhirError;
use super::id::is_resource_type;
use crate::store::IdentifierLookup;

/// Parses `Type?identifier=[system|]value`.
pub fn parse_conditional_reference(reference: &str) -> Option<Result<IdentifierLookup, FhirError>> {
    let (resource_type, query) = reference.split_once('?')?;
    if !is_resource_type(resource_type) {
        return Some(Err(FhirError::invalid(format!(
            "conditional reference to unknown resource type {resource_type:?}"
        ))));
    }
    Some(parse_identifier_query(resource_type, query))
}

/// Parses the query part of a conditional create or update for `resource_type`.
pub fn parse_identifier_query(
    resource_type: &str,
    query: &str,
) -> Result<IdentifierLookup, FhirError> {
    let mut params = query.split('&').filter(|p| !p.is_empty());
    let (Some(param), None) = (params.next(), params.next()) else {
        return Err(unsupported(query));
    };
    let Some(("identifier", raw)) = param.split_once('=') else {
        return Err(unsupported(query));
    };
    let token = percent_decode(raw)
        .filter(|t| !t.chars().any(char::is_control))
        .ok_or_else(|| FhirError::invalid("malformed percent-encoding or a control character"))?;
    let (system, value) = match token.split_once('|') {
        Some((system, value)) => (Some(system.to_string()), value),
        None => (None, token.as_str()),
    };
    if value.is_empty() {
        return Err(FhirError::invalid("identifier criteria without a value"));
    }
    Ok(IdentifierLookup {
        resource_type: resource_type.to_string(),
        system,
        value: value.to_string(),
    })
}

fn unsupported(query: &str) -> FhirError {
    let names: Vec<&str> = query
        .split('&')
        .map(|p| p.split('=').next().unwrap_or(""))
        .collect();
    FhirError::invalid(format!(
        "only a single identifier criterion is supported here, got: {}",
        names.join(", ")
    ))
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

    #[test]
    fn a_conditional_reference_with_a_system_is_split() {
        let lookup = parse_conditional_reference("Organization?identifier=https://x.test/id|a1")
            .unwrap()
            .unwrap();
        assert_eq!(lookup.resource_type, "Organization");
        assert_eq!(lookup.system.as_deref(), Some("https://x.test/id"));
        assert_eq!(lookup.value, "a1");
    }

    #[test]
    fn a_plus_is_a_plus_and_percent_escapes_are_decoded() {
        let lookup = parse_identifier_query("Patient", "identifier=urn:x%7Ca+b").unwrap();
        assert_eq!(lookup.system.as_deref(), Some("urn:x"));
        assert_eq!(lookup.value, "a+b");
    }

    #[test]
    fn a_leading_bar_means_no_system() {
        let lookup = parse_identifier_query("Patient", "identifier=%7C42").unwrap();
        assert_eq!(lookup.system.as_deref(), Some(""));
    }

    #[test]
    fn other_criteria_are_refused_clearly() {
        let err = parse_identifier_query("Patient", "name=x&birthdate=2000").unwrap_err();
        assert!(err.to_string().contains("name, birthdate"), "{err}");
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
