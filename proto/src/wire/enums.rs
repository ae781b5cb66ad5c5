//! TLS code points. Every enum keeps unknown values (`Unknown(n)`) so that a peer's code
//! points we do not know survive parsing (RFC 8448's ClientHellos carry legacy schemes).

macro_rules! enum_builder {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                #[doc = concat!("Code point `", stringify!($value), "`.")]
                $variant,
            )*
            /// A code point this crate has no name for, kept as received so that it survives
            /// parsing (and a peer's unknown values can be echoed or skipped, never misread).
            Unknown($repr),
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                match v {
                    $( $value => Self::$variant, )*
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> $repr {
                match v {
                    $( $name::$variant => $value, )*
                    $name::Unknown(other) => other,
                }
            }
        }

        impl $name {
            /// The code point on the wire.
            pub fn get(self) -> $repr {
                <$repr>::from(self)
            }
        }
    };
}

enum_builder! {
    /// RFC 8446 §5.1 ContentType.
    pub enum ContentType: u8 {
        ChangeCipherSpec = 20,
        Alert = 21,
        Handshake = 22,
        ApplicationData = 23,
    }
}

enum_builder! {
    /// RFC 8446 §4 HandshakeType.
    pub enum HandshakeType: u8 {
        ClientHello = 1,
        ServerHello = 2,
        NewSessionTicket = 4,
        EndOfEarlyData = 5,
        EncryptedExtensions = 8,
        Certificate = 11,
        CertificateRequest = 13,
        CertificateVerify = 15,
        Finished = 20,
        KeyUpdate = 24,
        MessageHash = 254,
    }
}

enum_builder! {
    /// RFC 8446 §4.2 ExtensionType.
    pub enum ExtensionType: u16 {
        ServerName = 0,
        MaxFragmentLength = 1,
        StatusRequest = 5,
        SupportedGroups = 10,
        SignatureAlgorithms = 13,
        UseSrtp = 14,
        Heartbeat = 15,
        ApplicationLayerProtocolNegotiation = 16,
        SignedCertificateTimestamp = 18,
        ClientCertificateType = 19,
        ServerCertificateType = 20,
        Padding = 21,
        EncryptThenMac = 22,
        ExtendedMasterSecret = 23,
        RecordSizeLimit = 28,
        SessionTicket = 35,
        PreSharedKey = 41,
        EarlyData = 42,
        SupportedVersions = 43,
        Cookie = 44,
        PskKeyExchangeModes = 45,
        CertificateAuthorities = 47,
        OidFilters = 48,
        PostHandshakeAuth = 49,
        SignatureAlgorithmsCert = 50,
        KeyShare = 51,
        RenegotiationInfo = 0xff01,
    }
}

enum_builder! {
    /// RFC 8446 §4.2.7 NamedGroup (the ones this project implements, plus unknowns).
    pub enum NamedGroup: u16 {
        Secp256r1 = 0x0017,
        Secp384r1 = 0x0018,
        Secp521r1 = 0x0019,
        X25519 = 0x001d,
        X448 = 0x001e,
    }
}

impl NamedGroup {
    /// Groups this project supports for (EC)DHE.
    pub const SUPPORTED: [NamedGroup; 3] = [Self::X25519, Self::Secp256r1, Self::Secp384r1];

    /// Length of a key_share public value for this group, if known.
    pub fn public_key_len(self) -> Option<usize> {
        match self {
            Self::X25519 => Some(32),
            Self::Secp256r1 => Some(65),
            Self::Secp384r1 => Some(97),
            Self::Secp521r1 => Some(133),
            Self::X448 => Some(56),
            Self::Unknown(_) => None,
        }
    }

    /// The group's name in RFC 8446 §4.2.7 (`"unknown"` for [`NamedGroup::Unknown`]).
    pub fn name(self) -> &'static str {
        match self {
            Self::Secp256r1 => "secp256r1",
            Self::Secp384r1 => "secp384r1",
            Self::Secp521r1 => "secp521r1",
            Self::X25519 => "x25519",
            Self::X448 => "x448",
            Self::Unknown(_) => "unknown",
        }
    }

    /// Parses "x25519", "X25519", "secp256r1", "P-256", "p256", "secp384r1", "P-384".
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "x25519" => Some(Self::X25519),
            "secp256r1" | "p-256" | "p256" | "prime256v1" => Some(Self::Secp256r1),
            "secp384r1" | "p-384" | "p384" => Some(Self::Secp384r1),
            _ => None,
        }
    }
}

