//! Search: one statement per page, criteria as indexed subqueries (every value a bound
//! parameter), pages in (lastUpdated, id) order with a keyset cursor, so a page never skips or
//! repeats a resource because others were created meanwhile.

use sea_orm::Value;

use super::index::{index_key, index_prefix, IndexRows};
use super::read::{placeholders, select, stored, StoredResource};
use super::write::normalize;
use super::{Store, StoreError};

/// Date comparison prefixes (FHIR R4 search, 3.1.1.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A date criterion: the prefix and the range `[low, high)` the searched value covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateCriterion {
    pub prefix: Prefix,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrMatch {
    /// The default: case-insensitive, from the start.
    StartsWith,
    /// `:contains`: case-insensitive, anywhere.
    Contains,
    /// `:exact`: the whole value, case and accents as written.
    Exact,
}

/// One search parameter; the alternatives inside one (comma-separated values) are ORed, and
/// criteria are ANDed.
#[derive(Debug, Clone)]
pub enum Criterion {
    Ids(Vec<String>),
    LastUpdated(Vec<DateCriterion>),
    /// (system, code): `None` system matches any; `None` code any code of the system.
    Token {
        param: String,
        alternatives: Vec<(Option<String>, Option<String>)>,
    },
    /// (target type, target id) at any of `paths`.
    Reference {
        paths: Vec<String>,
        alternatives: Vec<(Option<String>, String)>,
    },
    Date {
        param: String,
        alternatives: Vec<DateCriterion>,
    },
    Str {
        param: String,
        alternatives: Vec<(StrMatch, String)>,
    },
    /// Within what a patient-scoped token may see: `strict`, in the patient's compartment;
    /// otherwise in no other patient's (see `fhir::access::in_reach`).
    Compartment {
        patient: String,
        strict: bool,
    },
}

impl DateCriterion {
    /// Whether a stored range `[low, high)` meets this criterion: [`date_condition`] in Rust.
    pub fn holds(&self, low: i64, high: i64) -> bool {
        let contained = low >= self.low && high <= self.high;
        match self.prefix {
            Prefix::Eq => contained,
            Prefix::Ne => !contained,
            Prefix::Gt => high > self.high,
            Prefix::Lt => low < self.low,
            Prefix::Ge => high > self.high || contained,
            Prefix::Le => low < self.low || contained,
            Prefix::Sa => low >= self.high,
            Prefix::Eb => high <= self.low,
            Prefix::Ap => low < self.high && high > self.low,
        }
    }
}

