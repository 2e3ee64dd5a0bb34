//! Token budgets (SEED 4.1, 4.3): the three pools and who may draw from
//! which, each company's allocation of the base pool, budget periods, burn
//! projections and costs. Reserving and settling happen in the store; this
//! module only says how much there is and who gets it.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::company::CompanyProfile;
use crate::task::Priority;
use crate::{CompanyId, ValidationError};

/// Where tokens come from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Divided between the active companies by their allocation factors.
    Base,
    /// Shared, first come first served, by the levels the policy allows once
    /// a company's base allocation is spent.
    Burst,
    /// Only ever granted by a human, one request at a time.
    Emergency,
}

impl Pool {
    pub const ALL: [Pool; 3] = [Pool::Base, Pool::Burst, Pool::Emergency];

    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Base => "base",
            Pool::Burst => "burst",
            Pool::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "pool",
                    format!("'{s}' is not one of base, burst, emergency"),
                )
            })
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pool {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Past this a total is a typo, and products of totals with percentages
/// and weights would come near `i64`'s range.
pub const MAX_TOTAL_TOKENS: i64 = 1_000_000_000_000_000;

/// A period's budget and the policy on who may draw from burst and who may
/// ask for emergency tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Tokens per period, all pools together.
    pub total_tokens: i64,
    pub base_percent: u8,
    pub burst_percent: u8,
    pub emergency_percent: u8,
    /// Levels that may draw from burst once their company's base is spent.
    pub burst_levels: BTreeSet<Priority>,
    /// Levels that may ask a human for emergency tokens.
    pub emergency_levels: BTreeSet<Priority>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            total_tokens: 2_000_000,
            base_percent: 60,
            burst_percent: 30,
            emergency_percent: 10,
            burst_levels: [Priority::Emergency, Priority::Urgent, Priority::High].into(),
            emergency_levels: [Priority::Emergency, Priority::Urgent].into(),
        }
    }
}

/// How many tokens each pool holds in a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolCapacities {
    pub base: i64,
    pub burst: i64,
    pub emergency: i64,
}

impl PoolCapacities {
    pub fn of(&self, pool: Pool) -> i64 {
        match pool {
            Pool::Base => self.base,
            Pool::Burst => self.burst,
            Pool::Emergency => self.emergency,
        }
    }
}

impl BudgetConfig {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(1..=MAX_TOTAL_TOKENS).contains(&self.total_tokens) {
            return Err(ValidationError::new(
                "budget.total_tokens",
                format!("must be between 1 and {MAX_TOTAL_TOKENS}"),
            ));
        }
        let sum = u32::from(self.base_percent)
            + u32::from(self.burst_percent)
            + u32::from(self.emergency_percent);
        if sum != 100 {
            return Err(ValidationError::new(
                "budget.base_percent",
                format!(
                    "base_percent ({}) + burst_percent ({}) + emergency_percent ({}) \
                     must be 100, not {sum}",
                    self.base_percent, self.burst_percent, self.emergency_percent
                ),
            ));
        }
        Ok(())
    }

    /// The pools' sizes. Base and burst are rounded down and emergency takes
    /// the rest, so the three always add up to the total exactly: no token
    /// is lost to rounding and none is invented.
    pub fn capacities(&self) -> PoolCapacities {
        let total = i128::from(self.total_tokens);
        let part = |percent: u8| saturate(total * i128::from(percent) / 100);
        let base = part(self.base_percent);
        let burst = part(self.burst_percent);
        PoolCapacities {
            base,
            burst,
            emergency: self.total_tokens.saturating_sub(base).saturating_sub(burst),
        }
    }
}

/// The pools a task of this level may reserve from without asking anyone,
/// in the order to try them. Never emergency: that needs a human.
pub fn pools_to_try(priority: Priority, cfg: &BudgetConfig) -> Vec<Pool> {
    let mut pools = vec![Pool::Base];
    if cfg.burst_levels.contains(&priority) {
        pools.push(Pool::Burst);
    }
    pools
}