enum_builder! {
    /// RFC 8446 §4.2.3 SignatureScheme.
    pub enum SignatureScheme: u16 {
        RsaPkcs1Sha256 = 0x0401,
        RsaPkcs1Sha384 = 0x0501,
        RsaPkcs1Sha512 = 0x0601,
        EcdsaSecp256r1Sha256 = 0x0403,
        EcdsaSecp384r1Sha384 = 0x0503,
        EcdsaSecp521r1Sha512 = 0x0603,
        RsaPssRsaeSha256 = 0x0804,
        RsaPssRsaeSha384 = 0x0805,
        RsaPssRsaeSha512 = 0x0806,
        Ed25519 = 0x0807,
        Ed448 = 0x0808,
        RsaPssPssSha256 = 0x0809,
        RsaPssPssSha384 = 0x080a,
        RsaPssPssSha512 = 0x080b,
        RsaPkcs1Sha1 = 0x0201,
        EcdsaSha1 = 0x0203,
    }
}

impl SignatureScheme {
    /// The scheme's name in RFC 8446 §4.2.3 (`"unknown"` for [`SignatureScheme::Unknown`]).
    pub fn name(self) -> &'static str {
        match self {
            Self::RsaPkcs1Sha256 => "rsa_pkcs1_sha256",
            Self::RsaPkcs1Sha384 => "rsa_pkcs1_sha384",
            Self::RsaPkcs1Sha512 => "rsa_pkcs1_sha512",
            Self::EcdsaSecp256r1Sha256 => "ecdsa_secp256r1_sha256",
            Self::EcdsaSecp384r1Sha384 => "ecdsa_secp384r1_sha384",
            Self::EcdsaSecp521r1Sha512 => "ecdsa_secp521r1_sha512",
            Self::RsaPssRsaeSha256 => "rsa_pss_rsae_sha256",
            Self::RsaPssRsaeSha384 => "rsa_pss_rsae_sha384",
            Self::RsaPssRsaeSha512 => "rsa_pss_rsae_sha512",
            Self::Ed25519 => "ed25519",
            Self::Ed448 => "ed448",
            Self::RsaPssPssSha256 => "rsa_pss_pss_sha256",
            Self::RsaPssPssSha384 => "rsa_pss_pss_sha384",
            Self::RsaPssPssSha512 => "rsa_pss_pss_sha512",
            Self::RsaPkcs1Sha1 => "rsa_pkcs1_sha1",
            Self::EcdsaSha1 => "ecdsa_sha1",
            Self::Unknown(_) => "unknown",
        }
    }
}

enum_builder! {
    /// RFC 8446 §B.4 cipher suites.
    pub enum CipherSuite: u16 {
        TlsAes128GcmSha256 = 0x1301,
        TlsAes256GcmSha384 = 0x1302,
        TlsChacha20Poly1305Sha256 = 0x1303,
        TlsAes128CcmSha256 = 0x1304,
        TlsAes128Ccm8Sha256 = 0x1305,
    }
}

impl CipherSuite {
    /// The suites this project implements, in preference order.
    pub const SUPPORTED: [CipherSuite; 3] = [
        Self::TlsAes128GcmSha256,
        Self::TlsAes256GcmSha384,
        Self::TlsChacha20Poly1305Sha256,
    ];

    /// The suite's hash, or None for a suite this project does not implement.
    pub fn hash(self) -> Option<HashAlg> {
        match self {
            Self::TlsAes128GcmSha256 | Self::TlsChacha20Poly1305Sha256 => Some(HashAlg::Sha256),
            Self::TlsAes256GcmSha384 => Some(HashAlg::Sha384),
            _ => None,
        }
    }

