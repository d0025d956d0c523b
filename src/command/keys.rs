//! Key positions: which arguments of a command are keys, per its [`KeySpec`].
//!
//! The movable forms are parsed as redis-server 7.0 parses them in its `*GetKeys` functions
//! (`evalGetKeys`, `zunionInterDiffStoreGetKeys`, `xreadGetKeys`, `sortGetKeys`,
//! `georadiusGetKeys`), so the proxy and the server always agree on what the keys are. Where the
//! arguments are too malformed to find the keys, the error is the one redis-server gives for the
//! same command (checked against a live server by `tests/command_table.rs`).

use std::borrow::Cow;

use crate::protocol::Args;

// Integers as redis-server's `string2ll` accepts them (no `+`, no spaces, no leading zeros).
use crate::protocol::parse_i64;

pub(super) use super::KeySpec::{GeoStore, Sort, Streams};
use super::{CommandError, CommandSpec, KeySpec};

/// [`KeySpec::None`], short for the table.
pub(super) const NOKEYS: KeySpec = KeySpec::None;

/// [`KeySpec::Range`], short for the table.
pub(super) const fn range(first: i32, last: i32, step: i32) -> KeySpec {
    KeySpec::Range { first, last, step }
}

/// [`KeySpec::NumKeys`], short for the table.
pub(super) const fn numkeys(numkeys_at: usize, first: usize, step: usize) -> KeySpec {
    KeySpec::NumKeys {
        numkeys_at,
        first,
        step,
    }
}

/// [`KeySpec::DestNumKeys`], short for the table.
pub(super) const fn dest_numkeys(dest: usize, numkeys_at: usize, first: usize) -> KeySpec {
    KeySpec::DestNumKeys {
        dest,
        numkeys_at,
        first,
    }
}

/// Writes into `out` (cleared first) the argument indexes of the keys of a command resolved to
/// `spec`, in argument order (SORT/GEORADIUS: the source key, then the destination). Empty for
/// keyless commands and for EVAL/FCALL with 0 keys. Expects `args` to have passed
/// [`super::resolve`] (arity checked); never panics on any input.
///
/// # Errors
///
/// [`CommandError::InvalidArguments`] when a `numkeys` argument is not an integer, out of range,
/// or larger than the argument list, or XREAD's `STREAMS` list is missing or unbalanced;
/// [`CommandError::Arity`] for MSET/MSETNX with a key lacking its value. The messages are
/// redis-server's for the same command.
pub fn key_indexes(
    spec: &CommandSpec,
    args: Args<'_>,
    out: &mut Vec<usize>,
) -> Result<(), CommandError> {
    out.clear();
    let argc = args.len();
    match spec.keys {
        KeySpec::None => Ok(()),
        KeySpec::Range { first, last, step } => legacy_range(spec, argc, first, last, step, out),
        KeySpec::NumKeys {
            numkeys_at,
            first,
            step,
        } => {
            let n = count_numkeys(spec, args, numkeys_at, first, step)?;
            out.extend((0..n).map(|i| first + i * step));
            Ok(())
        }
        KeySpec::DestNumKeys {
            dest,
            numkeys_at,
            first,
        } => {
            let n = count_numkeys(spec, args, numkeys_at, first, 1)?;
            out.push(dest);
            out.extend(first..first + n);
            Ok(())
        }
        KeySpec::Streams => streams(spec, args, out),
        KeySpec::Sort => {
            out.push(1);
            // sortGetKeys: LIMIT skips 2 arguments, GET and BY 1; the last STORE wins.
            let mut store = None;
            let mut i = 2;
            while let Some(arg) = args.get(i) {
                if is(arg, "limit") {
                    i += 2;
                } else if is(arg, "get") || is(arg, "by") {
                    i += 1;
                } else if is(arg, "store") && i + 1 < argc {
                    store = Some(i + 1);
                    i += 1;
                }
                i += 1;
            }
            out.extend(store);
            Ok(())
        }
        KeySpec::GeoStore => {
            out.push(1);
            // georadiusGetKeys: from argument 5 on, the last STORE or STOREDIST wins.
            let mut store = None;
            let mut i = 5;
            while let Some(arg) = args.get(i) {
                if (is(arg, "store") || is(arg, "storedist")) && i + 1 < argc {
                    store = Some(i + 1);
                    i += 1;
                }
                i += 1;
            }
            out.extend(store);
            Ok(())
        }
    }
}

/// The legacy range, as redis-server's `getKeysUsingLegacyRangeSpec`: no keys at all if the
/// range runs past the arguments (the server then answers the arity or syntax error itself).
fn legacy_range(
    spec: &CommandSpec,
    argc: usize,
    first: i32,
    last: i32,
    step: i32,
    out: &mut Vec<usize>,
) -> Result<(), CommandError> {
    let argc = i64::try_from(argc).unwrap_or(i64::MAX);
    let (first, step) = (i64::from(first), i64::from(step));
    if first <= 0 || step <= 0 {
        return Ok(());
    }
    let last = if last < 0 {
        argc + i64::from(last)
    } else {
        i64::from(last)
    };
    // MSET/MSETNX (`1 -1 2`): a key without its value is an arity error for redis-server, and
    // splitting such a command per server would pair keys with the wrong values.
    if step > 1 && last == argc - 1 && (argc - first) % step != 0 {
        return Err(CommandError::Arity { name: spec.name });
    }
    let mut at = first;
    while at <= last {
        match usize::try_from(at) {
            Ok(i) if at < argc => out.push(i),
            _ => {
                out.clear();
                return Ok(());
            }
        }
        at += step;
    }
    Ok(())
}

