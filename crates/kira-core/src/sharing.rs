//! Cross-company access rules (SEED 2.3): which two companies may share what,
//! decided from their profiles alone, default deny, with an explanation.
//!
//! The rules are configuration ([`SharingRules`]); [`decide`] is pure. Its
//! facts are the two profiles, the open conflict flags and each side's
//! [`Consent`] records, which an admin sets: a company consents to exchange
//! a scope with one named partner or with every partner the rules allow
//! (`*`). Nothing crosses unless both sides consent to the scope with each
//! other, whatever rule allows it. What crosses is only what the owner
//! published, anonymised when it was published: see [`crate::anonymise`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::company::CompanyProfile;
use crate::{CompanyId, ValidationError};

/// The scope SEED's legal-precedent rule allows.
pub const SCOPE_ANONYMIZED_LEGAL_PATTERNS: &str = "anonymized_legal_patterns";
/// The scope SEED's best-practice rule allows.
pub const SCOPE_PROCESS_TEMPLATES: &str = "process_templates";

const MAX_RULES: usize = 100;
const MAX_CONDITION_DEPTH: usize = 8;
const MAX_NAME_LEN: usize = 64;

/// What happens when no rule allows a request. Only deny exists: a typed
/// field rather than a constant so that the configuration says it out loud
/// and a future "allow" cannot slip in as a typo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    #[default]
    #[serde(alias = "DENY")]
    Deny,
}

/// The sharing section of the configuration.
///
/// Missing fields take SEED's defaults; an explicit `rules: []` means no
/// exceptions at all, so everything is denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharingRules {
    pub default: Decision,
    /// Tried in order: the first allow rule that holds decides, but any flag
    /// rule that holds overrides every allow rule.
    pub rules: Vec<Rule>,
    /// Group name -> industries that count as similar. The group's own name
    /// is a member too, so `fintech: [banking]` makes fintech and banking
    /// similar. Industries are compared trimmed and case-insensitively.
    pub industry_groups: BTreeMap<String, Vec<String>>,
}

/// One exception to the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub condition: Condition,
    pub result: RuleResult,
}

/// A condition over the two companies of a request. Every atom is symmetric
/// in the two companies, so the whole tree is: who asks does not matter.
///
/// In configuration: `"same_jurisdiction"`, or `{"all": [..]}` / `{"any": [..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    /// The full jurisdiction codes are equal: `US-DE` matches `US-DE` only,
    /// not `US-CA` nor `US`. Legal precedents follow the law that applies,
    /// and in federal countries that is the subdivision's (Delaware and
    /// California corporate law differ), so the coarser match would share
    /// patterns that do not transfer.
    SameJurisdiction,
    /// The same industry (trimmed, case-insensitive) or both in one of the
    /// configured industry groups.
    SimilarIndustry,
    /// Each company has a consent record for the scope being asked for
    /// that names the other (or `*`).
    ExplicitConsent,
    /// An open conflict flag exists between the two companies.
    PotentialConflictDetected,
}

/// What a rule does when its condition holds.
///
/// In configuration: `{"allow": {"scope": "process_templates"}}` or
/// `"flag_for_human_review"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleResult {
    /// Allow sharing anonymised items of exactly this scope.
    Allow { scope: String },
    /// Share nothing and ask a human; overrides every allow rule.
    FlagForHumanReview,
}

impl Default for SharingRules {
    /// SEED 2.3's three rules, and industry groups for the common cases.
    fn default() -> Self {
        let group = |name: &str, members: &[&str]| {
            (
                name.to_owned(),
                members.iter().map(|m| (*m).to_owned()).collect(),
            )
        };
        Self {
            default: Decision::Deny,
            rules: vec![
                Rule {
                    name: "legal_precedent_sharing".into(),
                    condition: Condition::All(vec![
                        Condition::SameJurisdiction,
                        Condition::SimilarIndustry,
                    ]),
                    result: RuleResult::Allow {
                        scope: SCOPE_ANONYMIZED_LEGAL_PATTERNS.into(),
                    },
                },
                Rule {
                    name: "best_practice_sharing".into(),
                    condition: Condition::ExplicitConsent,
                    result: RuleResult::Allow {
                        scope: SCOPE_PROCESS_TEMPLATES.into(),
                    },
                },
                Rule {
                    name: "conflict_prevention".into(),
                    condition: Condition::PotentialConflictDetected,
                    result: RuleResult::FlagForHumanReview,
                },
            ],
            industry_groups: BTreeMap::from([
                group(
                    "fintech",
                    &[
                        "banking",
                        "payments",
                        "insurance",
                        "lending",
                        "wealth management",
                    ],
                ),
                group("saas", &["software", "cloud", "devtools", "cybersecurity"]),
                group("healthcare", &["biotech", "pharma", "medtech", "health"]),
                group("retail", &["ecommerce", "consumer goods", "marketplace"]),
                group("media", &["publishing", "entertainment", "advertising"]),
                group("energy", &["utilities", "renewables", "oil and gas"]),
                group("logistics", &["shipping", "transportation", "supply chain"]),
                group("real estate", &["property", "construction", "proptech"]),
                group("manufacturing", &["industrial", "hardware", "automotive"]),
            ]),
        }
    }
}

