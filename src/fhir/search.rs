//! `GET /{type}?…` (and `POST /{type}/_search`): the query string read into store criteria,
//! paging parameters, and what was not understood.

use crate::store::search_params::{date_range, find, Kind};
use crate::store::{Criterion, DateCriterion, Order, Prefix, StrMatch};

use serde_json::{Map, Value};

use super::error::FhirError;
use super::summary::Summary;

/// Results per page unless `_count` says otherwise, and the most `_count` may ask for.
pub const DEFAULT_COUNT: u64 = 50;
/// The default most matches on one page (`HL7BRIDGE_MAX_COUNT`).
pub const MAX_COUNT: u64 = 1000;
/// Criteria one search may combine, and alternatives one criterion may list.
const MAX_CRITERIA: usize = 16;
const MAX_ALTERNATIVES: usize = 100;
/// `_include` and `_revinclude` parameters one search may name, together.
const MAX_INCLUDES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// Only when it costs nothing (a first page that holds everything).
    Cheap,
    None,
    Accurate,
}

/// A search request, read.
#[derive(Debug)]
pub struct SearchRequest {
    pub criteria: Vec<Criterion>,
    /// The parameters applied, as (name, value) for the links; paging parameters excluded.
    pub applied: Vec<(String, String)>,
    pub count: u64,
    pub order: Order,
    pub cursor: Option<(i64, String)>,
    pub total: Total,
    /// `_summary=count`: the total only.
    pub count_only: bool,
    /// `_elements`: the top-level elements matches keep (besides id and meta).
    pub elements: Option<Vec<String>>,
    /// `_summary=true|text|data`: what every returned resource keeps.
    pub summary: Option<Summary>,
    /// `_include`: (paths, target type) of the searched type's reference parameters.
    pub includes: Vec<(Vec<String>, Option<String>)>,
    /// `_revinclude`: (source type, paths) of another type's reference parameter.
    pub revincludes: Vec<(String, Vec<String>)>,
    /// Parameters (with their modifiers) that were not understood.
    pub unknown: Vec<String>,
    /// The cap on `_count`.
    max_count: u64,
    resource_type: String,
}

impl SearchRequest {
    /// Reads decoded (name, value) pairs for `resource_type`.
    /// Reads the parameters; `_count` is capped at `max_count` (`HL7BRIDGE_MAX_COUNT`).
    pub fn read(
        resource_type: &str,
        pairs: Vec<(String, String)>,
        max_count: u64,
    ) -> Result<Self, FhirError> {
        let mut request = SearchRequest {
            criteria: Vec::new(),
            applied: Vec::new(),
            count: DEFAULT_COUNT.min(max_count),
            order: Order::LastUpdatedAscending,
            cursor: None,
            total: Total::Cheap,
            count_only: false,
            elements: None,
            summary: None,
            includes: Vec::new(),
            revincludes: Vec::new(),
            unknown: Vec::new(),
            max_count,
            resource_type: resource_type.to_string(),
        };
        for (name, value) in pairs {
            if request.read_control(&name, &value)? {
                continue;
            }
            if name == "_include" || name == "_revinclude" {
                if request
                    .applied
                    .iter()
                    .any(|(n, v)| *n == name && *v == value)
                {
                    continue;
                }
                let Some((source, paths, target)) = include_target(&value) else {
                    request.unknown.push(format!("{name}={value}"));
                    continue;
                };
                if name == "_include" && source == resource_type {
                    request.includes.push((paths, target));
                } else if name == "_revinclude" {
                    request.revincludes.push((source, paths));
                } else {
                    request.unknown.push(format!("{name}={value}"));
                    continue;
                }
                if request.includes.len() + request.revincludes.len() > MAX_INCLUDES {
                    return Err(FhirError::invalid(format!(
                        "at most {MAX_INCLUDES} _include and _revinclude parameters are accepted"
                    )));
                }
                request.applied.push((name, value));
                continue;
            }
            // An empty value asks for nothing: the parameter is ignored.
            if value.is_empty() {
                continue;
            }
            match criterion(resource_type, &name, &value)? {
                Some(c) => {
                    // A date's unencoded `+` arrived as a space: links carry the plus.
                    let value = match c {
                        Criterion::Date { .. } | Criterion::LastUpdated(_) => {
                            value.replace(' ', "+")
                        }
                        _ => value,
                    };
                    request.criteria.push(c);
                    request.applied.push((name, value));
                }
                None => request.unknown.push(name),
            }
        }
        if request.criteria.len() > MAX_CRITERIA {
            return Err(FhirError::invalid(format!(
                "at most {MAX_CRITERIA} search criteria are accepted"
            )));
        }
        Ok(request)
    }

