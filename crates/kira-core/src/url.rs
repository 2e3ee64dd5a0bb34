//! Database and service URLs as they may be shown: in logs, messages and
//! errors a password never appears.

/// The URL with any password replaced by `***`, for logs and messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgres://kira:s3cret@db:5432/kira?sslmode=disable"),
            "postgres://kira:***@db:5432/kira?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://db/kira?user=k&password=s3cret"),
            "postgres://db/kira?user=k&password=***"
        );
        assert_eq!(
            redact_url("postgres://kira@db/kira"),
            "postgres://kira@db/kira"
        );
        assert_eq!(
            redact_url("sqlite://./kira-data/kira.db"),
            "sqlite://./kira-data/kira.db"
        );
        assert_eq!(redact_url("p://u:a@b@h/x"), "p://u:***@h/x");
    }
}