impl SharingRules {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.rules.len() > MAX_RULES {
            return Err(ValidationError::new(
                "sharing.rules",
                format!("at most {MAX_RULES} rules"),
            ));
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("sharing.rules.{i}");
            if !is_name(&rule.name) {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    "must be 1 to 64 lowercase letters, digits or '_'",
                ));
            }
            if let Some(j) = seen.insert(&rule.name, i) {
                return Err(ValidationError::new(
                    format!("{at}.name"),
                    format!("'{}' is already the name of rules.{j}", rule.name),
                ));
            }
            check_condition(&rule.condition, &format!("{at}.condition"), 1)?;
            if let RuleResult::Allow { scope } = &rule.result
                && !is_name(scope)
            {
                return Err(ValidationError::new(
                    format!("{at}.result.allow.scope"),
                    "must be 1 to 64 lowercase letters, digits or '_'",
                ));
            }
        }
        for (group, members) in &self.industry_groups {
            if group.trim().is_empty() {
                return Err(ValidationError::new(
                    "sharing.industry_groups",
                    "a group name must not be empty",
                ));
            }
            for (k, m) in members.iter().enumerate() {
                if m.trim().is_empty() {
                    return Err(ValidationError::new(
                        format!("sharing.industry_groups.{group}.{k}"),
                        "must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_condition(c: &Condition, at: &str, depth: usize) -> Result<(), ValidationError> {
    if depth > MAX_CONDITION_DEPTH {
        return Err(ValidationError::new(
            at,
            format!("conditions nest at most {MAX_CONDITION_DEPTH} deep"),
        ));
    }
    let (key, parts) = match c {
        Condition::All(parts) => ("all", parts),
        Condition::Any(parts) => ("any", parts),
        _ => return Ok(()),
    };
    // An empty `all` is vacuously true: an allow rule with one would share
    // with everyone. Refuse it rather than guess what was meant.
    if parts.is_empty() {
        return Err(ValidationError::new(
            format!("{at}.{key}"),
            "must list at least one condition",
        ));
    }
    for (i, p) in parts.iter().enumerate() {
        check_condition(p, &format!("{at}.{key}.{i}"), depth + 1)?;
    }
    Ok(())
}

/// The other side of a consent: one company, or every company the rules
/// allow (`*`). Written as a company id or `*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Partner {
    Any,
    Company(CompanyId),
}

impl Partner {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s == "*" {
            return Ok(Self::Any);
        }
        CompanyId::parse(s).map(Self::Company).map_err(|e| {
            ValidationError::new("partner", format!("'*' or a company id: {}", e.message))
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Any => "*",
            Self::Company(c) => c.as_str(),
        }
    }

    /// Whether this partner is (or includes) `company`.
    pub fn covers(&self, company: &CompanyId) -> bool {
        match self {
            Self::Any => true,
            Self::Company(c) => c == company,
        }
    }
}

impl TryFrom<String> for Partner {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, ValidationError> {
        Self::parse(&s)
    }
}

impl From<Partner> for String {
    fn from(p: Partner) -> String {
        p.as_str().to_owned()
    }
}

impl std::fmt::Display for Partner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A company's consent to exchange published items of `scope` with
/// `partner`: to give it its own, and to take its. Sharing needs one on
/// each side.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// A scope name, such as process_templates.
    pub scope: String,
    /// A company id, or `*` for every company the rules allow.
    #[schema(value_type = String, example = "*")]
    pub partner: Partner,
}

impl Consent {
    pub fn validate(&self, company: &CompanyId) -> Result<(), ValidationError> {
        check_scope_name(&self.scope, "scope")?;
        if self.partner == Partner::Company(company.clone()) {
            return Err(ValidationError::new(
                "partner",
                "a company does not consent to share with itself",
            ));
        }
        Ok(())
    }
}

/// A scope name as the rules spell them: 1 to 64 lowercase letters,
/// digits or '_'.
pub fn check_scope_name(scope: &str, field: &str) -> Result<(), ValidationError> {
    if is_name(scope) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            "must be 1 to 64 lowercase letters, digits or '_'",
        ))
    }
}

/// One side of a sharing decision: who, its profile, its consents.
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    pub id: &'a CompanyId,
    pub profile: &'a CompanyProfile,
    pub consents: &'a [Consent],
}

impl Party<'_> {
    /// The consent of this party that covers `scope` with `other`: one
    /// naming `other` first, else a `*`.
    pub fn consent_for(&self, scope: &str, other: &CompanyId) -> Option<&Consent> {
        let of_scope = || self.consents.iter().filter(|c| c.scope == scope);
        of_scope()
            .find(|c| c.partner == Partner::Company(other.clone()))
            .or_else(|| of_scope().find(|c| c.partner == Partner::Any))
    }
}