    /// `_sort`: `_lastUpdated` or one of the type's date parameters, `-` first for descending.
    /// One key: a second could not keep keyset paging (and no other key is indexed to sort by).
    fn sort_order(&self, value: &str) -> Result<Order, FhirError> {
        let (descending, name) = match value.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, value),
        };
        match name {
            "_lastUpdated" if descending => return Ok(Order::LastUpdatedDescending),
            "_lastUpdated" => return Ok(Order::LastUpdatedAscending),
            _ => {}
        }
        match find(&self.resource_type, name) {
            Some(param) if param.kind == Kind::Date => Ok(Order::Date {
                param: param.name,
                descending,
            }),
            _ => Err(FhirError::invalid_at(
                format!(
                    "_sort={value} is not supported: sort by one key, _lastUpdated or a date \
                     parameter of {}, with - for descending",
                    self.resource_type
                ),
                "_sort",
            )),
        }
    }

    /// Result parameters (`_count`, `_sort`, …); `true` when `name` was one.
    fn read_control(&mut self, name: &str, value: &str) -> Result<bool, FhirError> {
        match name {
            "_count" => {
                let count: u64 = value.parse().map_err(|_| {
                    FhirError::invalid_at("_count must be a whole number", "_count")
                })?;
                self.count = count.min(self.max_count);
                if count == 0 {
                    self.count_only = true;
                }
                self.applied.push((name.into(), self.count.to_string()));
            }
            "_sort" => self.order = self.sort_order(value)?,
            "_total" => {
                self.total = match value {
                    "none" => Total::None,
                    "accurate" => Total::Accurate,
                    "estimate" => Total::Cheap,
                    _ => {
                        return Err(FhirError::invalid_at(
                            "_total must be none, estimate or accurate",
                            "_total",
                        ))
                    }
                }
            }
            "_summary" if value == "count" => self.count_only = true,
            "_summary" => self.summary = Summary::parse(value)?,
            "_elements" => {
                let names: Vec<String> = value
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect();
                if names
                    .iter()
                    .any(|n| !n.chars().all(|c| c.is_ascii_alphanumeric()))
                {
                    return Err(FhirError::invalid_at(
                        "_elements names top-level elements (letters and digits)",
                        "_elements",
                    ));
                }
                self.elements = Some(names);
            }
            "_cursor" => self.cursor = Some(parse_cursor(value)?),
            _ => return Ok(false),
        }
        if matches!(name, "_sort" | "_total" | "_summary" | "_elements") {
            self.applied.push((name.into(), value.into()));
        }
        Ok(true)
    }
}

/// A resource cut down to `elements` (plus `resourceType`, `id` and `meta`), tagged
/// SUBSETTED as R4 asks. A choice element is kept by its base name (`value` keeps
/// `valueQuantity`).
pub fn subset(content: &str, elements: &[String]) -> String {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(content) else {
        return content.to_string();
    };
    let wanted = |key: &str| {
        let key = key.trim_start_matches('_');
        matches!(key, "resourceType" | "id" | "meta")
            || elements.iter().any(|e| {
                key == e
                    || key
                        .strip_prefix(e.as_str())
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
            })
    };
    tagged(map.into_iter().filter(|(k, _)| wanted(k)).collect())
}

/// A resource without the top-level elements `keep` refuses, tagged SUBSETTED; `None` when
/// it refuses none.
pub fn keep_only(content: &str, keep: impl Fn(&str) -> bool) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(content) else {
        return None;
    };
    if map.keys().all(|k| keep(k)) {
        return None;
    }
    Some(tagged(map.into_iter().filter(|(k, _)| keep(k)).collect()))
}

fn tagged(mut out: Map<String, Value>) -> String {
    let tag = serde_json::json!({
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
    });
    let meta = out.entry("meta").or_insert_with(|| serde_json::json!({}));
    if let Some(meta) = meta.as_object_mut() {
        match meta.get_mut("tag").and_then(|t| t.as_array_mut()) {
            Some(tags) => tags.push(tag),
            None => {
                meta.insert("tag".into(), serde_json::json!([tag]));
            }
        }
    }
    Value::Object(out).to_string()
}

/// `<sort key>.<id>`: where the previous page ended (the key is the lastUpdated instant in
/// µs, or the date the order sorts by). The link carries `_sort` too, so a cursor is only
/// read under the order it was written for.
pub fn cursor_text(sort_key: i64, id: &str) -> String {
    format!("{sort_key}.{id}")
}

