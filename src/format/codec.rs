//! Little-endian writer and a bounds-checked reader used by the decoders.

/// Appends little-endian fields to a buffer.
#[derive(Default)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// Append a byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Append a little-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Append a little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Append a little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Append raw bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Append an unsigned LEB128 varint (7 bits a byte, low bits first).
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    /// Append a u32 length then the bytes.
    pub fn blob(&mut self, v: &[u8]) {
        // Callers bound every blob far below 4 GiB.
        self.u32(v.len() as u32);
        self.bytes(v);
    }
}

/// Why a decode failed, and where (offset relative to the decoded buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset of the field that failed.
    pub offset: usize,
    /// What was wrong.
    pub reason: String,
}

/// A cursor over a byte slice; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

#[cold]
#[inline(never)]
fn too_long(at: usize, n: usize, max: usize, what: &str) -> DecodeError {
    DecodeError { offset: at, reason: format!("{what} length {n} exceeds limit {max}") }
}

impl<'a> Reader<'a> {
    /// Start reading `buf` at offset 0.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// An error at the current offset.
    pub fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError { offset: self.pos, reason: reason.into() }
    }
    /// Take `n` bytes. (The reads below are inlined into the decoders, a
    /// call each was a tenth of reading a log; their errors are not.)
    #[inline]
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.truncated(n, what)),
        }
    }
    #[cold]
    #[inline(never)]
    fn truncated(&self, n: usize, what: &str) -> DecodeError {
        self.err(format!("truncated {what}: need {n} bytes, {} left", self.remaining()))
    }
    /// Take a fixed-size array.
    #[inline]
    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    /// Read a byte.
    #[inline]
    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// Read a little-endian u16.
    pub fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// Read a little-endian u32.
    #[inline]
    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// Read a little-endian u64.
    #[inline]
    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// Read an unsigned LEB128 varint written by [`Writer::varint`]: at most
    /// ten bytes, and only the shortest encoding of its value (so that every
    /// value has one encoding and what decodes re-encodes to the same bytes).
    #[inline]
    pub fn varint(&mut self, what: &str) -> Result<u64, DecodeError> {
        let at = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            if i == 9 && b > 1 {
                return Err(DecodeError { offset: at, reason: format!("{what} varint overflows 64 bits") });
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError {
                        offset: at,
                        reason: format!("{what} varint is not in its shortest form"),
                    });
                }
                return Ok(v);
            }
        }
        Err(DecodeError { offset: at, reason: format!("{what} varint longer than ten bytes") })
    }
    /// Read a u32-length-prefixed blob of at most `max` bytes (checked before use).
    #[inline]
    pub fn blob(&mut self, max: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(too_long(at, n, max, what));
        }
        self.take(n, what)
    }
    /// Read a count of at most `max` items, each at least `min_item` bytes, so
    /// a lying count can never make the caller allocate beyond the input.
    pub fn count(&mut self, max: usize, min_item: usize, what: &str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        if n > max || n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(DecodeError { offset: at, reason: format!("{what} count {n} impossible here") });
        }
        Ok(n)
    }
    /// Fail unless the input is fully consumed.
    pub fn finish(&self, what: &str) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} unexpected trailing bytes after {what}", self.remaining())));
        }
        Ok(())
    }
}