/// What [`decide`] looks at: the two companies, their consents, and
/// whether a conflict flag between them is open.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub a: Party<'a>,
    pub b: Party<'a>,
    pub conflict_open: bool,
}

impl Facts<'_> {
    /// The same facts seen from the other company.
    pub fn swapped(&self) -> Self {
        Self {
            a: self.b,
            b: self.a,
            conflict_open: self.conflict_open,
        }
    }
}

/// The answer to "may these two companies share this scope", with the rule
/// that decided and a sentence a person can check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    pub allowed: bool,
    pub flagged_for_review: bool,
    /// The rule that decided; `None` for the default and for the built-in
    /// conflict guard.
    pub rule: Option<String>,
    /// Names each condition that was looked at and its value.
    pub reason: String,
}

/// Decides whether items of `scope` may cross between the two companies.
///
/// In order:
/// 1. a flag rule whose condition holds: nothing is shared, flagged for
///    review (with SEED's rules, that is an open conflict);
/// 2. an open conflict with no flag rule for it: the same, by a built-in
///    guard, so removing the conflict rule from configuration cannot open
///    sharing between companies in conflict;
/// 3. the first allow rule for exactly `scope` whose condition holds,
///    if both companies consent to exchange the scope with each other
///    (a built-in guard too: a rule that does not ask for consent cannot
///    share without it);
/// 4. otherwise the default, deny, saying why each rule did not apply.
///
/// Symmetric: swapping `a` and `b` gives an equal verdict, reason included.
pub fn decide(rules: &SharingRules, facts: &Facts, scope: &str) -> Verdict {
    let ev = Evaluator {
        facts,
        scope,
        groups: &rules.industry_groups,
    };
    for rule in &rules.rules {
        if rule.result == RuleResult::FlagForHumanReview {
            let (holds, why) = ev.eval(&rule.condition);
            if holds {
                return Verdict {
                    allowed: false,
                    flagged_for_review: true,
                    rule: Some(rule.name.clone()),
                    reason: format!(
                        "rule {} flags the pair for human review, so nothing is shared: {why}",
                        rule.name
                    ),
                };
            }
        }
    }
    if facts.conflict_open {
        return Verdict {
            allowed: false,
            flagged_for_review: true,
            rule: None,
            reason: "an open conflict between the two companies blocks all sharing \
                     until a human resolves it (built-in guard; no flag rule matched)"
                .into(),
        };
    }
    for rule in &rules.rules {
        if let RuleResult::Allow { scope: s } = &rule.result
            && s == scope
        {
            let (holds, why) = ev.eval(&rule.condition);
            if holds {
                let (consent, consents) = ev.consent();
                if !consent {
                    return Verdict {
                        allowed: false,
                        flagged_for_review: false,
                        rule: None,
                        reason: format!(
                            "rule {} would allow scope {scope}: {why}; but sharing needs \
                             both companies' consent (built-in guard): {consents}",
                            rule.name
                        ),
                    };
                }
                return Verdict {
                    allowed: true,
                    flagged_for_review: false,
                    rule: Some(rule.name.clone()),
                    reason: format!("rule {} allows scope {scope}: {why}; {consents}", rule.name),
                };
            }
        }
    }
    let mut reason = format!("default deny for scope {scope}");
    if rules.rules.is_empty() {
        reason.push_str(": no rules are configured");
    }
    let mut sep = ": ";
    for rule in &rules.rules {
        reason.push_str(sep);
        sep = "; ";
        let (_, why) = ev.eval(&rule.condition);
        // Writing to a String cannot fail.
        let _ = match &rule.result {
            RuleResult::Allow { scope: s } if s == scope => {
                write!(reason, "rule {} does not hold: {why}", rule.name)
            }
            RuleResult::Allow { scope: s } => {
                write!(reason, "rule {} allows {s}, not {scope}", rule.name)
            }
            RuleResult::FlagForHumanReview => {
                write!(reason, "rule {} (flag) does not hold: {why}", rule.name)
            }
        };
    }
    Verdict {
        allowed: false,
        flagged_for_review: false,
        rule: None,
        reason,
    }
}

struct Evaluator<'a> {
    facts: &'a Facts<'a>,
    scope: &'a str,
    groups: &'a BTreeMap<String, Vec<String>>,
}