/// How a command family reports a bad `numkeys`: each says it in its own words.
enum NumKeysStyle {
    /// EVAL, EVALSHA, FCALL and their `_RO` forms: 0 keys is fine.
    Script,
    /// ZUNION, ZINTER, ZDIFF, ZINTERCARD and the `*STORE` forms.
    SortedSets,
    /// SINTERCARD.
    SetCard,
    /// LMPOP, ZMPOP, BLMPOP, BZMPOP.
    Pop,
}

const NOT_AN_INTEGER: &str = "value is not an integer or out of range";
const MORE_KEYS_THAN_ARGS: &str = "Number of keys can't be greater than number of args";
const SYNTAX: &str = "syntax error";
const POSITIVE: &str = "numkeys should be greater than 0";

/// The number of keys of a `numkeys` form, checked against the arguments there are.
fn count_numkeys(
    spec: &CommandSpec,
    args: Args<'_>,
    numkeys_at: usize,
    first: usize,
    step: usize,
) -> Result<usize, CommandError> {
    let style = match spec.name {
        _ if spec.traits.contains(super::Traits::SCRIPT) => NumKeysStyle::Script,
        "sintercard" => NumKeysStyle::SetCard,
        "lmpop" | "zmpop" | "blmpop" | "bzmpop" => NumKeysStyle::Pop,
        _ => NumKeysStyle::SortedSets,
    };
    let invalid = |message: &'static str| invalid(Cow::Borrowed(message));
    let raw = args.get(numkeys_at).map(parse_i64);
    let n = match (raw.flatten(), &style) {
        (None, NumKeysStyle::Script | NumKeysStyle::SortedSets) => {
            return Err(invalid(NOT_AN_INTEGER))
        }
        (None, NumKeysStyle::SetCard | NumKeysStyle::Pop) => return Err(invalid(POSITIVE)),
        (Some(n), NumKeysStyle::Script) if n < 0 => {
            return Err(invalid("Number of keys can't be negative"))
        }
        (Some(0), NumKeysStyle::Script) => return Ok(0),
        (Some(n), NumKeysStyle::SortedSets) if n < 1 => {
            return Err(self::invalid(Cow::Owned(format!(
                "at least 1 input key is needed for '{}' command",
                spec.name
            ))))
        }
        (Some(n), NumKeysStyle::SetCard | NumKeysStyle::Pop) if n < 1 => {
            return Err(invalid(POSITIVE))
        }
        (Some(n), _) => n,
    };
    // n >= 1 here; the last key is at first + (n - 1) * step and must be an argument.
    let fits = usize::try_from(n - 1)
        .ok()
        .and_then(|k| k.checked_mul(step))
        .and_then(|span| span.checked_add(first))
        .is_some_and(|last| last < args.len());
    match (fits, style) {
        (true, _) => usize::try_from(n).map_err(|_| invalid(SYNTAX)),
        (false, NumKeysStyle::Script | NumKeysStyle::SetCard) => Err(invalid(MORE_KEYS_THAN_ARGS)),
        (false, NumKeysStyle::SortedSets | NumKeysStyle::Pop) => Err(invalid(SYNTAX)),
    }
}

/// XREAD/XREADGROUP, as `xreadGetKeys`: skip the options up to `STREAMS`; the keys are the first
/// half of what follows.
fn streams(spec: &CommandSpec, args: Args<'_>, out: &mut Vec<usize>) -> Result<(), CommandError> {
    let mut at = None;
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        if is(arg, "block") || is(arg, "count") {
            i += 2;
        } else if is(arg, "group") {
            i += 3;
        } else if is(arg, "noack") {
            i += 1;
        } else {
            if is(arg, "streams") {
                at = Some(i);
            }
            break;
        }
    }
    let Some(at) = at else {
        return Err(invalid(Cow::Borrowed(SYNTAX)));
    };
    let rest = args.len().saturating_sub(at + 1);
    if rest == 0 {
        return Err(invalid(Cow::Borrowed(SYNTAX)));
    }
    if !rest.is_multiple_of(2) {
        let name = if spec.name == "xreadgroup" {
            "XREADGROUP"
        } else {
            "XREAD"
        };
        return Err(invalid(Cow::Owned(format!(
            "Unbalanced {name} list of streams: for each stream key an ID or '$' must be specified."
        ))));
    }
    out.extend(at + 1..at + 1 + rest / 2);
    Ok(())
}

fn invalid(message: Cow<'static, str>) -> CommandError {
    CommandError::InvalidArguments { message }
}

/// Case-insensitive comparison with a lowercase keyword.
fn is(arg: &[u8], keyword: &str) -> bool {
    arg.eq_ignore_ascii_case(keyword.as_bytes())
}