impl Criterion {
    /// Whether a resource not stored yet, with these index rows, meets the criterion: the same
    /// test its SQL makes on stored rows (for matching the resources of a Bundle being
    /// planned). Such a resource is written `now_us`; it is in no compartment yet.
    pub fn holds(&self, id: &str, rows: &IndexRows, now_us: i64) -> bool {
        match self {
            Criterion::Ids(ids) => ids.iter().any(|i| i == id),
            Criterion::LastUpdated(alternatives) => {
                alternatives.iter().any(|d| d.holds(now_us, now_us + 1))
            }
            Criterion::Token {
                param,
                alternatives,
            } => {
                let values: Vec<(&str, &str)> = if param == "identifier" {
                    let identifiers = rows.identifiers.iter();
                    identifiers.map(|(s, v)| (s.as_str(), v.as_str())).collect()
                } else {
                    let tokens = rows.tokens.iter().filter(|(p, _, _)| p == param);
                    tokens.map(|(_, s, v)| (s.as_str(), v.as_str())).collect()
                };
                alternatives.iter().any(|(system, code)| {
                    values.iter().any(|(s, v)| {
                        system.as_deref().is_none_or(|want| want == *s)
                            && code.as_deref().is_none_or(|want| want == *v)
                    })
                })
            }
            Criterion::Reference {
                paths,
                alternatives,
            } => rows.refs.iter().any(|(path, target_type, target_id)| {
                paths.contains(path)
                    && alternatives.iter().any(|(t, want)| {
                        want == target_id && t.as_ref().is_none_or(|t| t == target_type)
                    })
            }),
            Criterion::Date {
                param,
                alternatives,
            } => rows.dates.iter().any(|(p, low, high)| {
                p == param && alternatives.iter().any(|d| d.holds(*low, *high))
            }),
            Criterion::Str {
                param,
                alternatives,
            } => rows.strings.iter().any(|(p, value)| {
                let normalized = normalize(value);
                let stored = index_prefix(&normalized);
                p == param
                    && alternatives.iter().any(|(how, text)| {
                        let wanted = normalize(text);
                        let wanted = index_prefix(&wanted);
                        match how {
                            StrMatch::Exact => value == text,
                            StrMatch::StartsWith => stored.starts_with(wanted),
                            StrMatch::Contains => stored.contains(wanted),
                        }
                    })
            }),
            Criterion::Compartment { .. } => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest change first: resources created while a client pages appear on later pages.
    LastUpdatedAscending,
    LastUpdatedDescending,
    /// By a date parameter: ascending by the earliest instant each resource's values cover,
    /// descending by the latest (FHIR's rule for ranges); resources without a value last
    /// either way. Ties by id.
    Date {
        param: &'static str,
        descending: bool,
    },
}

impl Order {
    /// The SQL of a row's sort key (`r` the resource) and its direction. A resource without a
    /// date gets the key that sorts last, so the keyset never meets NULL.
    fn key(&self) -> (String, &'static str) {
        match self {
            Order::LastUpdatedAscending => ("r.last_updated_us".into(), "ASC"),
            Order::LastUpdatedDescending => ("r.last_updated_us".into(), "DESC"),
            Order::Date { descending, .. } => {
                let (extreme, column, missing, dir) = if *descending {
                    ("MAX", "high_us", i64::MIN, "DESC")
                } else {
                    ("MIN", "low_us", i64::MAX, "ASC")
                };
                let key = format!(
                    "COALESCE((SELECT {extreme}(d.{column}) FROM date_index d \
                     WHERE d.resource_type = r.resource_type AND d.resource_id = r.id \
                     AND d.param = ?), {missing})"
                );
                (key, dir)
            }
        }
    }
}

/// A page request.
#[derive(Debug, Clone)]
pub struct Search {
    pub resource_type: String,
    pub criteria: Vec<Criterion>,
    pub order: Order,
    /// The (sort key, id) of the last resource of the previous page: its lastUpdated, or for
    /// a date order the key [`Order`] describes.
    pub after: Option<(i64, String)>,
    pub limit: u64,
}

impl Store {
    /// One page of live resources matching every criterion, each with its sort key (what
    /// the next page's [`Search::after`] is made of).
    pub async fn search(&self, search: &Search) -> Result<Vec<(StoredResource, i64)>, StoreError> {
        let (key, dir) = search.order.key();
        let key_param = || match search.order {
            Order::Date { param, .. } => Some(Value::from(param)),
            _ => None,
        };
        // The key is computed once per row in an inner select, so the keyset condition and
        // the order can name it.
        let mut sql = format!(
            "SELECT * FROM (SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, \
             r.deleted, r.content, {key} AS sort_key FROM resource r"
        );
        let mut params: Vec<Value> = key_param().into_iter().collect();
        where_clause(
            &mut sql,
            &mut params,
            &search.resource_type,
            &search.criteria,
        );
        sql.push_str(") s");
        let cmp = if dir == "ASC" { ">" } else { "<" };
        if let Some((at, id)) = &search.after {
            sql.push_str(&format!(
                " WHERE (s.sort_key {cmp} ? OR (s.sort_key = ? AND s.id {cmp} ?))"
            ));
            params.extend([Value::from(*at), Value::from(*at), Value::from(id.as_str())]);
        }
        sql.push_str(&format!(
            " ORDER BY s.sort_key {dir}, s.id {dir} LIMIT {}",
            search.limit
        ));
        let what = select("resource", "search page");
        let rows = self.query(what, &sql, params).await?;
        rows.iter()
            .map(|row| Ok((stored(row)?, row.try_get_by_index::<i64>(6)?)))
            .collect()
    }

    /// The ids of live resources matching every criterion, at most `limit`, in id order.
    pub async fn search_ids(
        &self,
        resource_type: &str,
        criteria: &[Criterion],
        limit: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = String::from("SELECT r.id FROM resource r");
        let mut params = Vec::new();
        where_clause(&mut sql, &mut params, resource_type, criteria);
        sql.push_str(&format!(" ORDER BY r.id LIMIT {limit}"));
        let rows = self
            .query(select("resource", "match URL"), &sql, params)
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get_by_index::<String>(0)?))
            .collect()
    }

