//! Syslog over TCP (RFC 6587, octet-counted and newline framing) and RFC 5424 messages: the
//! decoder never panics, never yields a frame over its limit, and gives the same frames and the
//! same verdict however the stream is cut into reads; every frame's parse never panics.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wharf_fuzz::wire::{FrameDecoder, FrameError, parse_message};

const MAX: usize = 512;

/// Decode `data` delivered in pieces of the given sizes (cycled), as a connection would.
fn decode_in_pieces(data: &[u8], cuts: &[u8]) -> (Vec<bytes::Bytes>, Option<FrameError>) {
    let mut dec = FrameDecoder { max: MAX };
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = cuts
            .get(i % cuts.len().max(1))
            .map_or(data.len(), |&c| usize::from(c).max(1));
        i += 1;
        let end = (at + n).min(data.len());
        buf.extend_from_slice(&data[at..end]);
        at = end;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.len() <= MAX, "frame of {} bytes over the limit", f.len());
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

// Input: N, then N read sizes (cycled; 0 counts as 1), then the stream.
fuzz_target!(|input: &[u8]| {
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (cuts, data) = rest.split_at(n);
    let (whole, whole_err) = decode_in_pieces(data, &[]);
    let (pieces, pieces_err) = decode_in_pieces(data, cuts);
    // A stream that fails fails at the same frame whatever the reads; one that does not yields
    // the same frames. (The error's detail may differ: it shows the bytes seen so far.)
    assert_eq!(
        whole_err.is_some(),
        pieces_err.is_some(),
        "verdict depends on reads"
    );
    if whole_err.is_none() {
        assert_eq!(whole, pieces, "frames depend on how the stream was read");
    } else {
        let n = whole.len().min(pieces.len());
        assert_eq!(
            whole[..n],
            pieces[..n],
            "frames depend on how the stream was read"
        );
    }
    for f in &whole {
        if let Ok(m) = parse_message(f) {
            assert!(m.pri <= 191);
            let _ = m.to_line("app-space", "space");
        }
    }
    let _ = parse_message(data);
});