/// Whether a task of this level, finding base and burst spent, may ask a
/// human for emergency tokens (and wait in awaiting_approval) rather than
/// wait for budget.
pub fn may_request_emergency(priority: Priority, cfg: &BudgetConfig) -> bool {
    cfg.emergency_levels.contains(&priority)
}

/// What SEED 4.1's allocation factor is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompanyFactors {
    pub revenue_usd: i64,
    /// In [0, 1].
    pub complexity_score: f64,
    /// In [0, 1].
    pub activity_score: f64,
}

impl From<&CompanyProfile> for CompanyFactors {
    fn from(p: &CompanyProfile) -> Self {
        Self {
            revenue_usd: p.revenue_usd,
            complexity_score: p.complexity_score,
            activity_score: p.activity_score,
        }
    }
}

/// SEED 4.1's allocation factor, exactly: revenue (in millions, counted up
/// to 3) × 0.3 + complexity × 0.25 + activity × 0.25 + a base minimum of
/// 0.2, capped at 0.8. For a valid profile it is in [0.2, 0.8].
///
/// It is a weight, not a fraction of the pool: five companies at 0.8 would
/// ask for 240% of it. [`allocate`] normalizes the factors.
pub fn allocation_factor(f: &CompanyFactors) -> f64 {
    let revenue = (f.revenue_usd as f64 / 1_000_000.0).min(3.0) * 0.3;
    let complexity = f.complexity_score * 0.25;
    let activity = f.activity_score * 0.25;
    (revenue + complexity + activity + 0.2).min(0.8)
}

/// One company's claim on the base pool.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationInput {
    pub company: CompanyId,
    /// From [`allocation_factor`].
    pub factor: f64,
    /// Archived companies are not active: they get no new tokens.
    pub active: bool,
    /// Tokens already spent plus reserved from base this period.
    pub committed: i64,
}

/// One company's share of the base pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    pub company: CompanyId,
    /// The allocation factor, as given.
    pub factor: f64,
    /// The factor normalized over the active companies: the shares of the
    /// active companies sum to 1; an inactive company's is 0.
    pub share: f64,
    /// The company's base allocation for the period.
    pub tokens: i64,
}

/// Divides the base pool between companies.
///
/// Each active company's target is `base_pool × share`. A recomputation
/// never takes away what was spent or reserved, so every company gets at
/// least its `committed` tokens, and the rest is shared by water-filling:
/// a company whose committed tokens exceed its (scaled) target is pinned at
/// its committed tokens, and the others share what remains in proportion to
/// their factors. Inactive companies keep exactly their committed tokens.
///
/// Whole tokens are handed out by largest remainder (ties to the smaller
/// company id), so with at least one active company and no more committed
/// than the pool, the allocations sum to exactly `base_pool`. When the
/// committed tokens already exceed the pool, each company gets its committed
/// tokens and nothing more. The output follows the input's order, and the
/// result for each company does not depend on that order.
///
/// The arithmetic is exact (integers): factors become integer weights
/// relative to the largest, with at least 48 bits of precision, so a
/// company's tokens are within one of `base_pool × share`. A factor that is
/// not a positive number (which [`allocation_factor`] never returns) counts
/// as the smallest weight, so the company stays active but gets almost
/// nothing beyond what it committed.
pub fn allocate(base_pool: i64, inputs: &[AllocationInput]) -> Vec<Allocation> {
    let weights = weights(inputs);
    let weight_total: i128 = weights.iter().sum();
    let committed: Vec<i64> = inputs.iter().map(|i| i.committed.max(0)).collect();
    let mut tokens = committed.clone();

    let active: Vec<usize> = (0..inputs.len()).filter(|&i| inputs[i].active).collect();
    // What the active companies share: the pool less what inactive ones keep.
    let inactive_committed: i128 = (0..inputs.len())
        .filter(|&i| !inputs[i].active)
        .map(|i| i128::from(committed[i]))
        .sum();
    let mut room = i128::from(base_pool.max(0)) - inactive_committed;

    // Water-filling. Each round pins the companies whose committed tokens
    // exceed their target at the current level; pinning only lowers the
    // level for the rest, so a company left free stays free, and the loop
    // ends within one round per company. All comparisons are in integers
    // (committed × total weight vs room × weight) so none is decided by
    // rounding. `room` is below 2^63 and weights below 2^52, so the
    // products fit in i128 (see `weights`).
    let mut free = active;
    if room < 0 {
        free.clear();
    }
    while !free.is_empty() {
        let w_free = weight_sum(&free, &weights);
        let (pinned, rest): (Vec<usize>, Vec<usize>) = free
            .iter()
            .partition(|&&i| i128::from(committed[i]) * w_free > room * weights[i]);
        if pinned.is_empty() {
            break;
        }
        room -= pinned
            .iter()
            .map(|&i| i128::from(committed[i]))
            .sum::<i128>();
        free = rest;
    }

    if !free.is_empty() {
        // Every free company's target is at least its committed tokens, so
        // its floor is too; the floors leave fewer than `free.len()` tokens,
        // one each to the largest remainders.
        let w_free = weight_sum(&free, &weights);
        let mut remainders = Vec::with_capacity(free.len());
        let mut handed_out: i128 = 0;
        for &i in &free {
            let exact = room * weights[i];
            let floor = exact / w_free;
            tokens[i] = saturate(floor);
            handed_out += floor;
            remainders.push((exact % w_free, i));
        }
        remainders.sort_by(|(ra, a), (rb, b)| {
            rb.cmp(ra)
                .then_with(|| inputs[*a].company.cmp(&inputs[*b].company))
                .then(a.cmp(b))
        });
        let leftover = usize::try_from(room - handed_out).unwrap_or(0);
        for &(_, i) in remainders.iter().take(leftover) {
            tokens[i] += 1;
        }
    }

    inputs
        .iter()
        .enumerate()
        .map(|(i, input)| Allocation {
            company: input.company.clone(),
            factor: input.factor,
            share: if weights[i] == 0 {
                0.0
            } else {
                weights[i] as f64 / weight_total as f64
            },
            tokens: tokens[i],
        })
        .collect()
}

