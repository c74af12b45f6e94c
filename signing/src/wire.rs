//! The SSH wire encoding (RFC 4251 §5) and PEM-like armor shared by keys and signatures.
//! Parsing never panics: every length is checked against what is left.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Width of the base64 lines OpenSSH writes in armored keys and signatures.
const ARMOR_WIDTH: usize = 70;

/// Reads SSH wire types from a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// `n` raw bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err(format!(
                "truncated: need {n} bytes, {} left",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-prefixed string.
    pub(crate) fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| "length overflows".to_string())?;
        self.bytes(len)
    }

    /// A length-prefixed string that must be UTF-8 (names, comments).
    pub(crate) fn utf8(&mut self, what: &str) -> Result<&'a str, String> {
        let b = self.string()?;
        std::str::from_utf8(b).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// What has not been read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Fails unless everything has been read.
    pub(crate) fn finish(&self, what: &str) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes after {what}", self.buf.len()))
        }
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a length-prefixed string. Every string kiln writes is far below 4 GiB.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    put_u32(out, len);
    out.extend_from_slice(s);
}

/// `-----BEGIN <label>-----`, base64 in 70-column lines, `-----END <label>-----`, newline.
pub(crate) fn armor(label: &str, data: &[u8]) -> String {
    let b64 = STANDARD.encode(data);
    let mut out = format!("-----BEGIN {label}-----\n");
    // base64 output is ASCII, so splitting at any byte index is a char boundary.
    for chunk in b64.as_bytes().chunks(ARMOR_WIDTH) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The bytes inside an armor of the given label. Leading and trailing whitespace around the
/// armor and CR line endings are tolerated; anything else around it is not.
pub(crate) fn dearmor(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut lines = text.trim().lines().map(|l| l.trim_end_matches('\r'));
    match lines.next() {
        Some(first) if first == begin => {}
        _ => return Err(format!("does not start with {begin}")),
    }
    let mut b64 = String::new();
    let mut ended = false;
    for line in lines {
        if ended {
            return Err(format!("text after {end}"));
        }
        if line == end {
            ended = true;
        } else if line.starts_with("-----") {
            return Err(format!("unexpected armor line {line:?}"));
        } else {
            b64.push_str(line.trim());
        }
    }
    if !ended {
        return Err(format!("missing {end}"));
    }
    STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("bad base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armor_round_trip_and_line_width() {
        let data: Vec<u8> = (0..=255u8).collect();
        let text = armor("TEST", &data);
        assert!(text
            .lines()
            .all(|l| l.len() <= 70 || l.starts_with("-----")));
        assert_eq!(text.lines().nth(1).map(str::len), Some(70));
        assert_eq!(dearmor(&text, "TEST").as_deref(), Ok(&data[..]));
        assert!(dearmor(&text, "OTHER").is_err());
        assert!(dearmor(&text.replace("-----END TEST-----\n", ""), "TEST").is_err());
        assert!(dearmor(&format!("{text}junk\n"), "TEST").is_err());
    }

    #[test]
    fn reader_refuses_lengths_past_the_end() {
        let mut r = Reader::new(&[0, 0, 0, 9, 1, 2]);
        assert!(r.string().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(r.string().is_err());
        let mut r = Reader::new(&[0, 0]);
        assert!(r.u32().is_err());
    }
}
