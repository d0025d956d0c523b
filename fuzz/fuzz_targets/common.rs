//! What the targets share: reading split points off the front of the input, and feeding a
//! resumable decoder the way a socket would.

#![allow(dead_code, reason = "each target uses a part")]

use bytes::BytesMut;
use keyway::protocol::Limits;

/// A fuzz input read as `[flags][n][n chunk lengths][stream]`: the stream is fed in chunks of
/// those lengths (0 is a read that brought nothing), then whatever is left.
pub struct Input<'a> {
    pub flags: u8,
    pub stream: &'a [u8],
    pub chunks: Vec<&'a [u8]>,
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Input<'a> {
        let (flags, rest) = data.split_first().map_or((0, data), |(&f, r)| (f, r));
        let (n, rest) = rest.split_first().map_or((0, rest), |(&n, r)| (n % 16, r));
        let n = usize::from(n).min(rest.len());
        let (lengths, stream) = rest.split_at(n);
        let mut chunks = Vec::with_capacity(n + 1);
        let mut left = stream;
        for &len in lengths {
            let (chunk, after) = left.split_at(usize::from(len).min(left.len()));
            chunks.push(chunk);
            left = after;
        }
        chunks.push(left);
        Input {
            flags,
            stream,
            chunks,
        }
    }

    /// Small limits (flag bit 0) reach every cap with short inputs; the defaults otherwise.
    pub fn limits(&self, defaults: Limits) -> Limits {
        if self.flags & 1 == 1 {
            Limits {
                max_bulk_len: 8,
                max_array_len: 4,
                max_inline_len: 16,
                max_depth: 2,
            }
        } else {
            defaults
        }
    }
}

/// Appends each chunk to one buffer and decodes after each until the decoder wants more bytes;
/// every result in order, the error that ended them if any, and the bytes left undecoded.
pub fn feed<T, E>(
    chunks: &[&[u8]],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
) -> (Vec<T>, Option<E>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&mut buf) {
                Ok(Some(t)) => out.push(t),
                Ok(None) => break,
                Err(e) => return (out, Some(e), buf),
            }
        }
    }
    (out, None, buf)
}
