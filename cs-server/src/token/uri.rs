//! RFC 7512 `pkcs11:` URIs naming a private key, or a bare label.
//!
//! Supported path attributes: `object` (label), `id` (percent-encoded bytes), `type` (must be
//! `private` when present), and `token`, `manufacturer`, `model`, `serial`, which must match
//! the configured token. `slot-*` and `library-*` attributes are accepted and ignored (the
//! token is chosen by its label in `[token]`). In the query, `pin-value` is refused (the PIN
//! never goes in the configuration); `pin-source`, `module-name` and `module-path` are
//! ignored for the same reason as the slot attributes.

use crate::error::TokenError;

/// What a `[[keys]] object` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyUri {
    /// `object=`: the key's CKA_LABEL (RFC 7512 §2.3).
    pub label: Option<String>,
    /// `id=`: the key's CKA_ID, percent-decoded.
    pub id: Option<Vec<u8>>,
    /// `token=`: the token's label; must be the configured token's.
    pub token: Option<String>,
    /// `manufacturer=`: must match the configured token's manufacturerID.
    pub manufacturer: Option<String>,
    /// `model=`: must match the configured token's model.
    pub model: Option<String>,
    /// `serial=`: must match the configured token's serialNumber.
    pub serial: Option<String>,
}

impl KeyUri {
    /// Parses a `pkcs11:` URI, or takes anything else as a bare label.
    pub fn parse(object: &str) -> Result<Self, TokenError> {
        let Some(rest) = object.strip_prefix("pkcs11:") else {
            if object.is_empty() {
                return Err(bad(object, "empty key label"));
            }
            return Ok(Self {
                label: Some(object.to_owned()),
                ..Self::default()
            });
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Self::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad(object, &format!("attribute {attr:?} has no value")))?;
            let value = percent_decode(value).ok_or_else(|| bad(object, "bad percent-encoding"))?;
            let text = || {
                String::from_utf8(value.clone())
                    .map_err(|_| bad(object, &format!("{name} is not UTF-8")))
            };
            let slot = match name {
                "object" => &mut uri.label,
                "token" => &mut uri.token,
                "manufacturer" => &mut uri.manufacturer,
                "model" => &mut uri.model,
                "serial" => &mut uri.serial,
                "id" => {
                    if uri.id.replace(value).is_some() {
                        return Err(bad(object, "id given twice"));
                    }
                    continue;
                }
                "type" => {
                    if value != b"private" {
                        return Err(bad(
                            object,
                            "type must be \"private\" (the CS signs with a private key)",
                        ));
                    }
                    continue;
                }
                n if n.starts_with("slot-") || n.starts_with("library-") => continue,
                other => return Err(bad(object, &format!("unknown attribute {other:?}"))),
            };
            if slot.replace(text()?).is_some() {
                return Err(bad(object, &format!("{name} given twice")));
            }
        }
        if let Some(q) = query {
            for attr in q.split('&').filter(|a| !a.is_empty()) {
                let name = attr.split_once('=').map_or(attr, |(n, _)| n);
                if name == "pin-value" {
                    return Err(bad(
                        object,
                        "pin-value is refused: the PIN comes from [token] pin_env or pin_file",
                    ));
                }
            }
        }
        if uri.label.is_none() && uri.id.is_none() {
            return Err(bad(object, "name the key with object= or id="));
        }
        Ok(uri)
    }

    /// How the key is named, for messages.
    pub fn describe(&self) -> String {
        match (&self.label, &self.id) {
            (Some(l), Some(id)) => format!("label {l:?} id {}", hex::encode(id)),
            (Some(l), None) => format!("label {l:?}"),
            (None, Some(id)) => format!("id {}", hex::encode(id)),
            (None, None) => "(nothing)".to_owned(),
        }
    }
}

/// The message names the URI without its query, which could hold a PIN.
fn bad(object: &str, why: &str) -> TokenError {
    let shown = object.split('?').next().unwrap_or_default();
    TokenError::KeyNotFound(format!("{shown}: {why}"))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_label() {
        let u = KeyUri::parse("client-ed25519").unwrap();
        assert_eq!(u.label.as_deref(), Some("client-ed25519"));
        assert_eq!(u.id, None);
    }

    #[test]
    fn uri_with_label_id_type_token() {
        let u = KeyUri::parse("pkcs11:token=lurk-dev;object=my%20key;id=%01%02%ff;type=private")
            .unwrap();
        assert_eq!(u.label.as_deref(), Some("my key"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2, 0xff][..]));
        assert_eq!(u.token.as_deref(), Some("lurk-dev"));
    }

    #[test]
    fn refusals() {
        assert!(KeyUri::parse("pkcs11:object=k;type=public").is_err());
        assert!(KeyUri::parse("pkcs11:object=k?pin-value=1234").is_err());
        assert!(KeyUri::parse("pkcs11:type=private").is_err());
        assert!(KeyUri::parse("pkcs11:id=%zz").is_err());
        assert!(KeyUri::parse("pkcs11:object=a;object=b").is_err());
        assert!(KeyUri::parse("pkcs11:color=blue;object=a").is_err());
        assert!(KeyUri::parse("").is_err());
        // The error message does not echo a PIN.
        let e = KeyUri::parse("pkcs11:object=k?pin-value=s3cr3t").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"));
        let e = KeyUri::parse("pkcs11:color=blue?pin-value=s3cr3t").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"));
        assert!(KeyUri::parse("pkcs11:object=k;slot-id=3?module-path=/x.so").is_ok());
    }
}