/// Integer weights for the active companies' factors (0 for inactive
/// ones): `factor / largest factor` scaled to `2^bits`, rounded, and never
/// below one. `bits` is 52 (an f64's precision) for up to 2,047 companies
/// and less above, keeping `committed × total weight` (below
/// 2^63 × n × 2^bits) inside i128.
fn weights(inputs: &[AllocationInput]) -> Vec<i128> {
    let usable = |f: f64| f.is_finite() && f > 0.0;
    let active = inputs.iter().filter(|i| i.active).count();
    let n_bits = usize::BITS - active.leading_zeros();
    let bits = 52u32.min(63u32.saturating_sub(n_bits));
    let scale = (1u64 << bits) as f64;
    let largest = inputs
        .iter()
        .filter(|i| i.active && usable(i.factor))
        .map(|i| i.factor)
        .fold(0.0, f64::max);
    inputs
        .iter()
        .map(|i| {
            if !i.active {
                0
            } else if usable(i.factor) {
                // In (0, 2^bits], so the cast is exact and in range.
                ((i.factor / largest * scale).round() as i128).max(1)
            } else {
                1
            }
        })
        .collect()
}

fn weight_sum(of: &[usize], weights: &[i128]) -> i128 {
    of.iter().map(|&i| weights[i]).sum()
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// A budget period: a calendar month in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Period {
    /// `YYYY-MM`, e.g. `2026-11`.
    pub id: String,
    /// The first instant of the month.
    pub start: DateTime<Utc>,
    /// The first instant of the next month (exclusive).
    pub end: DateTime<Utc>,
}

/// The period `now` falls in.
pub fn period_of(now: DateTime<Utc>) -> Period {
    Period::month(now.year(), now.month())
}

