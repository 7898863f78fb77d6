//! Where a chunked body ends (RFC 9112 §7.1), found without changing a byte of it: the router
//! relays a dyno's chunked response as it is framed and needs only to know when it is over.

/// A scanner fed a chunked body piece by piece.
#[derive(Debug, Default)]
pub struct ChunkScan {
    state: State,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The chunk-size digits.
    #[default]
    Size,
    /// Chunk extensions, up to the end of the size line.
    Extension,
    /// The LF after the size line's CR.
    SizeLf,
    /// `size` more bytes of chunk data.
    Data,
    /// The CRLF after chunk data.
    DataCr,
    DataLf,
    /// The start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// The LF ending the final empty line.
    LastLf,
}

/// Malformed chunk framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Chunk sizes beyond this (1 TiB) are refused rather than overflowed.
const MAX_SIZE_DIGITS: u8 = 10;

impl ChunkScan {
    /// Feed the next bytes of the body: `Some(n)` when the body ends after `n` of them.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Data {
                let take = (self.size).min((data.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == MAX_SIZE_DIGITS {
                        return Err(Malformed);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    State::Size
                }
                (State::Size, b';' | b' ' | b'\t') if self.digits > 0 => State::Extension,
                (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Size, b'\n') if self.digits > 0 => self.size_line_done(),
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b'\n') => self.size_line_done(),
                (State::Extension, _) => State::Extension,
                (State::SizeLf, b'\n') => self.size_line_done(),
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr | State::DataLf, b'\n') => State::Size,
                (State::TrailerStart, b'\r') => State::LastLf,
                (State::TrailerStart | State::LastLf, b'\n') => return Ok(Some(i)),
                (State::Trailer, b'\n') => State::TrailerStart,
                (State::TrailerStart | State::Trailer, _) => State::Trailer,
                _ => return Err(Malformed),
            };
        }
        Ok(None)
    }

    fn size_line_done(&mut self) -> State {
        self.digits = 0;
        if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end found when the body comes in pieces split at `cut`.
    fn end_split(body: &[u8], cut: usize) -> Result<Option<usize>, Malformed> {
        let mut scan = ChunkScan::default();
        match scan.feed(&body[..cut])? {
            Some(n) => Ok(Some(n)),
            None => Ok(scan.feed(&body[cut..])?.map(|n| cut + n)),
        }
    }

    #[test]
    fn finds_the_end_wherever_the_pieces_are_cut() {
        let bodies: &[&[u8]] = &[
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nOther: 2\r\n\r\n",
            b"3\nabc\n0\n\n",
            b"A\r\n0123456789\r\n0;last\r\n\r\n",
        ];
        for body in bodies {
            for cut in 0..=body.len() {
                assert_eq!(
                    end_split(body, cut),
                    Ok(Some(body.len())),
                    "{body:?} cut at {cut}"
                );
            }
            // Bytes after the end are not part of the body.
            let mut more = body.to_vec();
            more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            assert_eq!(ChunkScan::default().feed(&more), Ok(Some(body.len())));
        }
    }

    #[test]
    fn an_unfinished_body_is_not_over() {
        let mut scan = ChunkScan::default();
        assert_eq!(scan.feed(b"5\r\nhel"), Ok(None));
        assert_eq!(scan.feed(b"lo\r\n"), Ok(None));
        assert_eq!(scan.feed(b"0\r\n"), Ok(None));
        assert_eq!(scan.feed(b"\r\n"), Ok(Some(2)));
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\rX",
            b"fffffffffff\r\n",
        ] {
            assert_eq!(ChunkScan::default().feed(bad), Err(Malformed), "{bad:?}");
        }
    }
}
