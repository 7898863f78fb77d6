//! `application/logplex-1` bodies: splitting never panics, frames stay within the body and the
//! 10 KiB limit, and re-encoding the frames octet-counted splits back into the same frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_fuzz::wire::{LOGPLEX_MAX_FRAME, parse_message, push_octet_counted, split_logplex_body};

fuzz_target!(|body: &[u8]| {
    let Ok(frames) = split_logplex_body(body) else {
        return;
    };
    let total: usize = frames.iter().map(|f| f.len()).sum();
    assert!(total <= body.len());
    let mut again = Vec::new();
    for f in &frames {
        assert!(f.len() <= LOGPLEX_MAX_FRAME);
        push_octet_counted(&mut again, f);
        if let Ok(m) = parse_message(f) {
            let line = m.to_line("app-space", "space");
            assert_eq!(line.line, m.msg);
        }
    }
    let back = split_logplex_body(&again).expect("re-encoded frames split again");
    assert_eq!(back, frames);
});
