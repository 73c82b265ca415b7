//! The byte format the fuzz targets in `fuzz/` build broker records from (not a public API).
//!
//! libFuzzer hands a target a flat byte string; a Kafka record or an SQS message is a structure
//! (a key, a list of headers, ...). [`FuzzInput`] reads such a structure out of any bytes, never
//! failing (missing bytes read as zeros and empty strings), and [`FuzzOutput`] writes one, so the
//! seed corpora can be real records made by mailroom's own encoders. The same functions read the
//! committed crash inputs in the regression tests, so a test replays exactly what the fuzzer ran.
//! Compiled only with the `fuzzing` cargo feature.

/// Reads fields out of fuzz bytes; every read succeeds.
#[derive(Debug, Clone)]
pub struct FuzzInput<'a> {
    rest: &'a [u8],
}

impl<'a> FuzzInput<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        FuzzInput { rest: data }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = tail;
        head
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    /// One byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }

    /// Bytes with a u16 length prefix (cut short at the end of the input).
    pub fn bytes(&mut self) -> &'a [u8] {
        let len = u16::from_le_bytes(self.fixed());
        self.take(usize::from(len))
    }

    /// [`FuzzInput::bytes`] as text, invalid UTF-8 replaced (for APIs that only take `&str`).
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.rest.len())
    }
}

/// Writes fields in the format [`FuzzInput`] reads.
#[derive(Debug, Default, Clone)]
pub struct FuzzOutput {
    buf: Vec<u8>,
}

impl FuzzOutput {
    /// An empty output.
    pub fn new() -> Self {
        FuzzOutput::default()
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Bytes with a u16 length prefix; longer ones are cut at `u16::MAX` (seeds are small).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let v = &v[..v.len().min(usize::from(u16::MAX))];
        self.buf.extend_from_slice(&(v.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(v);
        self
    }

    /// Everything left, unprefixed (read back with [`FuzzInput::rest`]).
    pub fn rest(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// The bytes written.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_short_input_reads_as_zeros() {
        let bytes = FuzzOutput::new()
            .u8(7)
            .u32(70_000)
            .u64(u64::MAX)
            .bytes(b"key")
            .rest(b"tail")
            .finish();
        let mut input = FuzzInput::new(&bytes);
        assert_eq!(input.u8(), 7);
        assert_eq!(input.u32(), 70_000);
        assert_eq!(input.u64(), u64::MAX);
        assert_eq!(input.bytes(), b"key");
        assert_eq!(input.rest(), b"tail");
        assert_eq!((input.u8(), input.u64(), input.bytes()), (0, 0, &b""[..]));

        // A length prefix longer than what is left takes what is left.
        let mut input = FuzzInput::new(&[5, 0, b'a', b'b']);
        assert_eq!(input.text(), "ab");
    }
}
