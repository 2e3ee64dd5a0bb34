//! The audit log's entries and the hash chain that makes tampering visible.
//! Each entry's hash covers its fields and the previous entry's hash; the
//! first entry follows [`GENESIS`].

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::CompanyId;
use crate::auth::sha256;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused: no key, wrong role, or another company's resource.
    Denied,
    /// Refused: the input was invalid or conflicted with what is stored.
    Rejected,
    /// Failed inside the server.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => Outcome::Ok,
            "denied" => Outcome::Denied,
            "rejected" => Outcome::Rejected,
            "error" => Outcome::Error,
            _ => return None,
        })
    }
}

/// What happened, before it is placed in the chain. `detail` is a short
/// human note (an error code, a field name); never a secret or a token.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub request_id: String,
    pub actor: String,
    pub company_id: Option<CompanyId>,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// An entry of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub request_id: String,
    pub actor: String,
    pub company_id: Option<CompanyId>,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The entry that follows `prev` (sequence number and hash) in the chain.
    /// Time is cut to microseconds, what both databases keep; text is
    /// [`printable`], so a refused request's odd bytes are still recorded.
    pub fn chain(self, prev_seq: i64, prev_hash: &str) -> AuditEntry {
        let mut e = AuditEntry {
            seq: prev_seq + 1,
            at: self.at.trunc_subsecs(6),
            request_id: printable(self.request_id),
            actor: printable(self.actor),
            company_id: self.company_id,
            action: printable(self.action),
            target: printable(self.target),
            outcome: self.outcome,
            detail: printable(self.detail),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        e.hash = e.computed_hash();
        e
    }
}

/// `text` with every control character (NUL included, which PostgreSQL
/// cannot store) replaced by U+FFFD, so what a client sent can always be
/// written to the log and read back as it was written.
pub fn printable(text: String) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect()
    } else {
        text
    }
}

/// At most `max` bytes of `text` (cut at a character boundary), marked
/// with `…[N bytes]` (the full length) when cut.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes]", &text[..end], text.len())
}

impl AuditEntry {
    /// The hash these fields should have. Fields are length-prefixed so no
    /// two different entries serialise to the same bytes.
    pub fn computed_hash(&self) -> String {
        let at = self.at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let company = self.company_id.as_ref().map_or("", |c| c.as_str());
        let seq = self.seq.to_string();
        let fields: [&str; 10] = [
            &seq,
            &at,
            &self.request_id,
            &self.actor,
            company,
            &self.action,
            &self.target,
            self.outcome.as_str(),
            &self.detail,
            &self.prev_hash,
        ];
        let mut buf = Vec::new();
        for f in fields {
            buf.extend_from_slice(&(f.len() as u64).to_be_bytes());
            buf.extend_from_slice(f.as_bytes());
        }
        hex::encode(sha256(&buf))
    }
}

/// Where a chain first goes wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

/// The outcome of walking a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChainReport {
    pub entries: i64,
    pub ok: bool,
    pub first_broken: Option<BrokenLink>,
}

/// Walks entries in sequence order and checks each link. `head` is the last
/// (seq, hash) the store recorded separately, which catches a cut tail.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    broken: Option<BrokenLink>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS.to_owned(),
            broken: None,
        }
    }
}

impl ChainVerifier {
    /// A walk that starts after entry `seq`, whose hash `hash` was
    /// verified before (a checkpoint, or an entry a walk already checked).
    pub fn after(seq: i64, hash: impl Into<String>) -> Self {
        Self {
            expected_seq: seq + 1,
            prev_hash: hash.into(),
            broken: None,
        }
    }

    /// The walk of a slice that must end at entry `end`, whose hash, when
    /// a walk verified it before, is `hash`: entries missing at its end,
    /// or an end entry that is not the one verified, break it.
    pub fn finish_slice(mut self, end: i64, hash: Option<&str>) -> ChainReport {
        let walked = self.expected_seq - 1;
        if self.broken.is_none() {
            if walked != end {
                self.broken = Some(BrokenLink {
                    seq: walked + 1,
                    reason: format!(
                        "expected entry {} but the log has none up to {end}: entries are missing",
                        walked + 1
                    ),
                });
            } else if hash.is_some_and(|h| h != self.prev_hash) {
                self.broken = Some(BrokenLink {
                    seq: end,
                    reason:
                        "the entry's hash is not the one verified before: the entry was altered"
                            .to_owned(),
                });
            }
        }
        ChainReport {
            entries: walked,
            ok: self.broken.is_none(),
            first_broken: self.broken,
        }
    }

    pub fn push(&mut self, e: &AuditEntry) {
        if self.broken.is_some() {
            return;
        }
        let reason = if e.seq != self.expected_seq {
            Some(format!(
                "expected entry {} but found {}: entries are missing",
                self.expected_seq, e.seq
            ))
        } else if e.prev_hash != self.prev_hash {
            Some("prev_hash does not match the previous entry's hash".to_owned())
        } else if e.computed_hash() != e.hash {
            Some("contents do not match the entry's hash: the entry was altered".to_owned())
        } else {
            None
        };
        match reason {
            Some(reason) => {
                self.broken = Some(BrokenLink {
                    seq: self.expected_seq,
                    reason,
                })
            }
            None => {
                self.expected_seq += 1;
                self.prev_hash = e.hash.clone();
            }
        }
    }

