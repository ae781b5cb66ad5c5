//! Alerts (RFC 8446 §6).
//!
//! Semantics for the stream layer (what [`AlertReceiver::receive`] returns):
//!
//! - `close_notify` → [`AlertOutcome::CloseNotify`]: the peer will send no more; the read side
//!   reports EOF (`Ok(0)`), and we answer with our own close_notify before closing the write
//!   side (§6.1). Data after it is ignored.
//! - `user_canceled` → [`AlertOutcome::Ignore`]: §6.1 says it "should be followed by a
//!   close_notify"; we wait for that, up to [`MAX_WARNING_ALERTS`] of them.
//! - any other alert, whatever its level (§6: in TLS 1.3 the level is implicit; unknown alerts
//!   are errors) → `Err(Error::AlertReceived(desc))`, naming the alert, and we send none back.
//!   (The reference engine crashed on any server alert.)
//!
//! A payload that is not exactly 2 bytes is `decode_error`.

use lurk_proto::wire::enums::AlertDescription;

use crate::error::{Error, InvalidMessage, PeerMisbehaved};

/// `user_canceled` (warning) alerts tolerated per connection, as rustls' temper counter.
pub const MAX_WARNING_ALERTS: u8 = 4;

/// RFC 8446 §6 AlertLevel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertLevel {
    /// 1.
    Warning,
    /// 2.
    Fatal,
    /// Anything else; TLS 1.3 ignores the level, so this is not an error.
    Unknown(u8),
}

impl AlertLevel {
    /// The code point on the wire.
    pub fn get(self) -> u8 {
        match self {
            Self::Warning => 1,
            Self::Fatal => 2,
            Self::Unknown(v) => v,
        }
    }
}

impl From<u8> for AlertLevel {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Warning,
            2 => Self::Fatal,
            v => Self::Unknown(v),
        }
    }
}

/// An alert message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alert {
    /// The level as sent (informational only in TLS 1.3).
    pub level: AlertLevel,
    /// What the alert says.
    pub description: AlertDescription,
}

/// Parses the content of an alert record: exactly `level ‖ description` (§6; alerts are never
/// fragmented nor coalesced, §5.1).
pub fn parse_alert(payload: &[u8]) -> Result<Alert, Error> {
    match payload {
        [level, desc] => Ok(Alert {
            level: AlertLevel::from(*level),
            description: AlertDescription::from(*desc),
        }),
        _ => Err(InvalidMessage::InvalidAlert.into()),
    }
}

/// The level we send for `desc`: warning for close_notify and user_canceled (the closure
/// alerts, §6.1), fatal for every error alert (§6.2: "MUST be sent with AlertLevel=fatal").
pub fn alert_level(desc: AlertDescription) -> AlertLevel {
    match desc {
        AlertDescription::CloseNotify | AlertDescription::UserCanceled => AlertLevel::Warning,
        _ => AlertLevel::Fatal,
    }
}

/// The 2-byte content of an alert record for `desc`; protect it with
/// `RecordEncrypter::encrypt(ContentType::Alert, ..)` once keys are in place.
pub fn encode_alert(desc: AlertDescription) -> [u8; 2] {
    [alert_level(desc).get(), desc.get()]
}

/// What the stream layer does after a received alert that is not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertOutcome {
    /// close_notify: report EOF on read.
    CloseNotify,
    /// user_canceled: keep reading (a close_notify should follow).
    Ignore,
}

/// Applies the rules of the module documentation to received alerts; holds the warning count.
#[derive(Debug, Default)]
pub struct AlertReceiver {
    warnings: u8,
}

impl AlertReceiver {
    /// A receiver that has seen no alert.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles the content of one alert record.
    pub fn receive(&mut self, payload: &[u8]) -> Result<AlertOutcome, Error> {
        let alert = parse_alert(payload)?;
        match alert.description {
            AlertDescription::CloseNotify => Ok(AlertOutcome::CloseNotify),
            AlertDescription::UserCanceled => {
                self.warnings += 1;
                if self.warnings > MAX_WARNING_ALERTS {
                    return Err(PeerMisbehaved::TooManyWarningAlerts.into());
                }
                Ok(AlertOutcome::Ignore)
            }
            other => Err(Error::AlertReceived(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_two_bytes_only() {
        assert_eq!(
            parse_alert(&[2, 40]).unwrap(),
            Alert {
                level: AlertLevel::Fatal,
                description: AlertDescription::HandshakeFailure
            }
        );
        assert_eq!(
            parse_alert(&[7, 0xee]).unwrap(),
            Alert {
                level: AlertLevel::Unknown(7),
                description: AlertDescription::Unknown(0xee)
            }
        );
        for bad in [&[][..], &[2], &[2, 40, 2, 40], &[1, 0, 0]] {
            let e = parse_alert(bad).unwrap_err();
            assert_eq!(e, InvalidMessage::InvalidAlert.into());
            assert_eq!(e.alert(), Some(AlertDescription::DecodeError));
        }
    }

    #[test]
    fn encode_levels() {
        assert_eq!(encode_alert(AlertDescription::CloseNotify), [1, 0]);
        assert_eq!(encode_alert(AlertDescription::UserCanceled), [1, 90]);
        assert_eq!(encode_alert(AlertDescription::BadRecordMac), [2, 20]);
        assert_eq!(encode_alert(AlertDescription::DecodeError), [2, 50]);
        // RFC 8448 ends every trace with close_notify "0100".
        assert_eq!(encode_alert(AlertDescription::CloseNotify), [0x01, 0x00]);
    }

    #[test]
    fn close_notify_is_eof_other_alerts_are_errors() {
        let mut r = AlertReceiver::new();
        assert_eq!(r.receive(&[1, 0]).unwrap(), AlertOutcome::CloseNotify);
        // Level does not matter in TLS 1.3.
        assert_eq!(r.receive(&[2, 0]).unwrap(), AlertOutcome::CloseNotify);
        let e = r.receive(&[2, 48]).unwrap_err();
        assert_eq!(e, Error::AlertReceived(AlertDescription::UnknownCa));
        assert_eq!(e.alert(), None, "never answer an alert with an alert");
        // A warning-level error alert is still an error; an unknown one too.
        assert_eq!(
            r.receive(&[1, 42]).unwrap_err(),
            Error::AlertReceived(AlertDescription::BadCertificate)
        );
        assert_eq!(
            r.receive(&[2, 0xfe]).unwrap_err(),
            Error::AlertReceived(AlertDescription::Unknown(0xfe))
        );
        assert!(r.receive(&[1]).is_err());
    }

    #[test]
    fn user_canceled_is_ignored_a_few_times() {
        let mut r = AlertReceiver::new();
        for _ in 0..MAX_WARNING_ALERTS {
            assert_eq!(r.receive(&[1, 90]).unwrap(), AlertOutcome::Ignore);
        }
        assert_eq!(
            r.receive(&[1, 90]).unwrap_err(),
            PeerMisbehaved::TooManyWarningAlerts.into()
        );
    }
}