fn parse_cursor(text: &str) -> Result<(i64, String), FhirError> {
    let bad = || FhirError::invalid_at("_cursor is not one this server wrote", "_cursor");
    let (at, id) = text.split_once('.').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_string()))
}

/// A parameter's comma-separated values; `\,`, `\|`, `\$` and `\\` stand for the character
/// itself (R4 search, "Escaping Search Parameters"); any other backslash is kept.
pub fn split_alternatives(value: &str) -> Vec<String> {
    token_alternatives(value)
        .into_iter()
        .map(|(system, code)| match system {
            // Outside a token, an unescaped `|` is an ordinary character.
            Some(system) => format!("{system}|{}", code.unwrap_or_default()),
            None => code.unwrap_or_default(),
        })
        .collect()
}

/// A token parameter's comma-separated values, each `[system]|[code]` or `code`, split at
/// the first unescaped `|` and unescaped as [`split_alternatives`] says: `a\|b` is the code
/// `a|b` in no particular system.
pub fn token_alternatives(value: &str) -> Vec<(Option<String>, Option<String>)> {
    let finish = |system: Option<String>, text: String| match system {
        Some(system) => (Some(system), Some(text).filter(|c| !c.is_empty())),
        None => (None, Some(text)),
    };
    let mut list = Vec::new();
    let (mut system, mut text) = (None::<String>, String::new());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (',' | '|' | '$' | '\\')) => text.push(next),
                Some(other) => {
                    text.push('\\');
                    text.push(other);
                }
                None => text.push('\\'),
            },
            ',' => list.push(finish(system.take(), std::mem::take(&mut text))),
            '|' if system.is_none() => system = Some(std::mem::take(&mut text)),
            other => text.push(other),
        }
    }
    list.push(finish(system, text));
    list
}

/// A token criterion's alternatives. A parameter on a `code` element has one system, implied
/// by the element's required binding and not written in the resource (`gender`: the
/// administrative-gender system); its codes are indexed without a system, so naming that
/// system matches them, as naming no system does.
fn token_criterion(t: &str, param: &str, value: &str) -> Vec<(Option<String>, Option<String>)> {
    let implied = crate::store::search_params::implied_system(t, param);
    token_alternatives(value)
        .into_iter()
        .map(|(system, code)| match (system, implied) {
            (Some(system), Some(implied)) if system == implied => (Some(String::new()), code),
            (system, _) => (system, code),
        })
        .collect()
}

fn alternatives(value: &str) -> Result<Vec<String>, FhirError> {
    let list = split_alternatives(value);
    if list.len() > MAX_ALTERNATIVES {
        return Err(FhirError::invalid(format!(
            "at most {MAX_ALTERNATIVES} comma-separated values per parameter"
        )));
    }
    Ok(list)
}

/// The criterion `name=value` asks for, `None` when the parameter is not supported here.
fn criterion(t: &str, name: &str, value: &str) -> Result<Option<Criterion>, FhirError> {
    let (base, modifier) = match name.split_once(':') {
        Some((base, modifier)) => (base, Some(modifier)),
        None => (name, None),
    };
    let values = alternatives(value)?;
    let invalid = |what: &str| FhirError::invalid_at(format!("{name}: {what}"), name.to_string());
    let unsupported = |what: &str| {
        FhirError::invalid_at(
            format!("{name}: {what} is not supported; refused rather than ignored, which would widen the result"),
            name.to_string(),
        )
    };
    if base.starts_with("_has") {
        return Err(unsupported("_has"));
    }
    if let Some((param, _)) = base.split_once('.') {
        if find(t, param).is_some() || param == "identifier" {
            return Err(unsupported("chaining"));
        }
    }
    let known = matches!(base, "_id" | "_lastUpdated" | "identifier") || find(t, base).is_some();
    let criterion = match (base, modifier) {
        ("_id", None) => Criterion::Ids(values.iter().map(|v| v.to_string()).collect()),
        ("_lastUpdated", None) => Criterion::LastUpdated(dates(&values).map_err(|e| invalid(&e))?),
        ("identifier", None) => Criterion::Token {
            param: "identifier".into(),
            alternatives: token_alternatives(value),
        },
        _ => {
            let Some(param) = find(t, base) else {
                return match modifier {
                    Some(m) if known => Err(unsupported(&format!(":{m}"))),
                    _ => Ok(None),
                };
            };
            match (param.kind, modifier) {
                (Kind::Token, None) => Criterion::Token {
                    param: param.name.into(),
                    alternatives: token_criterion(t, param.name, value),
                },
                (Kind::Date, None) => Criterion::Date {
                    param: param.name.into(),
                    alternatives: dates(&values).map_err(|e| invalid(&e))?,
                },
                (Kind::Str, None | Some("exact") | Some("contains")) => {
                    let how = match modifier {
                        Some("exact") => StrMatch::Exact,
                        Some("contains") => StrMatch::Contains,
                        _ => StrMatch::StartsWith,
                    };
                    Criterion::Str {
                        param: param.name.into(),
                        alternatives: values.iter().map(|v| (how, v.to_string())).collect(),
                    }
                }
                (Kind::Reference { target }, None) => Criterion::Reference {
                    paths: param.paths.iter().map(|p| p.to_string()).collect(),
                    alternatives: values
                        .iter()
                        .map(|v| reference(v, target))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| match target {
                            Some(t) => invalid(&format!("expected {t}/id or an id")),
                            None => invalid("expected Type/id or an id"),
                        })?,
                },
                _ if known => return Err(unsupported(&format!(":{}", modifier.unwrap_or("")))),
                _ => return Ok(None),
            }
        }
    };
    Ok(Some(criterion))
}

