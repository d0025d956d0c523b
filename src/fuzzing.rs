//! Entry points for the fuzz targets (`fuzz/`) and the property tests (`tests/fuzz_props.rs`)
//! that reach parsers the public API keeps `pub(crate)`. Not part of Keyway's API: hidden from
//! the docs, and nothing else should call it.

use crate::protocol::ProtocolError;

/// Splits an inline command line (without its `\n` or `\r\n`) as the request decoder does, like
/// redis-server's `sdssplitargs`, into owned arguments.
///
/// # Errors
///
/// [`ProtocolError::UnbalancedQuotes`] for an unterminated quote or a closing quote followed by
/// something other than a blank.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let (mut out, mut ranges) = (Vec::new(), Vec::new());
    crate::protocol::split_args(line, &mut out, &mut ranges)?;
    Ok(ranges
        .iter()
        .map(|&(start, end)| out.get(start..end).unwrap_or_default().to_vec())
        .collect())
}
