//! Identifiers that are checked once, at the edge, and trusted after.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ValidationError;

/// A company's id: a slug of lowercase letters, digits and `-`, 2 to 50
/// characters, starting with a letter or digit and not ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "acme")]
pub struct CompanyId(String);

impl CompanyId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = |m: &str| Err(ValidationError::new("id", m));
        if s.len() < 2 || s.len() > 50 {
            return err("must be 2 to 50 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return err("may contain only lowercase letters, digits and '-'");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return err("must not start or end with '-'");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CompanyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CompanyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CompanyId::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// The public half of an API key: shown in listings and the audit log, and
/// embedded in the token so a lookup needs no secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "k3v9x2m4q8ab")]
pub struct KeyId(String);

impl KeyId {
    pub const LEN: usize = 12;

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.len() == Self::LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::new(
                "key_id",
                "must be 12 lowercase letters or digits",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn company_slug_rules() {
        for ok in ["ab", "acme", "comp-a", "a1", &"x".repeat(50)] {
            assert!(CompanyId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a",
            "",
            "Acme",
            "ac me",
            "-ab",
            "ab-",
            "a_b",
            "é1",
            &"x".repeat(51),
        ] {
            let e = CompanyId::parse(bad).expect_err(bad);
            assert_eq!(e.field, "id", "{bad}");
        }
    }

    #[test]
    fn key_id_rules() {
        assert!(KeyId::parse("abcdef123456").is_ok());
        assert!(KeyId::parse("ABCDEF123456").is_err());
        assert!(KeyId::parse("abc").is_err());
    }
}
