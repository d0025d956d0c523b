//! Number header lines (`*3\r\n`, `$5\r\n`, `:42\r\n`), parsed like redis-server's `string2ll`.
//!
//! A line is at most [`MAX_DIGITS`] characters: anything longer cannot be an `i64`, so it is
//! refused as soon as that many bytes arrived without a `\r`, and a partial line is cheap to
//! re-read on the next call (no resume state needed for it).

/// Characters in the longest `i64`: `-9223372036854775808`.
pub(crate) const MAX_DIGITS: usize = 20;

/// Why a number line is refused; each caller maps it to its own [`super::ProtocolError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumberError {
    /// The line ended but is not a valid `i64` in `string2ll`'s syntax.
    Invalid,
    /// More than [`MAX_DIGITS`] characters without a `\r`.
    TooLong,
    /// The `\r` is followed by something other than `\n`.
    Crlf,
}

/// Reads the number line whose type byte is at `start`. `Ok(None)`: the line is not complete yet.
/// `Ok(Some((n, next)))`: `next` is the offset just after its `\r\n`.
pub(crate) fn number_line(buf: &[u8], start: usize) -> Result<Option<(i64, usize)>, NumberError> {
    let digits_start = start + 1;
    let window_end = buf.len().min(digits_start + MAX_DIGITS + 1);
    let window = buf.get(digits_start..window_end).unwrap_or_default();
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() > MAX_DIGITS {
            return Err(NumberError::TooLong);
        }
        return Ok(None);
    };
    let digits = window.get(..cr).unwrap_or_default();
    let n = parse_i64(digits).ok_or(NumberError::Invalid)?;
    let lf = digits_start + cr + 1;
    match buf.get(lf) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((n, lf + 1))),
        Some(_) => Err(NumberError::Crlf),
    }
}

/// `string2ll`: optional `-`, then `0` alone or a digit 1-9 followed by digits; no `+`, no
/// spaces, no leading zeros, no `-0`, no overflow.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        // i64::MIN's magnitude is one more than i64::MAX.
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_i64_follows_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"123"), Some(123));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn number_line_needs_crlf_and_bounds_length() {
        assert_eq!(number_line(b"*12\r\nrest", 0), Ok(Some((12, 5))));
        assert_eq!(number_line(b"x*12\r\n", 1), Ok(Some((12, 6))));
        assert_eq!(number_line(b"*12", 0), Ok(None));
        assert_eq!(number_line(b"*12\r", 0), Ok(None));
        assert_eq!(number_line(b"*12\rx", 0), Err(NumberError::Crlf));
        assert_eq!(number_line(b"*1x\r", 0), Err(NumberError::Invalid));
        assert_eq!(number_line(b"*\r\n", 0), Err(NumberError::Invalid));
        let twenty = b"*-9223372036854775808\r\n";
        assert_eq!(number_line(twenty, 0), Ok(Some((i64::MIN, twenty.len()))));
        assert_eq!(
            number_line(b"*111111111111111111111", 0),
            Err(NumberError::TooLong)
        );
        assert_eq!(number_line(b"*11111111111111111111", 0), Ok(None));
    }
}