    /// How many live resources match every criterion.
    pub async fn search_count(
        &self,
        resource_type: &str,
        criteria: &[Criterion],
    ) -> Result<u64, StoreError> {
        let mut sql = String::from("SELECT COUNT(*) FROM resource r");
        let mut params = Vec::new();
        where_clause(&mut sql, &mut params, resource_type, criteria);
        let rows = self
            .query(select("resource", "search count"), &sql, params)
            .await?;
        let count: i64 = match rows.first() {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        };
        Ok(count.max(0) as u64)
    }
}

impl Store {
    /// `_include`: the resources that `sources` reference at `paths` (of `target_type`, when
    /// given), each once.
    pub async fn included(
        &self,
        sources: &[(&str, &str)],
        paths: &[String],
        target_type: Option<&str>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let mut out = Vec::new();
        for chunk in sources.chunks(200) {
            let pairs = vec!["(rr.source_type = ? AND rr.source_id = ?)"; chunk.len()].join(" OR ");
            let mut sql = format!(
                "SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, r.content \
                 FROM resource r JOIN (SELECT DISTINCT rr.target_type, rr.target_id FROM resource_ref rr \
                 WHERE ({pairs}) AND rr.path IN ({})",
                placeholders(paths.len())
            );
            let mut params = Vec::new();
            for (t, id) in chunk {
                params.extend([Value::from(*t), Value::from(*id)]);
            }
            params.extend(paths.iter().map(|p| Value::from(p.as_str())));
            if let Some(target) = target_type {
                sql.push_str(" AND rr.target_type = ?");
                params.push(Value::from(target));
            }
            sql.push_str(
                ") t ON r.resource_type = t.target_type AND r.id = t.target_id \
                 WHERE r.deleted = ? ORDER BY r.resource_type, r.id",
            );
            params.push(Value::from(false));
            let what = select("resource_ref", "_include");
            for row in self.query(what, &sql, params).await? {
                out.push(stored(&row)?);
            }
        }
        Ok(out)
    }

    /// `_revinclude`: live resources of `source_type` that reference any of `targets` at
    /// `paths`, at most `limit`.
    pub async fn revincluded(
        &self,
        source_type: &str,
        paths: &[String],
        targets: &[(&str, &str)],
        limit: u64,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let mut out = Vec::new();
        for chunk in targets.chunks(200) {
            if out.len() as u64 >= limit {
                break;
            }
            let pairs = vec!["(rr.target_type = ? AND rr.target_id = ?)"; chunk.len()].join(" OR ");
            let sql = format!(
                "SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, r.content \
                 FROM resource r WHERE r.resource_type = ? AND r.deleted = ? AND r.id IN \
                 (SELECT rr.source_id FROM resource_ref rr WHERE rr.source_type = ? \
                 AND rr.path IN ({}) AND ({pairs})) ORDER BY r.id LIMIT {}",
                placeholders(paths.len()),
                limit - out.len() as u64
            );
            let mut params = vec![
                Value::from(source_type),
                Value::from(false),
                Value::from(source_type),
            ];
            params.extend(paths.iter().map(|p| Value::from(p.as_str())));
            for (t, id) in chunk {
                params.extend([Value::from(*t), Value::from(*id)]);
            }
            let what = select("resource_ref", "_revinclude");
            for row in self.query(what, &sql, params).await? {
                out.push(stored(&row)?);
            }
        }
        Ok(out)
    }
}

pub(crate) fn where_clause(
    sql: &mut String,
    params: &mut Vec<Value>,
    t: &str,
    criteria: &[Criterion],
) {
    sql.push_str(" WHERE r.resource_type = ? AND r.deleted = ?");
    params.extend([Value::from(t), Value::from(false)]);
    for criterion in criteria {
        sql.push_str(" AND ");
        push_criterion(sql, params, t, criterion);
    }
}

