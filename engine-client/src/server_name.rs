//! [`ServerName`]: who a connection is for (as rustls-pki-types' `ServerName`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The server a connection is made for: a DNS name, sent as SNI and matched against the
/// certificate's DNS names, or an IP address, sent without SNI (RFC 6066 §3) and matched
/// against the certificate's IP addresses. DNS names are kept in lower case.
///
/// ```
/// use lurk_engine::ServerName;
///
/// let name = ServerName::try_from("Example.COM")?;
/// assert_eq!(name.as_str(), "example.com");
/// assert!(name.ip_address().is_none());
/// let ip: ServerName = "::1".parse()?;
/// assert_eq!(ip.ip_address(), Some("::1".parse()?));
/// assert!(ServerName::try_from("bad name").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerName {
    /// The DNS name (lower case) or the address's text.
    name: String,
    ip: Option<IpAddr>,
}

/// A string that is neither a DNS name nor an IP address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid server name {0:?}: not a DNS name or an IP address")]
pub struct InvalidServerName(pub String);

impl ServerName {
    /// The name as given to the connection (DNS name or address text).
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The IP address, when the name is one.
    pub fn ip_address(&self) -> Option<IpAddr> {
        self.ip
    }
}

/// DNS name syntax (RFC 1035 §2.3.4 lengths, RFC 1123 §2.1 labels; `_` allowed as in
/// service names): 1 to 253 characters without a trailing dot, labels of 1 to 63 letters,
/// digits, `-` or `_`, not starting or ending with `-`, and a last label that is not all
/// digits (it would read as an address).
fn is_dns_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    labels.iter().all(label_ok)
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl TryFrom<&str> for ServerName {
    type Error = InvalidServerName;

    fn try_from(s: &str) -> Result<Self, InvalidServerName> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::from(ip));
        }
        if is_dns_name(s) {
            return Ok(Self {
                name: s.to_ascii_lowercase(),
                ip: None,
            });
        }
        Err(InvalidServerName(s.to_owned()))
    }
}

impl TryFrom<String> for ServerName {
    type Error = InvalidServerName;

    fn try_from(s: String) -> Result<Self, InvalidServerName> {
        Self::try_from(s.as_str())
    }
}

impl FromStr for ServerName {
    type Err = InvalidServerName;

    fn from_str(s: &str) -> Result<Self, InvalidServerName> {
        Self::try_from(s)
    }
}

impl From<IpAddr> for ServerName {
    fn from(ip: IpAddr) -> Self {
        Self {
            name: ip.to_string(),
            ip: Some(ip),
        }
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        for ok in [
            "localhost",
            "a.b-c.example",
            "_srv.example.com",
            "x1.example",
        ] {
            assert!(ServerName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a.example",
            "a-.example",
            "a b",
            "example.com.",
            "1.2.3",
            "[::1]",
            &"a".repeat(64),
            &format!("{}.com", ["a"; 127].join(".")),
        ] {
            assert!(ServerName::try_from(bad).is_err(), "{bad:?}");
        }
        let v4 = ServerName::try_from("127.0.0.1").unwrap();
        assert_eq!(v4.ip_address(), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(v4.as_str(), "127.0.0.1");
    }
}