/// The criteria of a match URL (see [`super::criteria`]): every parameter must be one this
/// server matches on; anything else is refused, since ignoring it would widen the match.
pub fn match_criteria(
    resource_type: &str,
    pairs: &[(String, String)],
) -> Result<Vec<Criterion>, FhirError> {
    if pairs.len() > MAX_CRITERIA {
        return Err(FhirError::invalid(format!(
            "at most {MAX_CRITERIA} criteria are accepted in a match URL"
        )));
    }
    pairs
        .iter()
        .map(|(name, value)| {
            criterion(resource_type, name, value)?.ok_or_else(|| {
                FhirError::invalid_at(
                    format!(
                        "{name} is not a search parameter this server matches {resource_type} \
                         on; a match URL holds search criteria only, since one ignored would \
                         widen the match"
                    ),
                    name.clone(),
                )
            })
        })
        .collect()
}

/// `Type:param[:Target]` naming a reference parameter: (Type, its paths, the target type).
fn include_target(value: &str) -> Option<(String, Vec<String>, Option<String>)> {
    let mut parts = value.split(':');
    let (source, name) = (parts.next()?, parts.next()?);
    let target = parts.next().map(str::to_string);
    let param = find(source, name)?;
    let Kind::Reference { target: fixed } = param.kind else {
        return None;
    };
    if let (Some(named), Some(fixed)) = (target.as_deref(), fixed) {
        if named != fixed {
            return None;
        }
    }
    if target
        .as_deref()
        .is_some_and(|t| !super::id::is_resource_type(t))
    {
        return None;
    }
    let target = target.or(fixed.map(str::to_string));
    let paths = param.paths.iter().map(|p| p.to_string()).collect();
    Some((source.to_string(), paths, target))
}

/// `Type/id`, a full URL ending so, or a bare id (of the parameter's target type if it has one).
fn reference(value: &str, target: Option<&str>) -> Option<(Option<String>, String)> {
    let mut segments = value.trim_end_matches('/').rsplit('/');
    let id = segments.next().filter(|id| !id.is_empty())?;
    let named_type = segments.next();
    let target_type = match (named_type, target) {
        (Some(t), Some(required)) if t != required => return None,
        (Some(t), _) => Some(t.to_string()),
        (None, required) => required.map(str::to_string),
    };
    Some((target_type, id.to_string()))
}

fn dates(values: &[String]) -> Result<Vec<DateCriterion>, String> {
    values.iter().map(|v| date(v)).collect()
}

