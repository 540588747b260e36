//! SMART on FHIR scopes, v1 (`patient/Observation.read`, `user/*.write`, `system/*.*`) and v2
//! (`patient/Observation.rs`, `user/*.cruds`), read from a token's `scope` claim.
//!
//! A scope grants permissions on one resource type or all of them, in one of three contexts:
//! `patient` (only the resources of the patient the token was issued for), `user` and `system`
//! (whatever the permission covers). Scopes this server does not understand grant nothing,
//! and so do v2 scopes narrowed by a query (`patient/Observation.rs?category=laboratory`):
//! granting the whole type for them would grant more than the token holder was given.

/// One permission, in SMART v2's letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `c`: create.
    Create,
    /// `r`: read, vread and instance history.
    Read,
    /// `u`: update and patch.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search, and type or system history.
    Search,
}

impl Permission {
    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }

    /// The SMART v2 letter.
    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Patient,
    User,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    context: Context,
    /// `None` for `*`.
    resource_type: Option<String>,
    permissions: u8,
}

/// How far a permission on a type reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Not granted.
    None,
    /// Granted only within the token's patient compartment.
    Patient,
    /// Granted (a `user` or `system` scope).
    All,
}

/// The scopes of one token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Grant>);

impl Scopes {
    /// Reads a space-separated `scope` claim; scopes that grant no resource access (`openid`,
    /// `launch`, `offline_access`, …) and those not understood are left out.
    pub fn parse(text: &str) -> Scopes {
        Scopes(text.split_ascii_whitespace().filter_map(grant).collect())
    }

    /// How far `permission` on `resource_type` reaches: user and system scopes beat patient
    /// ones.
    pub fn reach(&self, resource_type: &str, permission: Permission) -> Reach {
        let mut reach = Reach::None;
        for grant in &self.0 {
            let type_matches = grant
                .resource_type
                .as_deref()
                .is_none_or(|t| t == resource_type);
            if !type_matches || grant.permissions & permission.bit() == 0 {
                continue;
            }
            match grant.context {
                Context::User | Context::System => return Reach::All,
                Context::Patient => reach = Reach::Patient,
            }
        }
        reach
    }

    /// Whether any scope is patient-context (such tokens must name their patient).
    pub fn has_patient_context(&self) -> bool {
        self.0.iter().any(|g| g.context == Context::Patient)
    }
}

fn grant(scope: &str) -> Option<Grant> {
    let (context, rest) = scope.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (resource_type, permissions) = rest.rsplit_once('.')?;
    let resource_type = match resource_type {
        "*" => None,
        t if crate::fhir::id::is_resource_type(t) => Some(t.to_string()),
        _ => return None,
    };
    let all = [
        Permission::Create,
        Permission::Read,
        Permission::Update,
        Permission::Delete,
        Permission::Search,
    ];
    let bits = |list: &[Permission]| list.iter().fold(0, |acc, p| acc | p.bit());
    let permissions = match permissions {
        // v1
        "read" => bits(&[Permission::Read, Permission::Search]),
        "write" => bits(&[Permission::Create, Permission::Update, Permission::Delete]),
        "*" => bits(&all),
        // v2: a non-empty subset of `cruds`, in that order, each letter once; a query
        // narrowing the scope (`?category=…`) is not supported, so the scope grants nothing.
        letters => {
            let mut at = 0;
            let mut out = 0;
            for letter in letters.chars() {
                let index = all.iter().position(|p| p.letter() == letter)?;
                if index < at {
                    return None;
                }
                at = index + 1;
                out |= all[index].bit();
            }
            if out == 0 {
                return None;
            }
            out
        }
    };
    Some(Grant {
        context,
        resource_type,
        permissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;

    #[test]
    fn v1_read_covers_read_and_search_and_write_covers_the_rest() {
        let scopes = Scopes::parse("openid fhirUser user/Observation.read patient/*.write");
        assert_eq!(scopes.reach("Observation", Read), Reach::All);
        assert_eq!(scopes.reach("Observation", Search), Reach::All);
        assert_eq!(scopes.reach("Observation", Create), Reach::Patient);
        assert_eq!(scopes.reach("Patient", Read), Reach::None);
        assert_eq!(scopes.reach("Patient", Delete), Reach::Patient);
    }

    #[test]
    fn v2_letters_grant_exactly_what_they_name() {
        let scopes = Scopes::parse("patient/Observation.rs system/Patient.cud");
        assert_eq!(scopes.reach("Observation", Read), Reach::Patient);
        assert_eq!(scopes.reach("Observation", Search), Reach::Patient);
        assert_eq!(scopes.reach("Observation", Update), Reach::None);
        assert_eq!(scopes.reach("Patient", Update), Reach::All);
        assert_eq!(scopes.reach("Patient", Read), Reach::None);
    }

    #[test]
    fn system_star_star_grants_everything() {
        let scopes = Scopes::parse("system/*.*");
        for p in [Create, Read, Update, Delete, Search] {
            assert_eq!(scopes.reach("AuditEvent", p), Reach::All);
        }
    }

    #[test]
    fn malformed_narrowed_and_unknown_scopes_grant_nothing() {
        for text in [
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.",
            "patient/Observation.x",
            "admin/*.*",
            "patient/Nonsense.read",
            "patient/*",
            "*.*",
            "",
        ] {
            let scopes = Scopes::parse(text);
            assert_eq!(scopes.reach("Observation", Read), Reach::None, "{text}");
            assert_eq!(scopes.reach("Observation", Search), Reach::None, "{text}");
        }
    }

    #[test]
    fn a_user_grant_beats_a_patient_grant_for_the_same_permission() {
        let scopes = Scopes::parse("patient/*.read user/Observation.rs");
        assert_eq!(scopes.reach("Observation", Read), Reach::All);
        assert_eq!(scopes.reach("Condition", Read), Reach::Patient);
        assert!(scopes.has_patient_context());
    }
}