impl Evaluator<'_> {
    /// The condition's value, and a description naming every atom's value.
    /// Every atom is evaluated (no short-circuit) so that the explanation is
    /// complete.
    fn eval(&self, c: &Condition) -> (bool, String) {
        match c {
            Condition::All(parts) | Condition::Any(parts) => {
                let all = matches!(c, Condition::All(_));
                let results: Vec<_> = parts.iter().map(|p| self.eval(p)).collect();
                let value = if all {
                    results.iter().all(|(v, _)| *v)
                } else {
                    results.iter().any(|(v, _)| *v)
                };
                let joined = results
                    .into_iter()
                    .map(|(_, s)| s)
                    .collect::<Vec<_>>()
                    .join(if all { " AND " } else { " OR " });
                if parts.len() == 1 {
                    (value, joined)
                } else {
                    (value, format!("({joined})"))
                }
            }
            Condition::SameJurisdiction => {
                let (x, y) = sorted(
                    &self.facts.a.profile.jurisdiction,
                    &self.facts.b.profile.jurisdiction,
                );
                let v = x == y;
                let detail = if v {
                    x.to_owned()
                } else {
                    format!("{x} vs {y}")
                };
                (v, format!("same_jurisdiction = {v} ({detail})"))
            }
            Condition::SimilarIndustry => {
                let a = norm(&self.facts.a.profile.industry);
                let b = norm(&self.facts.b.profile.industry);
                let (x, y) = sorted(&a, &b);
                if x == y {
                    return (true, format!("similar_industry = true (both {x})"));
                }
                let group = self.groups.iter().find(|(name, members)| {
                    let set: BTreeSet<String> = members
                        .iter()
                        .map(|m| norm(m))
                        .chain([norm(name)])
                        .collect();
                    set.contains(x) && set.contains(y)
                });
                match group {
                    Some((name, _)) => (
                        true,
                        format!("similar_industry = true ({x} and {y} are in group {name})"),
                    ),
                    None => (
                        false,
                        format!("similar_industry = false ({x} vs {y}, no common group)"),
                    ),
                }
            }
            Condition::ExplicitConsent => self.consent(),
            Condition::PotentialConflictDetected => {
                let v = self.facts.conflict_open;
                (v, format!("potential_conflict_detected = {v}"))
            }
        }
    }
}

impl Evaluator<'_> {
    /// Whether each side has a consent for the scope covering the other,
    /// and which consents decided, the two sides sorted so the sentence
    /// does not depend on who asks.
    fn consent(&self) -> (bool, String) {
        let scope = self.scope;
        let (a, b) = (&self.facts.a, &self.facts.b);
        let sides = [
            (a.id, a.consent_for(scope, b.id), b.id),
            (b.id, b.consent_for(scope, a.id), a.id),
        ];
        let missing = sides.iter().filter(|(_, c, _)| c.is_none()).count();
        let detail = match missing {
            0 => "both companies consent".to_owned(),
            1 => "consent missing on one side".to_owned(),
            _ => "consent missing on both sides".to_owned(),
        };
        let mut records: Vec<String> = sides
            .iter()
            .map(|(who, c, other)| match c {
                Some(c) => format!("{who} consents to {scope} with {}", c.partner),
                None => format!("{who} has no consent to {scope} with {other} or *"),
            })
            .collect();
        records.sort();
        (
            missing == 0,
            format!(
                "explicit_consent({scope}) = {} ({detail}: {})",
                missing == 0,
                records.join(", ")
            ),
        )
    }
}

fn norm(s: &str) -> String {
    s.trim().to_lowercase()
}