/// `[prefix]date`. A `+` sent unencoded in a query arrives as a space; in a date it can only
/// have been the zone's sign.
fn date(value: &str) -> Result<DateCriterion, String> {
    const PREFIXES: [(&str, Prefix); 9] = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    let (prefix, rest) = PREFIXES
        .iter()
        .find_map(|(text, prefix)| value.strip_prefix(text).map(|rest| (*prefix, rest)))
        .unwrap_or((Prefix::Eq, value));
    let text = rest.replace(' ', "+");
    let (low, high) =
        date_range(&text).ok_or_else(|| format!("{value:?} is not a FHIR date or dateTime"))?;
    Ok(DateCriterion { prefix, low, high })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(t: &str, query: &[(&str, &str)]) -> Result<SearchRequest, FhirError> {
        let pairs = query
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        SearchRequest::read(t, pairs, MAX_COUNT)
    }

    #[test]
    fn parameters_become_criteria_and_unknown_ones_are_kept_apart() {
        let request = read(
            "Observation",
            &[
                ("code", "http://loinc.org|2345-7"),
                ("date", "ge2024-01"),
                ("patient", "Patient/p1"),
                ("_contained", "true"),
                ("_count", "10"),
            ],
        )
        .unwrap();
        assert_eq!(request.criteria.len(), 3);
        assert_eq!(request.count, 10);
        assert_eq!(request.unknown, vec!["_contained".to_string()]);
        assert!(matches!(
            &request.criteria[1],
            Criterion::Date { alternatives, .. } if alternatives[0].prefix == Prefix::Ge
        ));
    }

    #[test]
    fn a_reference_to_the_wrong_type_and_a_bad_date_are_refused() {
        assert!(read("Observation", &[("patient", "Group/g1")]).is_err());
        assert!(read("Observation", &[("date", "ge2024-99")]).is_err());
        assert!(read("Patient", &[("_count", "many")]).is_err());
    }

    #[test]
    fn an_unencoded_plus_in_a_zone_is_read_as_a_plus() {
        let spaced = date("gt2024-03-05T10:00:00 01:00").unwrap();
        let encoded = date("gt2024-03-05T10:00:00+01:00").unwrap();
        assert_eq!(spaced, encoded);
    }

    #[test]
    fn elements_keep_the_named_ones_and_say_the_resource_is_subsetted() {
        let content = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"2"},"status":"final","valueQuantity":{"value":1},"note":[{"text":"x"}]}"#;
        let cut: serde_json::Value =
            serde_json::from_str(&subset(content, &["value".into(), "status".into()])).unwrap();
        assert_eq!(cut["valueQuantity"]["value"], 1);
        assert_eq!(cut["status"], "final");
        assert!(cut.get("note").is_none());
        assert_eq!(cut["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(cut["meta"]["versionId"], "2");
    }

    #[test]
    fn an_escaped_comma_is_part_of_the_value() {
        assert_eq!(split_alternatives(r"a\,b,c"), ["a,b", "c"]);
        assert_eq!(split_alternatives(r"a\\,b"), [r"a\", "b"]);
        assert_eq!(split_alternatives(r"a\|b"), ["a|b"]);
        assert_eq!(split_alternatives(r"a|b\$c"), ["a|b$c"]);
        let request = read("Patient", &[("identifier", r"urn:s|a\,b")]).unwrap();
        assert!(matches!(
            &request.criteria[0],
            Criterion::Token { alternatives, .. } if alternatives.len() == 1
                && alternatives[0].1.as_deref() == Some("a,b")
        ));
    }

    fn token(value: &str) -> (Option<String>, Option<String>) {
        let mut list = token_alternatives(value);
        assert_eq!(list.len(), 1, "{value}");
        list.remove(0)
    }

    #[test]
    fn token_forms() {
        assert_eq!(token("a|b"), (Some("a".into()), Some("b".into())));
        assert_eq!(token("|b"), (Some("".into()), Some("b".into())));
        assert_eq!(token("a|"), (Some("a".into()), None));
        assert_eq!(token("b"), (None, Some("b".into())));
        assert_eq!(token("a|b|c"), (Some("a".into()), Some("b|c".into())));
    }

    #[test]
    fn an_escaped_bar_is_part_of_the_system_or_code() {
        assert_eq!(token(r"a\|b"), (None, Some("a|b".into())));
        assert_eq!(
            token(r"urn:x\|y|c\|d"),
            (Some("urn:x|y".into()), Some("c|d".into()))
        );
        // An escaped backslash before a bar leaves the bar a separator.
        assert_eq!(token(r"a\\|b"), (Some(r"a\".into()), Some("b".into())));
        assert_eq!(
            token_alternatives(r"s|a\,b,c"),
            [
                (Some("s".into()), Some("a,b".into())),
                (None, Some("c".into()))
            ]
        );
    }

    #[test]
    fn a_code_elements_implied_system_matches_its_codes() {
        let gender = "http://hl7.org/fhir/administrative-gender";
        assert_eq!(
            token_criterion("Patient", "gender", &format!("{gender}|male")),
            [(Some(String::new()), Some("male".into()))]
        );
        assert_eq!(
            token_criterion("Patient", "gender", "urn:other|male"),
            [(Some("urn:other".into()), Some("male".into()))]
        );
        // Observation.code is a CodeableConcept: its systems are written, none implied.
        assert_eq!(
            token_criterion("Observation", "code", &format!("{gender}|male")),
            [(Some(gender.into()), Some("male".into()))]
        );
    }
}
