//! The TLVs of a v2 header (§2.2): the [`Tlv`] view of one, the [`Tlvs`]
//! iterator over an area the parser validated, and the [`SslTlv`] value.

/// One v2 TLV (type, length, value; §2.2): a type byte and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tlv<'a> {
    kind: u8,
    value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// `PP2_TYPE_ALPN` (§2.2.1).
    pub const ALPN: u8 = 0x01;
    /// `PP2_TYPE_AUTHORITY` (§2.2.2).
    pub const AUTHORITY: u8 = 0x02;
    /// `PP2_TYPE_CRC32C` (§2.2.3); the parser verifies it, in every header
    /// whose TLVs it reads (see [`ProxyHeader::tlvs`]).
    ///
    /// [`ProxyHeader::tlvs`]: super::ProxyHeader::tlvs
    pub const CRC32C: u8 = 0x03;
    /// `PP2_TYPE_NOOP` (§2.2.4): padding, to be ignored.
    pub const NOOP: u8 = 0x04;
    /// `PP2_TYPE_UNIQUE_ID` (§2.2.5).
    pub const UNIQUE_ID: u8 = 0x05;
    /// `PP2_TYPE_SSL` (§2.2.6).
    pub const SSL: u8 = 0x20;
    /// `PP2_SUBTYPE_SSL_VERSION` (§2.2.6), inside an SSL TLV.
    pub const SSL_VERSION: u8 = 0x21;
    /// `PP2_SUBTYPE_SSL_CN` (§2.2.6), inside an SSL TLV.
    pub const SSL_CN: u8 = 0x22;
    /// `PP2_SUBTYPE_SSL_CIPHER` (§2.2.6), inside an SSL TLV.
    pub const SSL_CIPHER: u8 = 0x23;
    /// `PP2_SUBTYPE_SSL_SIG_ALG` (§2.2.6), inside an SSL TLV.
    pub const SSL_SIG_ALG: u8 = 0x24;
    /// `PP2_SUBTYPE_SSL_KEY_ALG` (§2.2.6), inside an SSL TLV.
    pub const SSL_KEY_ALG: u8 = 0x25;
    /// `PP2_TYPE_NETNS` (§2.2.7).
    pub const NETNS: u8 = 0x30;

    /// The type byte.
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// The value bytes.
    pub fn value(&self) -> &'a [u8] {
        self.value
    }
}

/// The TLVs of a header (or of an SSL TLV), in the order received.
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    // Validated by the parser: a whole number of well-formed TLVs.
    pub(super) rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        // The area was validated at parse time, so the checks below only
        // stop the walk; they never skip a malformed TLV silently.
        let (&kind, rest) = self.rest.split_first()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let value = rest.get(..usize::from(u16::from_be_bytes(*len)))?;
        self.rest = &rest[value.len()..];
        Some(Tlv { kind, value })
    }
}

/// The value of a `PP2_TYPE_SSL` TLV (§2.2.6): what the proxy knows of the
/// client's TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslTlv<'a> {
    client: u8,
    verify: u32,
    sub: &'a [u8],
}

impl<'a> SslTlv<'a> {
    /// `PP2_CLIENT_SSL`: the client connected over TLS.
    pub const CLIENT_SSL: u8 = 0x01;
    /// `PP2_CLIENT_CERT_CONN`: the client sent a certificate on this
    /// connection.
    pub const CLIENT_CERT_CONN: u8 = 0x02;
    /// `PP2_CLIENT_CERT_SESS`: the client sent a certificate at least once
    /// in this TLS session.
    pub const CLIENT_CERT_SESS: u8 = 0x04;

    pub(super) fn new(value: &'a [u8]) -> Option<Self> {
        let (&client, rest) = value.split_first()?;
        let (verify, sub) = rest.split_first_chunk::<4>()?;
        Some(SslTlv {
            client,
            verify: u32::from_be_bytes(*verify),
            sub,
        })
    }

    /// The `client` bit field (`CLIENT_*` constants).
    pub fn client(&self) -> u8 {
        self.client
    }

    /// Whether the client connected over TLS (`PP2_CLIENT_SSL`).
    pub fn is_tls(&self) -> bool {
        self.client & Self::CLIENT_SSL != 0
    }

    /// The `verify` field: zero when the client presented a certificate and
    /// it was verified, non-zero otherwise.
    pub fn verify(&self) -> u32 {
        self.verify
    }

    /// The sub-TLVs (`Tlv::SSL_*` types).
    pub fn sub_tlvs(&self) -> Tlvs<'a> {
        Tlvs { rest: self.sub }
    }

    /// The TLS version, such as `"TLSv1.3"` (`PP2_SUBTYPE_SSL_VERSION`).
    pub fn version(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_VERSION)
    }

    /// The common name of the client certificate's subject
    /// (`PP2_SUBTYPE_SSL_CN`).
    pub fn common_name(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_CN)
    }

    /// The cipher, such as `"ECDHE-RSA-AES128-GCM-SHA256"`
    /// (`PP2_SUBTYPE_SSL_CIPHER`).
    pub fn cipher(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_CIPHER)
    }

    /// The algorithm that signed the proxy's certificate
    /// (`PP2_SUBTYPE_SSL_SIG_ALG`).
    pub fn signature_algorithm(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_SIG_ALG)
    }

    /// The algorithm of the proxy certificate's key
    /// (`PP2_SUBTYPE_SSL_KEY_ALG`).
    pub fn key_algorithm(&self) -> Option<&'a str> {
        self.sub_str(Tlv::SSL_KEY_ALG)
    }

    fn sub_str(&self, kind: u8) -> Option<&'a str> {
        let tlv = self.sub_tlvs().find(|tlv| tlv.kind() == kind)?;
        std::str::from_utf8(tlv.value()).ok()
    }
}
