//! Inline commands (`SET k "a b"\r\n`), split exactly like redis-server's `sdssplitargs`.
//!
//! Inline input is rare (telnet, load-balancer health checks sending `PING\r\n`) and is never
//! forwarded as typed: the decoder re-encodes it as a multibulk, so servers and the rest of the
//! proxy only ever see one form.

use super::ProtocolError;

/// C's `isspace` in the "C" locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits `line` (without its `\n` or `\r\n`) into arguments, appending their bytes to `out`
/// and each argument's `(start, end)` in `out` to `ranges`.
///
/// Follows `sdssplitargs`: blanks separate arguments; `"..."` understands `\n \r \t \b \a`,
/// `\xHH` and `\<any>`; `'...'` understands `\'`; a closing quote must be followed by a blank or
/// the end; quotes may start mid-argument (`a"b c"` is `ab c`). Redis runs it on a C string, so a
/// NUL byte ends the line (inside quotes that makes them unbalanced).
///
/// # Errors
///
/// [`ProtocolError::UnbalancedQuotes`] for an unterminated quote or a closing quote followed by
/// something other than a blank.
pub(crate) fn split_args(
    line: &[u8],
    out: &mut Vec<u8>,
    ranges: &mut Vec<(usize, usize)>,
) -> Result<(), ProtocolError> {
    // The byte at `i`, or NUL past the end: the C string's terminator.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut p = 0;
    loop {
        while at(p) != 0 && is_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Ok(());
        }
        let start = out.len();
        let (mut in_double, mut in_single, mut done) = (false, false, false);
        while !done {
            let c = at(p);
            if in_double {
                let hex = (c == b'\\' && at(p + 1) == b'x')
                    .then(|| Some(hex_value(at(p + 2))? * 16 + hex_value(at(p + 3))?))
                    .flatten();
                if let Some(byte) = hex {
                    out.push(byte);
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    out.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    done = true;
                } else if c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    out.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    out.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    done = true;
                } else if c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    out.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => out.push(c),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        ranges.push((start, out.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        let (mut out, mut ranges) = (Vec::new(), Vec::new());
        split_args(line, &mut out, &mut ranges)?;
        Ok(ranges.iter().map(|&(s, e)| out[s..e].to_vec()).collect())
    }

    fn ok(line: &[u8], want: &[&[u8]]) {
        let got = split(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(got, want, "{}", String::from_utf8_lossy(line));
    }

    #[test]
    fn blanks_separate_arguments() {
        ok(b"SET k v", &[b"SET", b"k", b"v"]);
        ok(b"  SET\t\tk \x0b v  ", &[b"SET", b"k", b"v"]);
        ok(b"", &[]);
        ok(b" \t ", &[]);
        ok(b"a\rb", &[b"a", b"b"]);
    }

    #[test]
    fn double_quotes_understand_escapes() {
        ok(
            br#"SET "a b" "x\n\r\t\b\a\\\"y""#,
            &[b"SET", b"a b", b"x\n\r\t\x08\x07\\\"y"],
        );
        ok(br#""\x41\x4a\x4A\x00z""#, &[b"AJJ\x00z"]);
        // Not a valid \x escape: backslash-x is just x, then the rest literally.
        ok(br#""\xZZ""#, &[b"xZZ"]);
        ok(br#""\q""#, &[b"q"]);
        ok(br#""""#, &[b""]);
    }

    #[test]
    fn quote_mid_argument_and_single_quotes() {
        ok(br#"a"b c""#, &[b"ab c"]);
        ok(br"'it\'s' 'a\nb'", &[b"it's", b"a\\nb"]);
        ok(br"''", &[b""]);
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        for line in [
            &br#"SET "abc"#[..],
            br#""a"b"#,
            br"'abc",
            br"'a'b",
            br#""ab\"#,
            b"\"a\x00b\"",
        ] {
            assert_eq!(
                split(line),
                Err(ProtocolError::UnbalancedQuotes),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn nul_ends_the_line_like_a_c_string() {
        ok(b"GET a\x00b c", &[b"GET", b"a"]);
        ok(b"\x00GET", &[]);
    }
}
