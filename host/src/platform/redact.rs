//! Keeping secrets out of logs, errors and API output: the password of a
//! URL (`smtp://user:pass@host`, `mongodb://user:pass@host`) and the values
//! of secret Kafka properties are shown as `***`.

/// What a hidden secret is shown as.
pub const HIDDEN: &str = "***";

/// `url` with the password of its user info (`scheme://user:password@…`)
/// hidden, and the values of query parameters that name a secret
/// (`password`, `secret`, `token`, `key`…).
pub fn url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // The authority ends at the first '/', '?' or '#'; its user info at its last '@'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:{HIDDEN}@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if is_secret(name) => format!("{name}={HIDDEN}"),
                    _ => param.to_string(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", params.join("&"))
        }
        None => tail.to_string(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

/// Whether a setting called `name` holds a secret: a password, a secret, a
/// token, a private key or credentials (`sasl.password`, `ssl.key.pem`,
/// `sasl.oauthbearer.client.secret`, `authSource` is not one).
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "credential", "key.pem", "ssl.key", "keystore", "private"]
        .iter()
        .any(|word| name.contains(word))
        || name.split(['.', '_', '-']).any(|part| part == "key" || part == "pass")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(url("smtp://mailer:s3cret@mail.example.com:587"), "smtp://mailer:***@mail.example.com:587");
        assert_eq!(
            url("mongodb://app:p%40ss@db1:27017,db2:27017/runnel?authSource=admin&password=x"),
            "mongodb://app:***@db1:27017,db2:27017/runnel?authSource=admin&password=***"
        );
        // A password holding '@' and ':' is hidden whole.
        assert_eq!(url("smtps://u:a:b@c@host"), "smtps://u:***@host");
        assert_eq!(url("smtp://127.0.0.1:25"), "smtp://127.0.0.1:25");
        assert_eq!(url("smtp://user@host"), "smtp://user@host");
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn secret_names() {
        for name in ["sasl.password", "ssl.key.password", "ssl.key.pem", "sasl.oauthbearer.client.secret", "ssl.keystore.location", "token"] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["security.protocol", "sasl.mechanism", "sasl.username", "ssl.ca.location", "authSource", "keepalive"] {
            assert!(!is_secret(name), "{name}");
        }
    }
}