fn push_criterion(sql: &mut String, params: &mut Vec<Value>, t: &str, criterion: &Criterion) {
    match criterion {
        Criterion::Compartment { patient, strict } => {
            let (test, cmp) = if *strict {
                ("IN", "=")
            } else {
                ("NOT IN", "<>")
            };
            sql.push_str(&format!(
                "r.id {test} (SELECT resource_id FROM compartment WHERE resource_type = ? AND patient_id {cmp} ?)"
            ));
            params.extend([Value::from(t), Value::from(patient.as_str())]);
        }
        Criterion::Ids(ids) => {
            sql.push_str(&format!("r.id IN ({})", placeholders(ids.len().max(1))));
            if ids.is_empty() {
                params.push(Value::from(""));
            }
            params.extend(ids.iter().map(|id| Value::from(id.as_str())));
        }
        Criterion::LastUpdated(alternatives) => {
            let parts: Vec<String> = alternatives
                .iter()
                .map(|d| {
                    // An instant: the range of one microsecond.
                    date_condition(d, "r.last_updated_us", "(r.last_updated_us + 1)", params)
                })
                .collect();
            sql.push_str(&format!("({})", parts.join(" OR ")));
        }
        Criterion::Token {
            param,
            alternatives,
        } => {
            sql.push_str(
                "r.id IN (SELECT resource_id FROM token_index WHERE resource_type = ? AND param = ? AND (",
            );
            params.extend([Value::from(t), Value::from(param.as_str())]);
            let parts: Vec<&str> = alternatives
                .iter()
                .map(|(system, code)| {
                    let mut part = Vec::new();
                    if let Some(system) = system {
                        params.push(Value::from(index_key(system).into_owned()));
                        part.push("system = ?");
                    }
                    if let Some(code) = code {
                        params.push(Value::from(index_key(code).into_owned()));
                        part.push("value = ?");
                    }
                    if part.is_empty() {
                        "1 = 1"
                    } else if part.len() == 2 {
                        "(system = ? AND value = ?)"
                    } else {
                        part[0]
                    }
                })
                .collect();
            sql.push_str(&parts.join(" OR "));
            sql.push_str("))");
        }
        Criterion::Reference {
            paths,
            alternatives,
        } => {
            sql.push_str(&format!(
                "r.id IN (SELECT source_id FROM resource_ref WHERE source_type = ? AND path IN ({}) AND (",
                placeholders(paths.len())
            ));
            params.push(Value::from(t));
            params.extend(paths.iter().map(|p| Value::from(p.as_str())));
            let parts: Vec<&str> = alternatives
                .iter()
                .map(|(target_type, id)| match target_type {
                    Some(target_type) => {
                        params
                            .extend([Value::from(target_type.as_str()), Value::from(id.as_str())]);
                        "(target_type = ? AND target_id = ?)"
                    }
                    None => {
                        params.push(Value::from(id.as_str()));
                        "target_id = ?"
                    }
                })
                .collect();
            sql.push_str(&parts.join(" OR "));
            sql.push_str("))");
        }
        Criterion::Date {
            param,
            alternatives,
        } => {
            sql.push_str(
                "r.id IN (SELECT resource_id FROM date_index WHERE resource_type = ? AND param = ? AND (",
            );
            params.extend([Value::from(t), Value::from(param.as_str())]);
            let parts: Vec<String> = alternatives
                .iter()
                .map(|d| date_condition(d, "low_us", "high_us", params))
                .collect();
            sql.push_str(&parts.join(" OR "));
            sql.push_str("))");
        }
        Criterion::Str {
            param,
            alternatives,
        } => {
            sql.push_str(
                "r.id IN (SELECT resource_id FROM string_index WHERE resource_type = ? AND param = ? AND (",
            );
            params.extend([Value::from(t), Value::from(param.as_str())]);
            let parts: Vec<&str> = alternatives
                .iter()
                .map(|(how, text)| match how {
                    // The normalized form too, which the lookup index holds: equal values
                    // have equal normalized forms, and `value` alone is not indexed.
                    StrMatch::Exact => {
                        let normalized = index_prefix(&normalize(text)).to_string();
                        params.push(Value::from(normalized));
                        params.push(Value::from(index_key(text).into_owned()));
                        "(normalized = ? AND value = ?)"
                    }
                    StrMatch::StartsWith => {
                        params.push(Value::from(format!("{}%", like_escaped(text))));
                        "normalized LIKE ? ESCAPE '\\'"
                    }
                    StrMatch::Contains => {
                        params.push(Value::from(format!("%{}%", like_escaped(text))));
                        "normalized LIKE ? ESCAPE '\\'"
                    }
                })
                .collect();
            sql.push_str(&parts.join(" OR "));
            sql.push_str("))");
        }
    }
}