impl Period {
    fn month(year: i32, month: u32) -> Period {
        let (next_year, next_month) = if month == 12 {
            (year.saturating_add(1), 1)
        } else {
            (year, month + 1)
        };
        Period {
            id: format!("{year:04}-{month:02}"),
            // Only at the ends of chrono's range (year ±262,143) can these
            // be missing; the range's own ends then stand in.
            start: first_instant(year, month).unwrap_or(DateTime::<Utc>::MIN_UTC),
            end: first_instant(next_year, next_month).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// The period a `YYYY-MM` id names.
    pub fn parse(id: &str) -> Result<Period, ValidationError> {
        let parsed = id.split_once('-').and_then(|(y, m)| {
            let digits = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(y, 4) || !digits(m, 2) {
                return None;
            }
            let month: u32 = m.parse().ok().filter(|m| (1..=12).contains(m))?;
            Some((y.parse().ok()?, month))
        });
        match parsed {
            Some((year, month)) => Ok(Period::month(year, month)),
            None => Err(ValidationError::new(
                "period",
                format!("'{id}' is not a period such as 2026-11"),
            )),
        }
    }

    /// The period after this one.
    pub fn next(&self) -> Period {
        period_of(self.end)
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    pub fn length(&self) -> TimeDelta {
        self.end - self.start
    }
}

fn first_instant(year: i32, month: u32) -> Option<DateTime<Utc>> {
    Some(
        NaiveDate::from_ymd_opt(year, month, 1)?
            .and_hms_opt(0, 0, 0)?
            .and_utc(),
    )
}

/// Milliseconds of the period that have passed by `now`, and its length.
fn elapsed_ms(period: &Period, now: DateTime<Utc>) -> (i64, i64) {
    let length = period.length().num_milliseconds().max(0);
    let elapsed = (now - period.start).num_milliseconds().clamp(0, length);
    (elapsed, length)
}

/// What `used` tokens become by the period's end if the rate so far goes
/// on (rounded down). Before any time has passed there is no rate yet, and
/// after the end nothing more is used, so both are just `used`.
pub fn projected_period_use(used: i64, period: &Period, now: DateTime<Utc>) -> i64 {
    let (elapsed, length) = elapsed_ms(period, now);
    if elapsed == 0 {
        return used;
    }
    saturate(i128::from(used) * i128::from(length) / i128::from(elapsed))
}

/// Tokens per day so far this period; 0 before any time has passed.
pub fn burn_rate_per_day(used: i64, period: &Period, now: DateTime<Utc>) -> f64 {
    let (elapsed, _) = elapsed_ms(period, now);
    if elapsed == 0 {
        return 0.0;
    }
    used as f64 / (elapsed as f64 / 86_400_000.0)
}

/// A model's price in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl ModelPrice {
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, v) in [
            ("input_per_million", self.input_per_million),
            ("output_per_million", self.output_per_million),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ValidationError::new(field, "must be a price of 0 or more"));
            }
        }
        Ok(())
    }
}