    /// The suite's name in RFC 8446 §B.4 (`"unknown"` for [`CipherSuite::Unknown`]).
    pub fn name(self) -> &'static str {
        match self {
            Self::TlsAes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            Self::TlsAes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
            Self::TlsChacha20Poly1305Sha256 => "TLS_CHACHA20_POLY1305_SHA256",
            Self::TlsAes128CcmSha256 => "TLS_AES_128_CCM_SHA256",
            Self::TlsAes128Ccm8Sha256 => "TLS_AES_128_CCM_8_SHA256",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// The hash of a TLS 1.3 cipher suite (RFC 8446 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-256: TLS_AES_128_GCM_SHA256 and TLS_CHACHA20_POLY1305_SHA256.
    Sha256,
    /// SHA-384: TLS_AES_256_GCM_SHA384.
    Sha384,
}

impl HashAlg {
    /// Hash.length of RFC 8446 §7.1: 32 or 48 bytes, the length of every secret and of
    /// Finished.verify_data.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
        }
    }

    /// The ring digest for Transcript-Hash (RFC 8446 §4.4.1).
    pub(crate) fn digest_algorithm(self) -> &'static ring::digest::Algorithm {
        match self {
            Self::Sha256 => &ring::digest::SHA256,
            Self::Sha384 => &ring::digest::SHA384,
        }
    }

    /// The ring HMAC: HKDF-Extract (RFC 8446 §7.1), Finished and PSK binders (§4.4.4).
    pub(crate) fn hmac_algorithm(self) -> ring::hmac::Algorithm {
        match self {
            Self::Sha256 => ring::hmac::HMAC_SHA256,
            Self::Sha384 => ring::hmac::HMAC_SHA384,
        }
    }

    /// The ring HKDF for HKDF-Extract / HKDF-Expand-Label (RFC 8446 §7.1).
    pub(crate) fn hkdf_algorithm(self) -> ring::hkdf::Algorithm {
        match self {
            Self::Sha256 => ring::hkdf::HKDF_SHA256,
            Self::Sha384 => ring::hkdf::HKDF_SHA384,
        }
    }

    /// Hash of `data` in one go.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        ring::digest::digest(self.digest_algorithm(), data)
            .as_ref()
            .to_vec()
    }
}

enum_builder! {
    /// RFC 8446 §6 AlertDescription.
    pub enum AlertDescription: u8 {
        CloseNotify = 0,
        UnexpectedMessage = 10,
        BadRecordMac = 20,
        RecordOverflow = 22,
        HandshakeFailure = 40,
        BadCertificate = 42,
        UnsupportedCertificate = 43,
        CertificateRevoked = 44,
        CertificateExpired = 45,
        CertificateUnknown = 46,
        IllegalParameter = 47,
        UnknownCa = 48,
        AccessDenied = 49,
        DecodeError = 50,
        DecryptError = 51,
        ProtocolVersion = 70,
        InsufficientSecurity = 71,
        InternalError = 80,
        InappropriateFallback = 86,
        UserCanceled = 90,
        MissingExtension = 109,
        UnsupportedExtension = 110,
        UnrecognizedName = 112,
        BadCertificateStatusResponse = 113,
        UnknownPskIdentity = 115,
        CertificateRequired = 116,
        NoApplicationProtocol = 120,
    }
}

enum_builder! {
    /// RFC 8446 §4.2.9 PskKeyExchangeMode.
    pub enum PskKeyExchangeMode: u8 {
        PskKe = 0,
        PskDheKe = 1,
    }
}

enum_builder! {
    /// RFC 8446 §4.6.3 KeyUpdateRequest.
    pub enum KeyUpdateRequest: u8 {
        UpdateNotRequested = 0,
        UpdateRequested = 1,
    }
}

/// TLS 1.3's version number in supported_versions (RFC 8446 §4.2.1).
pub const TLS13: u16 = 0x0304;
/// legacy_version of ClientHello/ServerHello.
pub const TLS12: u16 = 0x0303;

/// ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3): SHA-256("HelloRetryRequest").
pub const HELLO_RETRY_REQUEST_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_code_points_round_trip() {
        assert_eq!(
            SignatureScheme::from(0x0202),
            SignatureScheme::Unknown(0x0202)
        );
        assert_eq!(SignatureScheme::Unknown(0x0202).get(), 0x0202);
        assert_eq!(NamedGroup::from(0x001d), NamedGroup::X25519);
        assert_eq!(u16::from(CipherSuite::TlsAes256GcmSha384), 0x1302);
    }

    #[test]
    fn hrr_random_is_sha256_of_its_name() {
        assert_eq!(
            HashAlg::Sha256.hash(b"HelloRetryRequest"),
            HELLO_RETRY_REQUEST_RANDOM.to_vec()
        );
    }
}