    /// An entry the store could not even read back: broken at that entry.
    pub fn malformed(&mut self, seq: i64, reason: &str) {
        if self.broken.is_none() {
            self.broken = Some(BrokenLink {
                seq,
                reason: format!("the entry is malformed: {reason}"),
            });
        }
    }

    pub fn finish(mut self, head: Option<(i64, String)>) -> ChainReport {
        let walked = self.expected_seq - 1;
        if let (None, Some((head_seq, head_hash))) = (&self.broken, head)
            && (head_seq != walked || head_hash != self.prev_hash)
        {
            self.broken = Some(BrokenLink {
                seq: walked + 1,
                reason: format!(
                    "the chain head records entry {head_seq} but the log ends at {walked}: entries were removed"
                ),
            });
        }
        ChainReport {
            entries: walked,
            ok: self.broken.is_none(),
            first_broken: self.broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            at: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("valid")
                + chrono::TimeDelta::nanoseconds(1_234_567_891 * i as i64),
            request_id: format!("r{i}"),
            actor: "key:abc".into(),
            company_id: CompanyId::parse("acme").ok(),
            action: "company.update".into(),
            target: "company:acme".into(),
            outcome: Outcome::Ok,
            detail: String::new(),
        }
    }

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let (s, h) = out
                .last()
                .map_or((0, GENESIS.to_owned()), |e| (e.seq, e.hash.clone()));
            out.push(record(i).chain(s, &h));
        }
        out
    }

    fn verify(es: &[AuditEntry], head: Option<(i64, String)>) -> ChainReport {
        let mut v = ChainVerifier::default();
        es.iter().for_each(|e| v.push(e));
        v.finish(head)
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let head = c.last().map(|e| (e.seq, e.hash.clone()));
        let r = verify(&c, head);
        assert!(r.ok);
        assert_eq!(r.entries, 5);
    }

    #[test]
    fn a_walk_from_a_checkpoint_checks_only_what_follows_it() {
        let c = chain(6);
        let walk = |es: &[AuditEntry], from: usize| {
            let mut v = ChainVerifier::after(c[from - 1].seq, c[from - 1].hash.clone());
            es.iter().for_each(|e| v.push(e));
            v
        };
        // Entries 4 to 6 after entry 3's (seq, hash): whole, they verify up
        // to the head.
        let head = c.last().map(|e| (e.seq, e.hash.clone()));
        let r = walk(&c[3..], 3).finish(head.clone());
        assert!(r.ok, "{r:?}");
        assert_eq!(r.entries, 6);
        let mut altered = c.clone();
        altered[4].detail = "forged".into();
        let r = walk(&altered[3..], 3).finish(head);
        assert_eq!(r.first_broken.map(|b| b.seq), Some(5));
        // A slice 2..=4 ends where it must, with the hash verified before.
        let r = walk(&c[1..4], 1).finish_slice(4, Some(&c[3].hash));
        assert!(r.ok, "{r:?}");
        // Its last entry gone: missing at 4.
        let r = walk(&c[1..3], 1).finish_slice(4, None);
        assert_eq!(r.first_broken.map(|b| b.seq), Some(4));
        // Its end not the entry verified before (the tail rewritten and
        // rehashed from there on): altered at the end.
        let r = walk(&c[1..4], 1).finish_slice(4, Some(&c[4].hash));
        assert_eq!(r.first_broken.map(|b| b.seq), Some(4));
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_its_entry() {
        let c = chain(5);
        let head = c.last().map(|e| (e.seq, e.hash.clone()));

        let mut altered = c.clone();
        altered[2].target = "company:evil".into();
        assert_eq!(
            verify(&altered, head.clone()).first_broken.map(|b| b.seq),
            Some(3)
        );

        let mut rehashed = c.clone();
        rehashed[2].outcome = Outcome::Denied;
        rehashed[2].hash = rehashed[2].computed_hash();
        assert_eq!(
            verify(&rehashed, head.clone()).first_broken.map(|b| b.seq),
            Some(4)
        );

        let mut gap = c.clone();
        gap.remove(1);
        assert_eq!(
            verify(&gap, head.clone()).first_broken.map(|b| b.seq),
            Some(2)
        );

        let cut = &c[..4];
        let r = verify(cut, head);
        assert!(!r.ok);
        assert_eq!(r.first_broken.map(|b| b.seq), Some(5));
    }

    #[test]
    fn time_is_kept_to_microseconds() {
        let e = record(3).chain(0, GENESIS);
        assert_eq!(e.at.timestamp_subsec_nanos() % 1000, 0);
    }

    #[test]
    fn odd_bytes_are_recorded_printable() {
        let r = AuditRecord {
            target: "GET /v1/companies/\0x/tasks".into(),
            detail: "a\u{1b}[31mred\r\n".into(),
            ..record(1)
        };
        let e = r.chain(0, GENESIS);
        assert_eq!(e.target, "GET /v1/companies/\u{fffd}x/tasks");
        assert_eq!(e.detail, "a\u{fffd}[31mred\u{fffd}\u{fffd}");
        assert!(verify(std::slice::from_ref(&e), Some((1, e.hash.clone()))).ok);
    }

    #[test]
    fn long_text_is_cut_at_a_character_and_marked() {
        assert_eq!(truncated("short", 10), "short");
        let long = "é".repeat(200);
        let cut = truncated(&long, 255);
        assert!(cut.starts_with(&"é".repeat(127)));
        assert!(cut.ends_with("…[400 bytes]"), "{cut}");
        assert!(cut.len() <= 255 + "…[400 bytes]".len());
    }
}