/// The cost of one call. Usage a provider reports is never negative; if a
/// negative count slips through it costs nothing rather than refunding.
pub fn cost_usd(price: &ModelPrice, prompt_tokens: i64, completion_tokens: i64) -> f64 {
    prompt_tokens.max(0) as f64 * price.input_per_million / 1_000_000.0
        + completion_tokens.max(0) as f64 * price.output_per_million / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn id(s: &str) -> CompanyId {
        CompanyId::parse(s).expect("valid company id")
    }

    fn input(company: &str, factor: f64, active: bool, committed: i64) -> AllocationInput {
        AllocationInput {
            company: id(company),
            factor,
            active,
            committed,
        }
    }

    fn tokens(allocs: &[Allocation]) -> Vec<i64> {
        allocs.iter().map(|a| a.tokens).collect()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid time")
    }

    #[test]
    fn pool_names_and_serde_agree() {
        for p in Pool::ALL {
            assert_eq!(Pool::parse(p.as_str()), Ok(p));
            assert_eq!(
                serde_json::to_value(p).expect("serialize"),
                serde_json::json!(p.as_str())
            );
        }
        assert_eq!(Pool::parse("Base").expect_err("case").field, "pool");
    }

    #[test]
    fn default_budget_is_seeds() {
        let cfg = BudgetConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(
            cfg.capacities(),
            PoolCapacities {
                base: 1_200_000,
                burst: 600_000,
                emergency: 200_000
            }
        );
    }

    #[test]
    fn capacities_sum_to_the_total_despite_rounding() {
        let cfg = BudgetConfig {
            total_tokens: 1_000_001,
            base_percent: 33,
            burst_percent: 33,
            emergency_percent: 34,
            ..BudgetConfig::default()
        };
        let c = cfg.capacities();
        assert_eq!((c.base, c.burst, c.emergency), (330_000, 330_000, 340_001));
        assert_eq!(c.of(Pool::Emergency), 340_001);
    }

    #[test]
    fn bad_budget_fields_are_named() {
        let ok = BudgetConfig::default();
        let cases = [
            (
                BudgetConfig {
                    total_tokens: 0,
                    ..ok.clone()
                },
                "budget.total_tokens",
            ),
            (
                BudgetConfig {
                    total_tokens: MAX_TOTAL_TOKENS + 1,
                    ..ok.clone()
                },
                "budget.total_tokens",
            ),
            (
                BudgetConfig {
                    emergency_percent: 11,
                    ..ok.clone()
                },
                "budget.base_percent",
            ),
            (
                BudgetConfig {
                    base_percent: 255,
                    burst_percent: 255,
                    ..ok.clone()
                },
                "budget.base_percent",
            ),
        ];
        for (cfg, field) in cases {
            assert_eq!(cfg.validate().expect_err(field).field, field);
        }
    }

    #[test]
    fn pool_policy_defaults() {
        let cfg = BudgetConfig::default();
        use Priority::*;
        for (p, pools, emergency) in [
            (Emergency, vec![Pool::Base, Pool::Burst], true),
            (Urgent, vec![Pool::Base, Pool::Burst], true),
            (High, vec![Pool::Base, Pool::Burst], false),
            (Medium, vec![Pool::Base], false),
            (Low, vec![Pool::Base], false),
        ] {
            assert_eq!(pools_to_try(p, &cfg), pools, "{p}");
            assert_eq!(may_request_emergency(p, &cfg), emergency, "{p}");
        }
        // The table is configuration, not code; even an emergency level in
        // burst_levels never draws from the emergency pool unasked.
        let open = BudgetConfig {
            burst_levels: Priority::ALL.into(),
            emergency_levels: BTreeSet::new(),
            ..cfg
        };
        for p in Priority::ALL {
            assert_eq!(pools_to_try(p, &open), [Pool::Base, Pool::Burst]);
            assert!(!may_request_emergency(p, &open));
        }
    }

    #[test]
    fn seed_allocation_factors() {
        let f = |revenue_usd, complexity_score, activity_score| {
            allocation_factor(&CompanyFactors {
                revenue_usd,
                complexity_score,
                activity_score,
            })
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // A new company with nothing yet: the base minimum only.
        assert!(close(f(0, 0.0, 0.0), 0.2));
        // The profile defaults (complexity and activity 0.5), no revenue.
        assert!(close(f(0, 0.5, 0.5), 0.45));
        // $500k: 0.15 + 0.05 + 0.1 + 0.2.
        assert!(close(f(500_000, 0.2, 0.4), 0.5));
        // $1M, quiet: 0.3 + 0.0 + 0.25 × 0.2 + 0.2.
        assert!(close(f(1_000_000, 0.0, 0.2), 0.55));
        // $2M and busy: 0.6 + 0.2 + 0.15 + 0.2 = 1.15, capped.
        assert!(close(f(2_000_000, 0.8, 0.6), 0.8));
        // Revenue counts up to $3M: $50M with nothing else is 0.9 + 0.2, capped.
        assert!(close(f(50_000_000, 0.0, 0.0), 0.8));
        // Just under the cap.
        assert!(close(f(1_500_000, 0.1, 0.1), 0.7));
    }

    #[test]
    fn factors_come_from_the_profile() {
        let (_, profile) =
            serde_json::from_value::<crate::company::NewCompany>(serde_json::json!({
                "id": "acme", "name": "Acme", "industry": "fintech",
                "jurisdiction": "US-DE", "revenue_usd": 2_000_000
            }))
            .expect("valid json")
            .validate()
            .expect("valid profile");
        let f = CompanyFactors::from(&profile);
        assert_eq!(f.revenue_usd, 2_000_000);
        assert!((allocation_factor(&f) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn five_companies_at_the_cap_share_the_pool_equally() {
        let inputs: Vec<_> = ["aa", "bb", "cc", "dd", "ee"]
            .iter()
            .map(|c| input(c, 0.8, true, 0))
            .collect();
        let a = allocate(1_200_000, &inputs);
        assert_eq!(tokens(&a), [240_000; 5]);
        assert!(a.iter().all(|x| x.share == 0.2 && x.factor == 0.8));
    }

    #[test]
    fn largest_remainder_breaks_ties_by_company_id() {
        // Factors 9 : 16 : 10 of 35; 1.2M × 9/35 and 1.2M × 16/35 both leave
        // 15/35, 1.2M × 10/35 leaves 5/35: one token is left, to "alpha".
        let run = |inputs: &[AllocationInput]| allocate(1_200_000, inputs);
        let inputs = [
            input("gamma", 0.5, true, 0),
            input("beta", 0.8, true, 0),
            input("alpha", 0.45, true, 0),
        ];
        let a = run(&inputs);
        assert_eq!(tokens(&a), [342_857, 548_571, 308_572]);
        assert_eq!(a.iter().map(|x| x.tokens).sum::<i64>(), 1_200_000);
        let reversed: Vec<_> = inputs.iter().rev().cloned().collect();
        assert_eq!(tokens(&run(&reversed)), [308_572, 548_571, 342_857]);
    }

    #[test]
    fn recomputation_keeps_what_was_committed() {
        // "small" spent 700k under an older allocation, more than its new
        // target of 133,333: it keeps 700k and the others share the rest.
        let a = allocate(
            1_200_000,
            &[
                input("small", 0.2, true, 700_000),
                input("big", 0.8, true, 100_000),
                input("busy", 0.8, true, 0),
            ],
        );
        assert_eq!(tokens(&a), [700_000, 250_000, 250_000]);
        assert!((a[0].share - 0.2 / 1.8).abs() < 1e-12);
    }

    #[test]
    fn archived_companies_keep_their_committed_tokens_only() {
        let a = allocate(
            1_000_000,
            &[
                input("old", 0.8, false, 300_000),
                input("new", 0.4, true, 0),
                input("mid", 0.2, true, 0),
            ],
        );
        assert_eq!(tokens(&a), [300_000, 466_667, 233_333]);
        assert_eq!(a[0].share, 0.0);
        assert!((a[1].share - 2.0 / 3.0).abs() < 1e-12);

        let none_active = allocate(
            1_000_000,
            &[input("old", 0.8, false, 5), input("ex", 0.3, false, 0)],
        );
        assert_eq!(tokens(&none_active), [5, 0]);
    }

    #[test]
    fn over_committed_pool_takes_nothing_away() {
        let a = allocate(
            1_000,
            &[
                input("aa", 0.5, true, 800),
                input("bb", 0.5, true, 700),
                input("cc", 0.5, true, 0),
            ],
        );
        assert_eq!(tokens(&a), [800, 700, 0]);
    }

    #[test]
    fn unusable_factors_do_not_break_the_sum() {
        let a = allocate(
            1_000,
            &[
                input("aa", f64::NAN, true, 0),
                input("bb", 0.0, true, 0),
                input("cc", -1.0, true, 0),
            ],
        );
        assert_eq!(a.iter().map(|x| x.tokens).sum::<i64>(), 1_000);
        let b = allocate(
            1_000,
            &[input("aa", f64::NAN, true, 0), input("bb", 0.5, true, 0)],
        );
        assert_eq!(tokens(&b), [0, 1_000]);
    }

    #[derive(Debug, Clone)]
    struct Case {
        base_pool: i64,
        inputs: Vec<AllocationInput>,
    }

    /// Up to 12 companies; committed tokens anywhere from none to more than
    /// a fair share, so that both pinning and over-commitment happen.
    fn any_case() -> impl Strategy<Value = Case> {
        (0i64..=1_000_000_000_000, 1usize..=12).prop_flat_map(|(base_pool, n)| {
            let company = (
                0.2f64..=0.8,
                proptest::bool::weighted(0.8),
                prop_oneof![Just(0u32), 0u32..=2_000],
            );
            proptest::collection::vec(company, n).prop_map(move |cs| Case {
                base_pool,
                inputs: cs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (factor, active, permille))| AllocationInput {
                        company: id(&format!("c{i:02}")),
                        factor,
                        active,
                        // Up to 2× an equal share of the pool.
                        committed: (i128::from(base_pool) * i128::from(permille)
                            / (1000 * n as i128)) as i64,
                    })
                    .collect(),
            })
        })
    }

    fn uncommitted(case: &Case) -> Case {
        let mut case = case.clone();
        for i in &mut case.inputs {
            i.committed = 0;
        }
        case
    }

    proptest! {
        #[test]
        fn sums_to_the_pool_exactly(case in any_case()) {
            let a = allocate(case.base_pool, &case.inputs);
            let sum: i64 = a.iter().map(|x| x.tokens).sum();
            let committed: i64 = case.inputs.iter().map(|i| i.committed).sum();
            let any_active = case.inputs.iter().any(|i| i.active);
            if !any_active || committed > case.base_pool {
                prop_assert_eq!(sum, committed);
            } else {
                prop_assert_eq!(sum, case.base_pool);
            }
            let share_sum: f64 = a.iter().map(|x| x.share).sum();
            if any_active {
                prop_assert!((share_sum - 1.0).abs() < 1e-9, "{share_sum}");
            }
        }

        #[test]
        fn never_below_committed_and_inactive_get_exactly_that(case in any_case()) {
            let a = allocate(case.base_pool, &case.inputs);
            prop_assert_eq!(a.len(), case.inputs.len());
            for (x, i) in a.iter().zip(&case.inputs) {
                prop_assert_eq!(&x.company, &i.company, "input order");
                prop_assert!(x.tokens >= i.committed, "{x:?} < {i:?}");
                if !i.active {
                    prop_assert_eq!(x.tokens, i.committed);
                    prop_assert_eq!(x.share, 0.0);
                }
            }
        }

        #[test]
        fn uncommitted_tokens_follow_the_shares(case in any_case()) {
            let case = uncommitted(&case);
            let a = allocate(case.base_pool, &case.inputs);
            for x in &a {
                let exact = case.base_pool as f64 * x.share;
                prop_assert!((x.tokens as f64 - exact).abs() <= 1.0 + 1e-6, "{x:?} vs {exact}");
            }
        }

        #[test]
        fn larger_factor_never_gets_less(case in any_case()) {
            let case = uncommitted(&case);
            let a = allocate(case.base_pool, &case.inputs);
            for (x, i) in a.iter().zip(&case.inputs) {
                for (y, j) in a.iter().zip(&case.inputs) {
                    if i.active && j.active && i.factor > j.factor {
                        prop_assert!(x.tokens >= y.tokens, "{x:?} vs {y:?}");
                    }
                }
            }
        }

        /// Same companies, any order: the same allocation for each.
        #[test]
        fn deterministic_and_order_free(case in any_case()) {
            let a = allocate(case.base_pool, &case.inputs);
            prop_assert_eq!(&a, &allocate(case.base_pool, &case.inputs));
            let reversed: Vec<_> = case.inputs.iter().rev().cloned().collect();
            let mut b = allocate(case.base_pool, &reversed);
            b.reverse();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn capacities_always_sum_to_the_total(
            total in 1i64..=MAX_TOTAL_TOKENS,
            base in 0u8..=100,
            burst_frac in 0.0f64..=1.0,
        ) {
            let burst = ((100 - base) as f64 * burst_frac) as u8;
            let cfg = BudgetConfig {
                total_tokens: total,
                base_percent: base,
                burst_percent: burst,
                emergency_percent: 100 - base - burst,
                ..BudgetConfig::default()
            };
            prop_assert!(cfg.validate().is_ok());
            let c = cfg.capacities();
            prop_assert_eq!(c.base + c.burst + c.emergency, total);
            prop_assert!(c.base >= 0 && c.burst >= 0 && c.emergency >= 0);
            prop_assert_eq!(c.base, total * i64::from(base) / 100);
        }
    }

    #[test]
    fn periods_are_calendar_months_in_utc() {
        let p = period_of(utc(2026, 11, 15, 9, 30, 0));
        assert_eq!(p.id, "2026-11");
        assert_eq!(p.start, utc(2026, 11, 1, 0, 0, 0));
        assert_eq!(p.end, utc(2026, 12, 1, 0, 0, 0));
        assert_eq!(p.length(), TimeDelta::days(30));
        // The first instant belongs to the month, the end to the next.
        assert_eq!(period_of(p.start), p);
        assert!(p.contains(p.start));
        assert!(!p.contains(p.end));
        assert_eq!(period_of(p.end - TimeDelta::nanoseconds(1)), p);
        assert_eq!(period_of(p.end).id, "2026-12");
        assert_eq!(p.next().id, "2026-12");
    }

    #[test]
    fn periods_cross_the_year() {
        let dec = period_of(utc(2026, 12, 31, 23, 59, 59));
        assert_eq!(dec.id, "2026-12");
        assert_eq!(dec.end, utc(2027, 1, 1, 0, 0, 0));
        let jan = dec.next();
        assert_eq!(jan.id, "2027-01");
        assert_eq!(jan.start, dec.end);
        assert_eq!(period_of(utc(2027, 1, 1, 0, 0, 0)), jan);
        let feb = period_of(utc(2028, 2, 29, 12, 0, 0));
        assert_eq!(feb.length(), TimeDelta::days(29), "leap year");
    }

    #[test]
    fn period_ids_parse_back() {
        for id in ["2026-01", "2026-11", "2026-12", "1999-02"] {
            let p = Period::parse(id).expect(id);
            assert_eq!(p.id, id);
            assert_eq!(period_of(p.start), p);
        }
        for bad in [
            "",
            "2026",
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026-11-01",
            "2026/11",
        ] {
            assert_eq!(Period::parse(bad).expect_err(bad).field, "period", "{bad}");
        }
    }

    #[test]
    fn burn_projection() {
        let p = period_of(utc(2026, 11, 1, 0, 0, 0));
        let ten_days_in = utc(2026, 11, 11, 0, 0, 0);
        assert_eq!(projected_period_use(100_000, &p, ten_days_in), 300_000);
        assert_eq!(burn_rate_per_day(100_000, &p, ten_days_in), 10_000.0);
        // Nothing has elapsed: no rate, and the projection is what is used.
        assert_eq!(projected_period_use(500, &p, p.start), 500);
        assert_eq!(
            projected_period_use(500, &p, p.start - TimeDelta::days(1)),
            500
        );
        assert_eq!(burn_rate_per_day(500, &p, p.start), 0.0);
        // After the end the month is over.
        let later = p.end + TimeDelta::days(5);
        assert_eq!(projected_period_use(600_000, &p, later), 600_000);
        assert_eq!(burn_rate_per_day(600_000, &p, later), 20_000.0);
        assert_eq!(
            projected_period_use(i64::MAX / 2, &p, p.start + TimeDelta::milliseconds(1)),
            i64::MAX
        );
    }

    #[test]
    fn costs() {
        let price = ModelPrice {
            input_per_million: 3.0,
            output_per_million: 15.0,
        };
        assert_eq!(price.validate(), Ok(()));
        assert_eq!(cost_usd(&price, 1_000_000, 100_000), 4.5);
        assert_eq!(cost_usd(&price, 0, 0), 0.0);
        assert_eq!(cost_usd(&price, -5, 0), 0.0);
        let bad = ModelPrice {
            input_per_million: -1.0,
            ..price
        };
        assert_eq!(
            bad.validate().expect_err("negative").field,
            "input_per_million"
        );
        let bad = ModelPrice {
            output_per_million: f64::INFINITY,
            ..price
        };
        assert_eq!(
            bad.validate().expect_err("infinite").field,
            "output_per_million"
        );
    }
}
