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

/// Digits of the longest length [`short_length`] reads: below `10^18`, so it cannot overflow.
const SHORT_DIGITS: usize = 18;

/// The common case of a request's length line (`*3`, `$5`), read in one pass: the digits at
/// `at` (no sign, no leading zero, at most [`SHORT_DIGITS`]) and `\r\n`. Returns the length and
/// the offset after the line; `None` for anything else (incomplete, negative, malformed, too
/// long), which [`number_line`] then reads and judges with redis-server's rules.
#[inline(always)]
pub(crate) fn short_length(buf: &[u8], at: usize) -> Option<(i64, usize)> {
    let mut n: i64 = 0;
    let mut i = at;
    loop {
        match *buf.get(i)? {
            d @ b'0'..=b'9' if i - at < SHORT_DIGITS => {
                n = n * 10 + i64::from(d - b'0');
                i += 1;
            }
            b'\r' => break,
            _ => return None,
        }
    }
    let digits = i - at;
    if digits == 0 || (digits > 1 && buf.get(at) == Some(&b'0')) || buf.get(i + 1) != Some(&b'\n') {
        return None;
    }
    Some((n, i + 2))
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

    #[test]
    fn short_length_agrees_with_number_line_wherever_it_answers() {
        // Every line of up to 6 bytes over an alphabet with every interesting byte, after `$`.
        let alphabet = b"0159\r\n-+x";
        let mut answered = 0;
        let mut line = Vec::new();
        for len in 0..=6u32 {
            for mut code in 0..alphabet.len().pow(len) {
                line.clear();
                line.push(b'$');
                for _ in 0..len {
                    line.push(alphabet[code % alphabet.len()]);
                    code /= alphabet.len();
                }
                if let Some(short) = short_length(&line, 1) {
                    answered += 1;
                    assert_eq!(number_line(&line, 0), Ok(Some(short)), "{line:?}");
                }
            }
        }
        assert!(answered > 1000, "{answered}");
        // The longest it reads, and one digit more (left to number_line).
        let max = format!("${}\r\n", "9".repeat(SHORT_DIGITS));
        assert_eq!(
            short_length(max.as_bytes(), 1),
            Some((999_999_999_999_999_999, max.len()))
        );
        assert_eq!(
            short_length(format!("$1{}\r\n", "0".repeat(SHORT_DIGITS)).as_bytes(), 1),
            None
        );
        // Leading zeros, signs and a lone `\r` are number_line's to judge.
        for line in [
            &b"$01\r\n"[..],
            b"$-1\r\n",
            b"$+1\r\n",
            b"$\r\n",
            b"$1\rx",
            b"$1\r",
            b"$12",
        ] {
            assert_eq!(short_length(line, 1), None, "{line:?}");
        }
    }
}
