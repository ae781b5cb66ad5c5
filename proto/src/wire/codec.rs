//! Reading and writing the TLS presentation language (RFC 8446 §3): big-endian integers and
//! length-prefixed vectors.
//!
//! [`Reader`] is a slice plus a cursor (as in rustls). It also knows where its slice starts
//! inside the original input, so that views built with it can report absolute byte offsets,
//! which the Crypto Service needs to splice values into received bytes (docs/design.md §4.2).

use super::WireError;

/// A cursor over a borrowed slice. Every read is bounds-checked and returns
/// [`WireError::Truncated`] naming the structure being read.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    cursor: usize,
    /// Absolute position of `buf[0]` inside the original input.
    base: usize,
    /// The structure this reader reads, for error messages.
    name: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over the whole of `input`; offsets are relative to `input[0]`.
    pub fn new(input: &'a [u8], name: &'static str) -> Self {
        Self {
            buf: input,
            cursor: 0,
            base: 0,
            name,
        }
    }

    /// A reader over `buf`, which starts at absolute position `base` of the original input.
    pub fn with_base(buf: &'a [u8], base: usize, name: &'static str) -> Self {
        Self {
            buf,
            cursor: 0,
            base,
            name,
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated(self.name));
        }
        let out = &self.buf[self.cursor..self.cursor + n];
        self.cursor += n;
        Ok(out)
    }

    /// The next `N` bytes as an array reference.
    pub fn array<const N: usize>(&mut self) -> Result<&'a [u8; N], WireError> {
        let bytes = self.take(N)?;
        <&[u8; N]>::try_from(bytes).map_err(|_| WireError::Truncated(self.name))
    }

    /// A `uint8` (RFC 8446 §3.3).
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian `uint16` (RFC 8446 §3.3).
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian `uint24` (RFC 8446 §3.3), as in handshake and certificate lengths.
    pub fn u24(&mut self) -> Result<u32, WireError> {
        let b = self.take(3)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// A big-endian `uint32` (RFC 8446 §3.3).
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A child reader over the next `len` bytes, named `name`.
    pub fn sub(&mut self, len: usize, name: &'static str) -> Result<Reader<'a>, WireError> {
        if self.remaining() < len {
            return Err(WireError::Truncated(name));
        }
        let base = self.offset();
        let body = self.take(len)?;
        Ok(Reader {
            buf: body,
            cursor: 0,
            base,
            name,
        })
    }

    /// A child reader over a body with a one-byte length prefix (`opaque x<0..2^8-1>`).
    pub fn sub_u8(&mut self, name: &'static str) -> Result<Reader<'a>, WireError> {
        let len = self.u8().map_err(|_| WireError::Truncated(name))?;
        self.sub(usize::from(len), name)
    }

    /// A child reader over a body with a two-byte length prefix.
    pub fn sub_u16(&mut self, name: &'static str) -> Result<Reader<'a>, WireError> {
        let len = self.u16().map_err(|_| WireError::Truncated(name))?;
        self.sub(usize::from(len), name)
    }

    /// A child reader over a body with a three-byte length prefix.
    pub fn sub_u24(&mut self, name: &'static str) -> Result<Reader<'a>, WireError> {
        let len = self.u24().map_err(|_| WireError::Truncated(name))?;
        // u24 always fits in usize on the 32/64-bit targets Rust's std supports.
        self.sub(len as usize, name)
    }

    /// Everything not read yet; the reader is then empty.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.cursor..];
        self.cursor = self.buf.len();
        out
    }

    /// Number of bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.cursor
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Absolute position of the next byte inside the original input.
    pub fn offset(&self) -> usize {
        self.base + self.cursor
    }

    /// Fails with [`WireError::TrailingBytes`] unless everything was read.
    pub fn expect_empty(&self, name: &'static str) -> Result<(), WireError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes(name))
        }
    }
}

/// Appends a `uint8`.
pub fn put_u8(buf: &mut Vec<u8>, v: u8) {
    buf.push(v);
}

/// Appends a big-endian `uint16` (RFC 8446 §3.3).
pub fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// Writes the low 24 bits of `v`; the caller keeps `v` below 2^24.
pub fn put_u24(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes()[1..]);
}

/// Appends a big-endian `uint32` (RFC 8446 §3.3).
pub fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// Writes a length prefix of `prefix_len` bytes, runs `body`, then back-patches the length.
/// Fails with [`WireError::TooLong`] if the body does not fit the prefix.
fn put_prefixed<F>(
    buf: &mut Vec<u8>,
    prefix_len: usize,
    name: &'static str,
    body: F,
) -> Result<(), WireError>
where
    F: FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
{
    let at = buf.len();
    buf.resize(at + prefix_len, 0);
    body(buf)?;
    let len = buf.len() - at - prefix_len;
    if prefix_len < 8 && len >= 1usize << (8 * prefix_len) {
        buf.truncate(at);
        return Err(WireError::TooLong(name));
    }
    let be = (len as u64).to_be_bytes();
    buf[at..at + prefix_len].copy_from_slice(&be[8 - prefix_len..]);
    Ok(())
}

/// `opaque x<0..2^8-1>` written by `body`.
pub fn put_u8_prefixed<F>(buf: &mut Vec<u8>, name: &'static str, body: F) -> Result<(), WireError>
where
    F: FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
{
    put_prefixed(buf, 1, name, body)
}

/// `opaque x<0..2^16-1>` written by `body`.
pub fn put_u16_prefixed<F>(buf: &mut Vec<u8>, name: &'static str, body: F) -> Result<(), WireError>
where
    F: FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
{
    put_prefixed(buf, 2, name, body)
}

/// `opaque x<0..2^24-1>` written by `body`.
pub fn put_u24_prefixed<F>(buf: &mut Vec<u8>, name: &'static str, body: F) -> Result<(), WireError>
where
    F: FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
{
    put_prefixed(buf, 3, name, body)
}

/// Writes `bytes` with a one-byte length prefix.
pub fn put_bytes_u8(buf: &mut Vec<u8>, name: &'static str, bytes: &[u8]) -> Result<(), WireError> {
    put_u8_prefixed(buf, name, |b| {
        b.extend_from_slice(bytes);
        Ok(())
    })
}

/// Writes `bytes` with a two-byte length prefix.
pub fn put_bytes_u16(buf: &mut Vec<u8>, name: &'static str, bytes: &[u8]) -> Result<(), WireError> {
    put_u16_prefixed(buf, name, |b| {
        b.extend_from_slice(bytes);
        Ok(())
    })
}

/// Writes `bytes` with a three-byte length prefix.
pub fn put_bytes_u24(buf: &mut Vec<u8>, name: &'static str, bytes: &[u8]) -> Result<(), WireError> {
    put_u24_prefixed(buf, name, |b| {
        b.extend_from_slice(bytes);
        Ok(())
    })
}

/// Overwrites a big-endian length field of `width` bytes at `at` (used when splicing).
pub(crate) fn patch_len(
    buf: &mut [u8],
    at: usize,
    width: usize,
    len: usize,
    name: &'static str,
) -> Result<(), WireError> {
    if len >= 1usize << (8 * width) {
        return Err(WireError::TooLong(name));
    }
    let be = (len as u64).to_be_bytes();
    buf[at..at + width].copy_from_slice(&be[8 - width..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reads_big_endian_integers_and_tracks_offset() {
        let data = [1, 0, 2, 0, 0, 3, 0, 0, 0, 4];
        let mut r = Reader::new(&data, "ints");
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 2);
        assert_eq!(r.offset(), 3);
        assert_eq!(r.u24().unwrap(), 3);
        assert_eq!(r.u32().unwrap(), 4);
        r.expect_empty("ints").unwrap();
    }

    #[test]
    fn sub_reader_reports_absolute_offsets() {
        let data = [9, 9, 0, 3, 7, 8, 9, 5];
        let mut r = Reader::new(&data, "outer");
        r.take(2).unwrap();
        let mut inner = r.sub_u16("inner").unwrap();
        assert_eq!(inner.offset(), 4);
        assert_eq!(inner.u8().unwrap(), 7);
        assert_eq!(inner.offset(), 5);
        assert_eq!(inner.rest(), &[8, 9]);
        assert_eq!(r.u8().unwrap(), 5);
        assert!(r.is_empty());
    }

    #[test]
    fn reading_past_the_end_is_truncated_naming_the_structure() {
        let data = [0, 5, 1, 2];
        let mut r = Reader::new(&data, "outer");
        assert_eq!(r.sub_u16("body").unwrap_err(), WireError::Truncated("body"));
        let mut r = Reader::new(&data[..1], "outer");
        assert_eq!(r.u16().unwrap_err(), WireError::Truncated("outer"));
    }

    #[test]
    fn expect_empty_refuses_leftover_bytes() {
        let data = [1, 2];
        let mut r = Reader::new(&data, "x");
        r.u8().unwrap();
        assert_eq!(
            r.expect_empty("x").unwrap_err(),
            WireError::TrailingBytes("x")
        );
    }

    #[test]
    fn prefixed_writers_back_patch_the_length() {
        let mut buf = vec![0xaa];
        put_u16_prefixed(&mut buf, "outer", |b| {
            put_bytes_u8(b, "inner", &[1, 2, 3])?;
            put_u24(b, 0x010203);
            Ok(())
        })
        .unwrap();
        assert_eq!(buf, [0xaa, 0, 7, 3, 1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn prefixed_writer_refuses_a_body_longer_than_its_prefix_allows() {
        let mut buf = vec![0xaa];
        let err = put_bytes_u8(&mut buf, "small", &[0; 256]).unwrap_err();
        assert_eq!(err, WireError::TooLong("small"));
        assert_eq!(buf, [0xaa]);
    }
}