/// The condition for one date criterion on a stored range `[low, high)`, per R4 search
/// (3.1.1.4.6): `eq` the searched range contains the value's; `ne` it does not; `gt`/`lt` the
/// value's range reaches above/below the searched one; `ge`/`le` either of those; `sa`/`eb` it
/// lies wholly after/before; `ap` they overlap.
fn date_condition(d: &DateCriterion, low: &str, high: &str, params: &mut Vec<Value>) -> String {
    let contained = format!("({low} >= ? AND {high} <= ?)");
    let (sql, values) = match d.prefix {
        Prefix::Eq | Prefix::Ne => (contained, vec![d.low, d.high]),
        Prefix::Gt => (format!("{high} > ?"), vec![d.high]),
        Prefix::Lt => (format!("{low} < ?"), vec![d.low]),
        Prefix::Ge => (
            format!("({high} > ? OR {contained})"),
            vec![d.high, d.low, d.high],
        ),
        Prefix::Le => (
            format!("({low} < ? OR {contained})"),
            vec![d.low, d.low, d.high],
        ),
        Prefix::Sa => (format!("{low} >= ?"), vec![d.high]),
        Prefix::Eb => (format!("{high} <= ?"), vec![d.low]),
        Prefix::Ap => (format!("({low} < ? AND {high} > ?)"), vec![d.high, d.low]),
    };
    params.extend(values.into_iter().map(Value::from));
    if d.prefix == Prefix::Ne {
        format!("NOT {sql}")
    } else {
        sql
    }
}

/// `%`, `_` and the escape character itself, matched literally.
fn like_escaped(text: &str) -> String {
    let normalized = super::write::normalize(text);
    let lowered = index_prefix(&normalized);
    let mut out = String::with_capacity(lowered.len());
    for ch in lowered.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_criteria_hold_in_memory_as_their_sql_says() {
        // Stored [10, 20); searched [10, 20), [0, 10), [20, 30) and [12, 15).
        let (low, high) = (10, 20);
        let at = |prefix, low, high| DateCriterion { prefix, low, high };
        let cases = [
            (at(Prefix::Eq, 10, 20), true),
            (at(Prefix::Eq, 12, 15), false),
            (at(Prefix::Ne, 12, 15), true),
            (at(Prefix::Gt, 0, 10), true),
            (at(Prefix::Gt, 20, 30), false),
            (at(Prefix::Lt, 20, 30), true),
            (at(Prefix::Lt, 0, 10), false),
            (at(Prefix::Ge, 10, 20), true),
            (at(Prefix::Le, 10, 20), true),
            (at(Prefix::Sa, 0, 10), true),
            (at(Prefix::Sa, 12, 15), false),
            (at(Prefix::Eb, 20, 30), true),
            (at(Prefix::Ap, 12, 15), true),
            (at(Prefix::Ap, 20, 30), false),
        ];
        for (criterion, expected) in cases {
            assert_eq!(criterion.holds(low, high), expected, "{criterion:?}");
        }
    }

    #[test]
    fn criteria_hold_on_index_rows_case_and_accent_blind_where_search_is() {
        let mut rows = IndexRows::default();
        rows.strings
            .insert(("family".into(), "Ærøskøbing-Müller".into()));
        rows.tokens
            .insert(("code".into(), "http://loinc.org".into(), "1-8".into()));
        rows.refs
            .insert(("subject".into(), "Patient".into(), "p1".into()));
        let name = |how, text: &str| Criterion::Str {
            param: "family".into(),
            alternatives: vec![(how, text.into())],
        };
        assert!(name(StrMatch::StartsWith, "ærø").holds("x", &rows, 0));
        assert!(name(StrMatch::Contains, "MULLER").holds("x", &rows, 0));
        assert!(!name(StrMatch::Exact, "ærøskøbing-müller").holds("x", &rows, 0));
        let code = |system: Option<&str>, code: &str| Criterion::Token {
            param: "code".into(),
            alternatives: vec![(system.map(str::to_string), Some(code.into()))],
        };
        assert!(code(Some("http://loinc.org"), "1-8").holds("x", &rows, 0));
        assert!(code(None, "1-8").holds("x", &rows, 0));
        assert!(!code(Some(""), "1-8").holds("x", &rows, 0));
        let subject = |t: Option<&str>, id: &str| Criterion::Reference {
            paths: vec!["subject".into()],
            alternatives: vec![(t.map(str::to_string), id.into())],
        };
        assert!(subject(Some("Patient"), "p1").holds("x", &rows, 0));
        assert!(!subject(Some("Group"), "p1").holds("x", &rows, 0));
        assert!(Criterion::Ids(vec!["x".into()]).holds("x", &rows, 0));
    }

    #[test]
    fn like_wildcards_in_search_text_are_literal() {
        assert_eq!(like_escaped("50%_A\\"), "50\\%\\_a\\\\");
    }
}
