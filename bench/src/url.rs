//! The base URL of the server under test: `http://host[:port][/]`, nothing more. Requests are
//! sent in origin form (`/v1/recommend?..`) with a `Host` header made from the authority.

use crate::error::BenchError;
use std::net::Ipv6Addr;

/// The port used when the base URL names none, as for any `http://` URL.
pub const HTTP_PORT_DEFAULT: u16 = 80;

/// A parsed `http://host[:port][/]` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// The host to resolve and connect to: a name, an IPv4 address, or an IPv6 address without
    /// its brackets.
    pub host: String,
    /// The TCP port; [`HTTP_PORT_DEFAULT`] when the URL names none.
    pub port: u16,
    /// The authority as it goes into the `Host` header (`host:port`, IPv6 in brackets).
    pub authority: String,
}

impl BaseUrl {
    /// Parses a base URL such as `http://127.0.0.1:8080` or `http://localhost:8080/`.
    ///
    /// The scheme is matched without regard to case. Paths other than a single trailing `/`,
    /// queries, fragments and user info are refused, so that a typo is not silently ignored.
    ///
    /// # Errors
    ///
    /// [`BenchError::InvalidUrl`] naming the URL and what is wrong with it: a missing or
    /// non-`http` scheme (`https` is refused: this generator speaks plain HTTP/1.1), an empty or
    /// malformed host, a port that is not a number in 1..=65535, or trailing parts.
    pub fn parse(url: &str) -> Result<BaseUrl, BenchError> {
        let invalid = |reason: &'static str| BenchError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid("expected http://host:port"));
        };
        if scheme.eq_ignore_ascii_case("https") {
            return Err(invalid(
                "https is not supported: the generator speaks plain http/1.1; use http://",
            ));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(invalid("unsupported scheme: expected http://host:port"));
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(invalid(
                "a path, query or fragment is not supported: give only http://host:port",
            ));
        }
        if authority.contains('@') {
            return Err(invalid("user info is not supported"));
        }
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }

        let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((inside, after)) = bracketed.split_once(']') else {
                return Err(invalid("unclosed '[' in an IPv6 host"));
            };
            if inside.parse::<Ipv6Addr>().is_err() {
                return Err(invalid("the bracketed host is not an IPv6 address"));
            }
            let port_text = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port_text) => Some(port_text),
                    None => return Err(invalid("unexpected text after the IPv6 host")),
                },
            };
            (inside, port_text)
        } else {
            match authority.split_once(':') {
                Some((host, port_text)) => (host, Some(port_text)),
                None => (authority, None),
            }
        };

        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        let bracketed = authority.starts_with('[');
        if !bracketed && !host.bytes().all(is_host_byte) {
            return Err(invalid(
                "the host may only hold letters, digits, '.', '-' and '_' (IPv6 goes in brackets)",
            ));
        }
        let port = match port_text {
            None => HTTP_PORT_DEFAULT,
            Some(port_text) => parse_port(port_text)
                .ok_or_else(|| invalid("the port must be a number in 1..=65535"))?,
        };
        let authority = if bracketed {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(BaseUrl {
            host: host.to_owned(),
            port,
            authority,
        })
    }
}

fn is_host_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_')
}

fn parse_port(text: &str) -> Option<u16> {
    // `u16::from_str` accepts a leading '+'; a URL port is digits only.
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|port| *port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> (String, u16, String) {
        match BaseUrl::parse(url) {
            Ok(base) => (base.host, base.port, base.authority),
            Err(error) => panic!("{url:?} should parse, got {error}"),
        }
    }

    fn refusal(url: &str) -> &'static str {
        match BaseUrl::parse(url) {
            Ok(base) => panic!("{url:?} should be refused, parsed as {base:?}"),
            Err(BenchError::InvalidUrl { url: named, reason }) => {
                assert_eq!(named, url, "the error names the url it refuses");
                reason
            }
            Err(other) => panic!("{url:?}: wrong error kind {other}"),
        }
    }

    /// Accepted forms: host and port, an optional trailing slash, any case of the scheme, a
    /// name, IPv4 and bracketed IPv6, and the default port 80 when none is given.
    #[test]
    fn accepts_http_host_port() {
        let expected = ("127.0.0.1".to_owned(), 8080, "127.0.0.1:8080".to_owned());
        assert_eq!(parsed("http://127.0.0.1:8080"), expected);
        assert_eq!(parsed("http://127.0.0.1:8080/"), expected);
        assert_eq!(parsed("HTTP://127.0.0.1:8080"), expected);
        assert_eq!(
            parsed("http://localhost:1"),
            ("localhost".to_owned(), 1, "localhost:1".to_owned())
        );
        assert_eq!(
            parsed("http://grid-router.internal_1.example:65535/"),
            (
                "grid-router.internal_1.example".to_owned(),
                65535,
                "grid-router.internal_1.example:65535".to_owned()
            )
        );
        assert_eq!(
            parsed("http://[::1]:8080/"),
            ("::1".to_owned(), 8080, "[::1]:8080".to_owned())
        );
        assert_eq!(
            parsed("http://example.com"),
            ("example.com".to_owned(), 80, "example.com:80".to_owned())
        );
        assert_eq!(
            parsed("http://[::1]"),
            ("::1".to_owned(), 80, "[::1]:80".to_owned())
        );
    }

    /// https is refused with a message that says so, not as generic garbage.
    #[test]
    fn refuses_https() {
        assert!(refusal("https://127.0.0.1:8443").contains("https is not supported"));
        assert!(refusal("HTTPS://example.com/").contains("https is not supported"));
    }

    /// Garbage of every shape is refused with an error, never a panic.
    #[test]
    fn refuses_garbage() {
        for url in [
            "",
            "garbage",
            "127.0.0.1:8080",
            "://127.0.0.1:8080",
            "ftp://127.0.0.1:21",
            "http://",
            "http:///",
            "http://:8080",
            "http://host:",
            "http://host:0",
            "http://host:65536",
            "http://host:99999999999999999999",
            "http://host:+80",
            "http://host:80x",
            "http://host:80:90",
            "http://::1:8080",
            "http://[::1",
            "http://[not-v6]:80",
            "http://[::1]x:80",
            "http://host:8080/v1/recommend",
            "http://host:8080//",
            "http://host:8080?customer=1",
            "http://host:8080#top",
            "http://user@host:8080",
            "http://ho st:8080",
            "http://hôst:8080",
            " http://host:8080",
        ] {
            refusal(url);
        }
    }
}
