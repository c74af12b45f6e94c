//! Small helpers that mirror Go standard-library behaviour Consul relies on:
//! `time.ParseDuration`, `strconv.ParseUint`, `%q` quoting, URL path decoding, and
//! `path.Clean` as `http.ServeMux` applies it.

use std::time::Duration;

/// Go's `time.ParseDuration`, in nanoseconds (may be negative).
///
/// Accepts what Go accepts: an optional sign, then one or more `<number><unit>` parts
/// with units `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`; a bare `0` is allowed.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let orig = s;
    let err = || format!("time: invalid duration \"{orig}\"");
    let mut s = s;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total: i128 = 0;
    while !s.is_empty() {
        // The next character must be a digit or '.'.
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(err());
        }
        let int_end = b
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(b.len());
        let int_part = &s[..int_end];
        let mut rest = &s[int_end..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let fe = r
                .as_bytes()
                .iter()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(r.len());
            frac_part = &r[..fe];
            rest = &r[fe..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err());
        }
        let unit_end = rest
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration \"{orig}\""));
        }
        let mult: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit \"{unit}\" in duration \"{orig}\""
                ))
            }
        };
        let int_val: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse::<i128>().map_err(|_| err())?
        };
        let mut v = int_val.checked_mul(mult).ok_or_else(err)?;
        if !frac_part.is_empty() {
            // Go truncates the fraction to nanosecond precision.
            let mut scale: i128 = 1;
            let mut f: i128 = 0;
            for c in frac_part.bytes().take(30) {
                f = f * 10 + (c - b'0') as i128;
                scale *= 10;
            }
            v += f * mult / scale;
        }
        total = total.checked_add(v).ok_or_else(err)?;
        if total > i64::MAX as i128 {
            return Err(err());
        }
        s = &rest[unit_end..];
    }
    Ok(if neg { -total } else { total })
}

/// Go's `strconv.ParseUint(s, 10, 64)`.
pub fn parse_go_uint(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err(format!(
            "strconv.ParseUint: parsing \"{s}\": invalid syntax"
        ));
    }
    if !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "strconv.ParseUint: parsing {}: invalid syntax",
            go_quote(s)
        ));
    }
    s.parse::<u64>().map_err(|_| {
        format!(
            "strconv.ParseUint: parsing {}: value out of range",
            go_quote(s)
        )
    })
}

/// Go's `%q` for a string (as used in Consul's error texts).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Percent-decodes a URL path the way Go's `url.URL.Path` is derived from the raw path.
/// Returns `None` on a malformed escape (Go answers 400 before any handler runs).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = hexval(*b.get(i + 1)?)?;
            let l = hexval(*b.get(i + 2)?)?;
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
pub fn query_decode(s: &str) -> Option<String> {
    percent_decode(&s.replace('+', " "))
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes a query component like Go's `url.QueryEscape`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for &c in s.as_bytes() {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(c as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{c:02X}")),
        }
    }
    out
}

/// `http.ServeMux`'s cleanPath: `path.Clean`, keeping a trailing slash.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".to_string();
    }
    let p = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut np = format!("/{}", parts.join("/"));
    if p.ends_with('/') && np != "/" {
        np.push('/');
    }
    np
}

/// A random (version 4) UUID, as Consul uses for session IDs and accessors.
pub fn uuid4() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("getrandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A random duration in `[0, max)` (Consul's `lib.RandomStagger`).
pub fn random_stagger(max: Duration) -> Duration {
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    let r = getrandom::u64().unwrap_or(0);
    Duration::from_nanos(r % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("1s"), Ok(1_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("-2ms"), Ok(-2_000_000));
        assert_eq!(parse_go_duration(".5h"), Ok(1_800_000_000_000));
        assert_eq!(parse_go_duration("10µs"), Ok(10_000));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("1x").is_err());
        assert!(parse_go_duration("1s ").is_err());
        assert!(parse_go_duration(".s").is_err());
    }

    #[test]
    fn uints() {
        assert_eq!(parse_go_uint("42"), Ok(42));
        assert!(parse_go_uint("-1").is_err());
        assert!(parse_go_uint("+1").is_err());
        assert!(parse_go_uint("18446744073709551616").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(clean_path("/v1/kv/a//b"), "/v1/kv/a/b");
        assert_eq!(clean_path("/v1/kv/a/./b/"), "/v1/kv/a/b/");
        assert_eq!(clean_path("/v1/kv/"), "/v1/kv/");
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(go_quote("a\"b\n"), "\"a\\\"b\\n\"");
    }
}