fn sorted<'s>(x: &'s str, y: &'s str) -> (&'s str, &'s str) {
    if x <= y { (x, y) } else { (y, x) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::company::NewCompany;
    use proptest::prelude::*;

    /// A company of the tests, with what a [`Party`] borrows.
    #[derive(Debug, Clone)]
    struct Owned {
        id: CompanyId,
        profile: CompanyProfile,
        consents: Vec<Consent>,
    }

    impl Owned {
        fn party(&self) -> Party<'_> {
            Party {
                id: &self.id,
                profile: &self.profile,
                consents: &self.consents,
            }
        }

        /// Also consents to `scope` with `partner` alone.
        fn with(mut self, scope: &str, partner: &Owned) -> Self {
            self.consents.push(Consent {
                scope: scope.into(),
                partner: Partner::Company(partner.id.clone()),
            });
            self
        }
    }

    fn facts<'a>(a: &'a Owned, b: &'a Owned, conflict_open: bool) -> Facts<'a> {
        Facts {
            a: a.party(),
            b: b.party(),
            conflict_open,
        }
    }

    /// A company named after its industry and jurisdiction ("fintech-us-de")
    /// consenting to each of `consent` with every partner (`*`).
    fn company(industry: &str, jurisdiction: &str, consent: &[&str]) -> Owned {
        let id: String = format!("{}-{}", industry.trim(), jurisdiction)
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let new: NewCompany = serde_json::from_value(serde_json::json!({
            "id": id, "name": "Acme", "industry": industry,
            "jurisdiction": jurisdiction,
        }))
        .expect("valid json");
        let (id, profile) = new.validate().expect("valid company");
        let consents = consent
            .iter()
            .map(|s| Consent {
                scope: (*s).into(),
                partner: Partner::Any,
            })
            .collect();
        Owned {
            id,
            profile,
            consents,
        }
    }

    fn check(a: &Owned, b: &Owned, conflict: bool, scope: &str) -> Verdict {
        let rules = SharingRules::default();
        let facts = facts(a, b, conflict);
        let v = decide(&rules, &facts, scope);
        assert_eq!(v, decide(&rules, &facts.swapped(), scope), "not symmetric");
        v
    }

    const LEGAL: &str = SCOPE_ANONYMIZED_LEGAL_PATTERNS;
    const TEMPLATES: &str = SCOPE_PROCESS_TEMPLATES;

    #[test]
    fn rule_table() {
        let fintech_de = company("fintech", "US-DE", &[LEGAL]);
        let payments_de = company(" Payments ", "US-DE", &[TEMPLATES, LEGAL]);
        let fintech_ca = company("fintech", "US-CA", &[TEMPLATES, LEGAL]);
        let saas_de = company("saas", "US-DE", &[TEMPLATES]);
        let saas_gb = company("SaaS", "GB", &[TEMPLATES, LEGAL]);
        // The legal rule holds for these two and fintech_de, but: no
        // consent at all; a consent naming fintech_de only.
        let bank_de = company("banking", "US-DE", &[]);
        let lending_de = company("lending", "US-DE", &[]).with(LEGAL, &fintech_de);
        // (a, b, conflict open, scope, allowed, flagged, deciding rule)
        type Row<'a> = (
            &'a Owned,
            &'a Owned,
            bool,
            &'a str,
            bool,
            bool,
            Option<&'a str>,
        );
        let table: Vec<Row> = vec![
            // legal_precedent_sharing: same jurisdiction and industry group.
            (
                &fintech_de,
                &payments_de,
                false,
                LEGAL,
                true,
                false,
                Some("legal_precedent_sharing"),
            ),
            // Same industry, different subdivision: the full code differs.
            (&fintech_de, &fintech_ca, false, LEGAL, false, false, None),
            // Same jurisdiction, unrelated industries.
            (&fintech_de, &saas_de, false, LEGAL, false, false, None),
            // Consent does not stand in for the legal rule's conditions.
            (&saas_gb, &fintech_ca, false, LEGAL, false, false, None),
            // best_practice_sharing: both consent.
            (
                &payments_de,
                &fintech_ca,
                false,
                TEMPLATES,
                true,
                false,
                Some("best_practice_sharing"),
            ),
            (
                &saas_de,
                &saas_gb,
                false,
                TEMPLATES,
                true,
                false,
                Some("best_practice_sharing"),
            ),
            // Consent missing on one side; the legal rule holds for this
            // pair but does not grant templates.
            (
                &fintech_de,
                &payments_de,
                false,
                TEMPLATES,
                false,
                false,
                None,
            ),
            // conflict_prevention wins over both allow rules.
            (
                &fintech_de,
                &payments_de,
                true,
                LEGAL,
                false,
                true,
                Some("conflict_prevention"),
            ),
            (
                &payments_de,
                &fintech_ca,
                true,
                TEMPLATES,
                false,
                true,
                Some("conflict_prevention"),
            ),
            // A scope no rule grants, even with both consenting to it.
            (
                &saas_gb,
                &saas_gb,
                false,
                "customer_lists",
                false,
                false,
                None,
            ),
            // Nothing in common at all: default deny.
            (&fintech_ca, &saas_de, false, LEGAL, false, false, None),
            // The legal rule holds, but only one side consents.
            (&fintech_de, &bank_de, false, LEGAL, false, false, None),
            // A consent naming one partner: that partner only.
            (
                &fintech_de,
                &lending_de,
                false,
                LEGAL,
                true,
                false,
                Some("legal_precedent_sharing"),
            ),
            (&payments_de, &lending_de, false, LEGAL, false, false, None),
        ];
        for (i, (a, b, conflict, scope, allowed, flagged, rule)) in table.into_iter().enumerate() {
            let v = check(a, b, conflict, scope);
            assert_eq!(
                (v.allowed, v.flagged_for_review, v.rule.as_deref()),
                (allowed, flagged, rule),
                "row {i}: {}",
                v.reason
            );
        }
    }

    #[test]
    fn reasons_name_each_condition_and_its_value() {
        let a = company("fintech", "US-DE", &[TEMPLATES]);
        let b = company("saas", "US-CA", &[]);
        let v = check(&a, &b, false, LEGAL);
        assert!(v.reason.starts_with("default deny"), "{}", v.reason);
        assert!(
            v.reason
                .contains("same_jurisdiction = false (US-CA vs US-DE)"),
            "{}",
            v.reason
        );
        assert!(
            v.reason.contains("similar_industry = false"),
            "{}",
            v.reason
        );
        assert!(
            v.reason
                .contains("best_practice_sharing allows process_templates, not"),
            "{}",
            v.reason
        );
        assert!(
            v.reason.contains("potential_conflict_detected = false"),
            "{}",
            v.reason
        );

        let v = check(&a, &b, false, TEMPLATES);
        assert!(
            v.reason.contains(
                "explicit_consent(process_templates) = false (consent missing on one side: \
                 fintech-us-de consents to process_templates with *, \
                 saas-us-ca has no consent to process_templates with fintech-us-de or *)"
            ),
            "{}",
            v.reason
        );

        // The consent guard names the rule it stopped and both sides.
        let c = company("banking", "US-DE", &[]);
        let v = check(&a, &c, false, LEGAL);
        assert_eq!(
            v.reason,
            "rule legal_precedent_sharing would allow scope anonymized_legal_patterns: \
             (same_jurisdiction = true (US-DE) AND \
             similar_industry = true (banking and fintech are in group fintech)); \
             but sharing needs both companies' consent (built-in guard): \
             explicit_consent(anonymized_legal_patterns) = false (consent missing on both sides: \
             banking-us-de has no consent to anonymized_legal_patterns with fintech-us-de or *, \
             fintech-us-de has no consent to anonymized_legal_patterns with banking-us-de or *)"
        );
        // Allowed: the rule and the consents that decided.
        let c = c.with(LEGAL, &a);
        let a = a.with(LEGAL, &c);
        let v = check(&a, &c, false, LEGAL);
        assert_eq!(
            v.reason,
            "rule legal_precedent_sharing allows scope anonymized_legal_patterns: \
             (same_jurisdiction = true (US-DE) AND \
             similar_industry = true (banking and fintech are in group fintech)); \
             explicit_consent(anonymized_legal_patterns) = true (both companies consent: \
             banking-us-de consents to anonymized_legal_patterns with fintech-us-de, \
             fintech-us-de consents to anonymized_legal_patterns with banking-us-de)"
        );
    }

    #[test]
    fn consents_read_and_check() {
        let acme = CompanyId::parse("acme").expect("id");
        let c: Consent = serde_json::from_value(
            serde_json::json!({"scope": "process_templates", "partner": "*"}),
        )
        .expect("json");
        assert_eq!(c.partner, Partner::Any);
        c.validate(&acme).expect("valid");
        let own = Consent {
            scope: "process_templates".into(),
            partner: Partner::Company(acme.clone()),
        };
        assert_eq!(own.validate(&acme).expect_err("self").field, "partner");
        let bad = Consent {
            scope: "Bad Scope".into(),
            partner: Partner::Any,
        };
        assert_eq!(bad.validate(&acme).expect_err("scope").field, "scope");
        let e = serde_json::from_value::<Consent>(
            serde_json::json!({"scope": "s", "partner": "Not An Id"}),
        );
        assert!(e.is_err());
        assert_eq!(
            serde_json::to_value(&c).expect("json"),
            serde_json::json!({"scope": "process_templates", "partner": "*"})
        );
    }

    #[test]
    fn a_conflict_blocks_sharing_even_without_the_conflict_rule() {
        let mut rules = SharingRules::default();
        rules.rules.retain(|r| r.name != "conflict_prevention");
        let a = company("fintech", "US-DE", &[TEMPLATES]);
        let facts = facts(&a, &a, true);
        let v = decide(&rules, &facts, TEMPLATES);
        assert!(
            !v.allowed && v.flagged_for_review && v.rule.is_none(),
            "{v:?}"
        );
        assert!(v.reason.contains("open conflict"));
        let v = decide(
            &rules,
            &Facts {
                conflict_open: false,
                ..facts
            },
            TEMPLATES,
        );
        assert!(v.allowed);
    }

    #[test]
    fn no_rules_means_deny() {
        let rules = SharingRules {
            rules: vec![],
            ..SharingRules::default()
        };
        let a = company("fintech", "US-DE", &[TEMPLATES]);
        let v = decide(&rules, &facts(&a, &a, false), TEMPLATES);
        assert!(!v.allowed && !v.flagged_for_review);
        assert_eq!(
            v.reason,
            "default deny for scope process_templates: no rules are configured"
        );
    }

    #[test]
    fn configuration_shape_and_defaults() {
        let rules: SharingRules = serde_json::from_value(serde_json::json!({
            "default": "DENY",
            "rules": [
                {"name": "peers", "condition": {"any": ["same_jurisdiction", {"all": ["similar_industry", "explicit_consent"]}]},
                 "result": {"allow": {"scope": "playbooks"}}},
                {"name": "review", "condition": "potential_conflict_detected", "result": "flag_for_human_review"}
            ]
        }))
        .expect("valid configuration");
        rules.validate().expect("valid rules");
        assert_eq!(
            rules.industry_groups,
            SharingRules::default().industry_groups
        );
        let round: SharingRules =
            serde_json::from_value(serde_json::to_value(&rules).expect("serialises"))
                .expect("reads back");
        assert_eq!(round, rules);

        let empty: SharingRules = serde_json::from_str("{}").expect("all fields default");
        assert_eq!(empty, SharingRules::default());
        SharingRules::default()
            .validate()
            .expect("defaults are valid");

        let unknown = serde_json::from_value::<SharingRules>(serde_json::json!({"rulez": []}));
        assert!(
            unknown
                .expect_err("unknown field")
                .to_string()
                .contains("rulez")
        );
        let unknown = serde_json::from_value::<SharingRules>(serde_json::json!({
            "rules": [{"name": "x", "condition": "same_jurisdiction", "result": {"allow": {"scope": "s", "extra": 1}}}]
        }));
        assert!(
            unknown
                .expect_err("unknown field")
                .to_string()
                .contains("extra")
        );
        let allow = serde_json::from_value::<SharingRules>(serde_json::json!({"default": "allow"}));
        assert!(allow.is_err(), "only deny is a default");
    }

    #[test]
    fn validation_names_the_field() {
        let rule = |name: &str, condition: Condition, scope: &str| Rule {
            name: name.into(),
            condition,
            result: RuleResult::Allow {
                scope: scope.into(),
            },
        };
        let with = |rules: Vec<Rule>| SharingRules {
            rules,
            ..SharingRules::default()
        };
        let deep = (0..MAX_CONDITION_DEPTH)
            .fold(Condition::SameJurisdiction, |c, _| Condition::All(vec![c]));
        let cases = vec![
            (
                "sharing.rules.0.name",
                with(vec![rule("", Condition::SameJurisdiction, "s")]),
            ),
            (
                "sharing.rules.0.name",
                with(vec![rule("Has Space", Condition::SameJurisdiction, "s")]),
            ),
            (
                "sharing.rules.1.name",
                with(vec![
                    rule("a", Condition::SameJurisdiction, "s"),
                    rule("a", Condition::SimilarIndustry, "t"),
                ]),
            ),
            (
                "sharing.rules.0.result.allow.scope",
                with(vec![rule("a", Condition::SameJurisdiction, "")]),
            ),
            (
                "sharing.rules.0.condition.all",
                with(vec![rule("a", Condition::All(vec![]), "s")]),
            ),
            (
                "sharing.rules.0.condition.all.1.any",
                with(vec![rule(
                    "a",
                    Condition::All(vec![Condition::SameJurisdiction, Condition::Any(vec![])]),
                    "s",
                )]),
            ),
            (
                "sharing.rules.0.condition.all.0.all.0.all.0.all.0.all.0.all.0.all.0.all.0",
                with(vec![rule("a", deep, "s")]),
            ),
            (
                "sharing.industry_groups.fintech.1",
                SharingRules {
                    industry_groups: BTreeMap::from([(
                        "fintech".into(),
                        vec!["banking".into(), " ".into()],
                    )]),
                    ..SharingRules::default()
                },
            ),
        ];
        for (field, rules) in cases {
            let e = rules.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        // An industry nobody uses is fine in a group.
        let ok = SharingRules {
            industry_groups: BTreeMap::from([("space".into(), vec!["asteroid mining".into()])]),
            ..SharingRules::default()
        };
        ok.validate().expect("unknown industries are fine");
    }

    /// One of three companies (a, b, c), each consenting to some scopes,
    /// with every partner or with one of the three.
    fn party_strategy() -> impl Strategy<Value = Owned> {
        let ids = prop::sample::select(vec!["aa", "bb", "cc"]);
        let consent = (
            prop::sample::select(vec![LEGAL, TEMPLATES, "playbooks"]),
            prop::sample::select(vec!["*", "aa", "bb", "cc"]),
        )
            .prop_map(|(scope, partner)| Consent {
                scope: scope.into(),
                partner: Partner::parse(partner).expect("partner"),
            });
        (
            profile_strategy(),
            ids,
            prop::collection::vec(consent, 0..4),
        )
            .prop_map(|(o, id, consents)| Owned {
                id: CompanyId::parse(id).expect("id"),
                consents,
                ..o
            })
    }

    fn profile_strategy() -> impl Strategy<Value = Owned> {
        let industries = prop::sample::select(vec![
            "fintech",
            "Banking",
            " payments ",
            "saas",
            "Software",
            "healthcare",
            "mining",
        ]);
        let jurisdictions = prop::sample::select(vec!["US-DE", "US-CA", "US", "GB", "DE-BY"]);
        (industries, jurisdictions).prop_map(|(i, j)| company(i, j, &[]))
    }

    fn scope_strategy() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![LEGAL, TEMPLATES, "playbooks", "customer_lists"])
    }

    fn condition_strategy() -> impl Strategy<Value = Condition> {
        let leaf = prop_oneof![
            Just(Condition::SameJurisdiction),
            Just(Condition::SimilarIndustry),
            Just(Condition::ExplicitConsent),
            Just(Condition::PotentialConflictDetected),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Condition::All),
                prop::collection::vec(inner, 1..4).prop_map(Condition::Any),
            ]
        })
    }

    fn rules_strategy() -> impl Strategy<Value = SharingRules> {
        let result = prop_oneof![
            scope_strategy().prop_map(|s| RuleResult::Allow { scope: s.into() }),
            Just(RuleResult::FlagForHumanReview),
        ];
        prop::collection::vec((condition_strategy(), result), 0..5).prop_map(|rules| SharingRules {
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(i, (condition, result))| Rule {
                    name: format!("rule_{i}"),
                    condition,
                    result,
                })
                .collect(),
            ..SharingRules::default()
        })
    }

    /// Similar industry under the default groups, written out independently
    /// of the evaluator.
    fn similar_by_hand(a: &str, b: &str) -> bool {
        let n = |s: &str| s.trim().to_lowercase();
        let (a, b) = (n(a), n(b));
        let fintech = ["fintech", "banking", "payments"];
        let saas = ["saas", "software"];
        a == b
            || (fintech.contains(&a.as_str()) && fintech.contains(&b.as_str()))
            || (saas.contains(&a.as_str()) && saas.contains(&b.as_str()))
    }

    proptest! {
        #[test]
        fn decide_is_symmetric(
            rules in rules_strategy(),
            a in party_strategy(),
            b in party_strategy(),
            conflict in any::<bool>(),
            scope in scope_strategy(),
        ) {
            let facts = facts(&a, &b, conflict);
            prop_assert_eq!(decide(&rules, &facts, scope), decide(&rules, &facts.swapped(), scope));
        }

        #[test]
        fn default_rules_deny_unless_a_rule_holds(
            a in party_strategy(),
            b in party_strategy(),
            conflict in any::<bool>(),
            scope in scope_strategy(),
        ) {
            let v = decide(&SharingRules::default(), &facts(&a, &b, conflict), scope);
            let legal = scope == LEGAL
                && a.profile.jurisdiction == b.profile.jurisdiction
                && similar_by_hand(&a.profile.industry, &b.profile.industry);
            let templates = scope == TEMPLATES;
            let consent = consent_by_hand(&a, &b, scope);
            prop_assert_eq!(v.allowed, !conflict && consent && (legal || templates), "{}", v.reason);
            prop_assert_eq!(v.flagged_for_review, conflict);
            prop_assert_eq!(v.rule.is_none(), !v.allowed && !conflict);
        }

        #[test]
        fn any_rules_decide_as_written(
            rules in rules_strategy(),
            a in party_strategy(),
            b in party_strategy(),
            conflict in any::<bool>(),
            scope in scope_strategy(),
        ) {
            let v = decide(&rules, &facts(&a, &b, conflict), scope);
            let consent = consent_by_hand(&a, &b, scope);
            let holds = |c: &Condition| holds_by_hand(c, &a, &b, conflict, scope);
            let flag = rules.rules.iter().find(|r| {
                r.result == RuleResult::FlagForHumanReview && holds(&r.condition)
            });
            let allow = rules.rules.iter().find(|r| {
                r.result == RuleResult::Allow { scope: scope.into() } && holds(&r.condition)
            });
            let expected = match (flag, conflict, allow) {
                (Some(r), _, _) => (false, true, Some(r.name.as_str())),
                (None, true, _) => (false, true, None),
                (None, false, Some(r)) if consent => (true, false, Some(r.name.as_str())),
                (None, false, Some(_)) => (false, false, None),
                (None, false, None) => (false, false, None),
            };
            let got = (v.allowed, v.flagged_for_review, v.rule.as_deref());
            prop_assert_eq!(got, expected, "{}", v.reason);
        }
    }

    /// Each side has a consent for the scope naming the other or `*`.
    fn consent_by_hand(a: &Owned, b: &Owned, scope: &str) -> bool {
        let gives = |x: &Owned, y: &Owned| {
            x.consents.iter().any(|c| {
                c.scope == scope
                    && (c.partner == Partner::Any || c.partner == Partner::Company(y.id.clone()))
            })
        };
        gives(a, b) && gives(b, a)
    }

    fn holds_by_hand(c: &Condition, a: &Owned, b: &Owned, conflict: bool, scope: &str) -> bool {
        match c {
            Condition::All(cs) => cs.iter().all(|c| holds_by_hand(c, a, b, conflict, scope)),
            Condition::Any(cs) => cs.iter().any(|c| holds_by_hand(c, a, b, conflict, scope)),
            Condition::SameJurisdiction => a.profile.jurisdiction == b.profile.jurisdiction,
            Condition::SimilarIndustry => similar_by_hand(&a.profile.industry, &b.profile.industry),
            Condition::ExplicitConsent => consent_by_hand(a, b, scope),
            Condition::PotentialConflictDetected => conflict,
        }
    }
}
