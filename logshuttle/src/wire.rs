//! Bytes on the wire: RFC 5424 messages in Heroku's shape, RFC 6587 framing (octet counting
//! and newline), `application/logplex-1` bodies, and the notices Logplex writes into a stream.
//!
//! Heroku's shape: `<PRI>1 TIMESTAMP HOST APP-NAME PROCID - - MSG`, where APP-NAME is the source
//! (`app` or `heroku`), PROCID the process (`web.1`, `router`), and HOST the drain token (or the
//! app key when the drain has none). PRI is 190 (local7.info) for app lines and 158
//! (local3.info) for platform lines.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use wharf_config::{LogLine, Source};

/// Logplex's limit for one frame of a `POST /logs` body.
pub const LOGPLEX_MAX_FRAME: usize = 10_240;

/// PRI for a line of `source`.
pub fn pri(source: Source) -> u8 {
    match source {
        Source::App => 190,
        Source::Heroku => 158,
    }
}

/// `2026-11-23T09:30:00.123456+00:00` for microseconds since the epoch.
pub fn format_timestamp(us: i64) -> String {
    let mut out = Vec::with_capacity(TIMESTAMP_LEN);
    TimestampCache::default().write(&mut out, us);
    String::from_utf8(out).unwrap_or_default()
}

/// Bytes of a formatted timestamp: `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`.
const TIMESTAMP_LEN: usize = 32;

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn put2(out: &mut [u8], v: u32) {
    out[0] = b'0' + (v / 10 % 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

/// Formats timestamps, keeping the `YYYY-MM-DDTHH:MM:SS` of the last second it saw: lines of
/// one second (most of a burst) cost a copy and six digits.
#[derive(Debug, Default, Clone)]
pub struct TimestampCache {
    secs: Option<i64>,
    head: [u8; 19],
}

impl TimestampCache {
    /// Append the timestamp of `us` (microseconds since the epoch, UTC) to `out`. Years
    /// outside 0000-9999 are clamped to the epoch.
    pub fn write(&mut self, out: &mut Vec<u8>, us: i64) {
        let mut secs = us.div_euclid(1_000_000);
        let mut micros = us.rem_euclid(1_000_000) as u32;
        // 0000-01-01 .. 9999-12-31T23:59:59
        if !(-62_167_219_200..=253_402_300_799).contains(&secs) {
            secs = 0;
            micros = 0;
        }
        if self.secs != Some(secs) {
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let sod = secs.rem_euclid(86_400) as u32;
            let h = &mut self.head;
            let y = y as u32;
            put2(&mut h[0..2], y / 100);
            put2(&mut h[2..4], y % 100);
            h[4] = b'-';
            put2(&mut h[5..7], m);
            h[7] = b'-';
            put2(&mut h[8..10], d);
            h[10] = b'T';
            put2(&mut h[11..13], sod / 3600);
            h[13] = b':';
            put2(&mut h[14..16], sod / 60 % 60);
            h[16] = b':';
            put2(&mut h[17..19], sod % 60);
            self.secs = Some(secs);
        }
        out.extend_from_slice(&self.head);
        let mut frac = *b".000000+00:00";
        let mut v = micros;
        for i in (1..7).rev() {
            frac[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&frac);
    }
}

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

fn field(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Writes RFC 5424 messages in Heroku's shape straight into a buffer: no allocation per line.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    ts: TimestampCache,
}

impl Encoder {
    /// Bytes of the message [`Encoder::message`] writes.
    pub fn message_len(line: &LogLine, host: &str) -> usize {
        let pri = pri(line.source);
        // "<PRI>1 " TIMESTAMP " " HOST " " APP " " PROCID " - - " MSG
        4 + digits(pri as usize)
            + TIMESTAMP_LEN
            + 1
            + field(host).len()
            + 1
            + line.source.as_str().len()
            + 1
            + field(&line.process).len()
            + 5
            + line.line.len()
    }

    /// Append one message (no framing) for `line`, with `host` in the HOST field.
    pub fn message(&mut self, out: &mut Vec<u8>, line: &LogLine, host: &str) {
        out.push(b'<');
        push_decimal(out, pri(line.source) as usize);
        out.extend_from_slice(b">1 ");
        self.ts.write(out, line.timestamp_us);
        out.push(b' ');
        out.extend_from_slice(field(host).as_bytes());
        out.push(b' ');
        out.extend_from_slice(line.source.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(field(&line.process).as_bytes());
        out.extend_from_slice(b" - - ");
        out.extend_from_slice(line.line.as_bytes());
    }

    /// Append one octet-counted message (`LEN SP MSG`, RFC 6587 §3.4.1).
    pub fn octet_counted(&mut self, out: &mut Vec<u8>, line: &LogLine, host: &str) {
        let len = Self::message_len(line, host);
        out.reserve(len + 8);
        push_decimal(out, len);
        out.push(b' ');
        self.message(out, line, host);
    }
}

/// One RFC 5424 message (no framing) for `line`, with `host` in the HOST field.
pub fn encode_message(line: &LogLine, host: &str) -> String {
    let mut out = Vec::with_capacity(Encoder::message_len(line, host));
    Encoder::default().message(&mut out, line, host);
    String::from_utf8(out).unwrap_or_default()
}

/// Append `msg` octet-counted (`LEN SP MSG`, RFC 6587 §3.4.1) to `out`.
pub fn push_octet_counted(out: &mut Vec<u8>, msg: &[u8]) {
    push_decimal(out, msg.len());
    out.push(b' ');
    out.extend_from_slice(msg);
}

/// A notice Logplex writes into an app's stream (`heroku[logplex]: Error L10 …`).
pub fn notice(app: &str, space: &str, text: String) -> LogLine {
    LogLine {
        app: app.into(),
        space: space.into(),
        source: Source::Heroku,
        process: "logplex".into(),
        timestamp_us: now_us(),
        line: text,
    }
}

/// Heroku's L10 text.
pub fn l10_text(dropped: u64, since_us: i64) -> String {
    format!(
        "Error L10 (output buffer overflow): {dropped} messages dropped since {}.",
        format_timestamp(since_us)
    )
}

/// For apps in `socs` spaces: values of secret-looking keys (`password=…`, `token: …`,
/// `api_key="…"`) and URL passwords (`scheme://user:PASS@`) become `[REDACTED]`.
pub fn redact_secrets(line: &str) -> Option<String> {
    const KEYS: [&str; 8] = [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_key",
        "authorization",
    ];
    let lower = line.to_ascii_lowercase();
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    for key in KEYS {
        let mut from = 0;
        while let Some(i) = lower[from..].find(key) {
            let mut j = from + i + key.len();
            from = j;
            let b = lower.as_bytes();
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            if j >= b.len() || !(b[j] == b'=' || b[j] == b':') {
                continue;
            }
            j += 1;
            while j < b.len() && (b[j] == b' ' || b[j] == b'"' || b[j] == b'\'') {
                j += 1;
            }
            let start = j;
            while j < b.len() && !matches!(b[j], b' ' | b'"' | b'\'' | b',' | b';' | b'&') {
                j += 1;
            }
            if j > start {
                cuts.push((start, j));
            }
        }
    }
    // scheme://user:PASS@host
    let mut from = 0;
    while let Some(i) = line[from..].find("://") {
        let auth_start = from + i + 3;
        from = auth_start;
        let rest = &line[auth_start..];
        let end = rest.find(['/', ' ', '"']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            cuts.push((auth_start + colon + 1, auth_start + at));
        }
    }
    if cuts.is_empty() {
        return None;
    }
    cuts.sort();
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    for (a, b) in cuts {
        if a < at {
            continue;
        }
        out.push_str(&line[at..a]);
        out.push_str("[REDACTED]");
        at = b;
    }
    out.push_str(&line[at..]);
    Some(out)
}

/// A parsed RFC 5424 message, borrowing from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub pri: u8,
    /// `None` for the nil timestamp `-`.
    pub timestamp_us: Option<i64>,
    pub host: &'a str,
    pub app_name: &'a str,
    pub procid: &'a str,
    pub msgid: &'a str,
    /// A `token="…"` parameter of any structured-data element.
    pub token: Option<Cow<'a, str>>,
    pub msg: &'a str,
}

impl Message<'_> {
    /// `heroku` as APP-NAME means a platform line; anything else is the app's own.
    pub fn source(&self) -> Source {
        if self.app_name == "heroku" {
            Source::Heroku
        } else {
            Source::App
        }
    }

    /// The line for app `app` (key) in `space`, borrowed from the message.
    pub fn line_ref<'a>(&'a self, app: &'a str, space: &'a str) -> wharf_config::LineRef<'a> {
        wharf_config::LineRef {
            app,
            space,
            source: self.source(),
            process: if self.procid == "-" { "" } else { self.procid },
            timestamp_us: self.timestamp_us.unwrap_or_else(now_us),
            line: self.msg,
        }
    }

    /// The line for app `app` (key) in `space`.
    pub fn to_line(&self, app: &str, space: &str) -> LogLine {
        self.line_ref(app, space).to_line()
    }
}

/// Parse one RFC 5424 message. Errors say what was expected where.
pub fn parse_message(bytes: &[u8]) -> Result<Message<'_>, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 at byte {}", e.valid_up_to()))?;
    let text = text.trim_end_matches(['\n', '\r']);
    let rest = text
        .strip_prefix('<')
        .ok_or_else(|| "not RFC 5424: expected '<PRI>' at the start".to_owned())?;
    // The PRI is 1-3 digits: '>' within the next 4 bytes or not at all.
    let close = rest
        .bytes()
        .take(4)
        .position(|c| c == b'>')
        .filter(|&i| (1..=3).contains(&i))
        .ok_or_else(|| "not RFC 5424: bad PRI".to_owned())?;
    let pri: u8 = rest[..close]
        .parse()
        .ok()
        .filter(|p| *p <= 191)
        .ok_or_else(|| format!("not RFC 5424: PRI {:?} is not 0-191", &rest[..close]))?;
    let rest = rest[close + 1..]
        .strip_prefix("1 ")
        .ok_or_else(|| "not RFC 5424: expected version 1 after PRI".to_owned())?;
    // Five space-separated header fields, then the rest (`splitn(6, ' ')`, with a byte loop
    // instead of the generic char searcher: parsing is most of a line's cost on its way in).
    let r = rest.as_bytes();
    // Where the next field starts; `None` once the text is used up.
    let mut at = Some(0usize);
    let mut next = |what: &str| {
        let field = at.and_then(|start| {
            let end = r[start..]
                .iter()
                .position(|&c| c == b' ')
                .map(|i| start + i);
            at = end.map(|e| e + 1);
            // Split at an ASCII space: a character boundary.
            rest.get(start..end.unwrap_or(r.len()))
        });
        field
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("not RFC 5424: missing {what}"))
    };
    let ts = next("TIMESTAMP")?;
    let host = next("HOSTNAME")?;
    let app_name = next("APP-NAME")?;
    let procid = next("PROCID")?;
    let msgid = next("MSGID")?;
    let sd_and_msg = at.and_then(|start| rest.get(start..)).unwrap_or("-");
    let timestamp_us = if ts == "-" {
        None
    } else {
        match parse_timestamp_fast(ts.as_bytes()) {
            Some(us) => Some(us),
            None => {
                let dt =
                    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| format!("bad TIMESTAMP {ts:?}: {e}"))?;
                Some((dt.unix_timestamp_nanos() / 1000) as i64)
            }
        }
    };
    let (token, msg) = parse_sd(sd_and_msg)?;
    Ok(Message {
        pri,
        timestamp_us,
        host,
        app_name,
        procid,
        msgid,
        token,
        msg,
    })
}

/// The common RFC 5424 timestamp shapes (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) without the
/// general parser; `None` for anything else, which the general parser then judges.
fn parse_timestamp_fast(b: &[u8]) -> Option<i64> {
    fn num(b: &[u8]) -> Option<u32> {
        let mut v = 0u32;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as u32;
        }
        Some(v)
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (h, mi, s) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d == 0 || d > mdays || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + (b[i] - b'0') as u32;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for _ in n..6 {
            micros *= 10;
        }
    }
    let offset_s: i64 = match &b[i..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let oh = num(&[*oh1, *oh2])?;
            let om = num(&[*om1, *om2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = (oh * 3600 + om * 60) as i64;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(y as i64, mo, d);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + s) as i64 - offset_s;
    Some(secs * 1_000_000 + micros as i64)
}

/// Split STRUCTURED-DATA from MSG; find a `token` parameter. Values are scanned, not copied:
/// the token is borrowed from the message unless it holds an escape (`\"`, `\\`, `\]`).
fn parse_sd(s: &str) -> Result<(Option<Cow<'_, str>>, &str), String> {
    if let Some(msg) = s.strip_prefix('-') {
        return Ok((None, msg.strip_prefix(' ').unwrap_or(msg)));
    }
    if !s.starts_with('[') {
        return Err("not RFC 5424: expected '-' or '[' for STRUCTURED-DATA".to_owned());
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut token = None;
    while i < b.len() && b[i] == b'[' {
        // One element: SD-ID then params name="value" until ']'.
        i += 1;
        let mut name_start = i;
        loop {
            let Some(&c) = b.get(i) else {
                return Err("not RFC 5424: unterminated STRUCTURED-DATA".to_owned());
            };
            match c {
                b']' => {
                    i += 1;
                    break;
                }
                b' ' => name_start = i + 1,
                b'=' => {
                    let name = &s[name_start..i];
                    if b.get(i + 1) != Some(&b'"') {
                        return Err("not RFC 5424: SD parameter value must be quoted".to_owned());
                    }
                    // The value, to its closing quote. Bytes, not characters: no byte of a
                    // multi-byte character is a quote or a backslash.
                    let start = i + 2;
                    let mut end = start;
                    let mut escaped = false;
                    loop {
                        match b.get(end) {
                            None => {
                                return Err("not RFC 5424: unterminated STRUCTURED-DATA".to_owned());
                            }
                            Some(b'\\') if matches!(b.get(end + 1), Some(b'"' | b'\\' | b']')) => {
                                escaped = true;
                                end += 2;
                            }
                            Some(b'"') => break,
                            Some(_) => end += 1,
                        }
                    }
                    if name == "token" {
                        let raw = &s[start..end];
                        token = Some(if escaped {
                            Cow::Owned(unescape_sd(raw))
                        } else {
                            Cow::Borrowed(raw)
                        });
                    }
                    i = end + 1;
                    name_start = i;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
    let msg = &s[i..];
    Ok((token, msg.strip_prefix(' ').unwrap_or(msg)))
}

/// An SD parameter value with its escapes (`\"`, `\\`, `\]`) undone.
fn unescape_sd(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let rest = chars.as_str();
            if let Some(n @ ('"' | '\\' | ']')) = rest.chars().next() {
                out.push(n);
                chars.next();
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Why a stream of frames cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("octet count {0:?} is not a number")]
    BadCount(String),
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
}

/// RFC 6587 decoder for a syslog TCP stream: each frame is octet-counted when it starts with a
/// digit, newline-terminated otherwise.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    pub max: usize,
}

impl FrameDecoder {
    /// The next whole frame in `buf`, if any.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        // Newlines and spaces between frames are tolerated.
        let skip = buf
            .iter()
            .take_while(|c| matches!(c, b'\n' | b'\r' | b' '))
            .count();
        buf.advance(skip);
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first.is_ascii_digit() {
            let Some(sp) = buf.iter().take(8).position(|&c| c == b' ') else {
                if buf.len() >= 8 || buf.iter().any(|c| !c.is_ascii_digit()) {
                    let shown = String::from_utf8_lossy(&buf[..buf.len().min(8)]).into_owned();
                    return Err(FrameError::BadCount(shown));
                }
                return Ok(None);
            };
            let digits = &buf[..sp];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(FrameError::BadCount(
                    String::from_utf8_lossy(digits).into_owned(),
                ));
            }
            let len: usize = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| {
                    FrameError::BadCount(String::from_utf8_lossy(digits).into_owned())
                })?;
            if len > self.max {
                return Err(FrameError::TooLarge { len, max: self.max });
            }
            if buf.len() < sp + 1 + len {
                buf.reserve(sp + 1 + len - buf.len());
                return Ok(None);
            }
            buf.advance(sp + 1);
            Ok(Some(buf.split_to(len).freeze()))
        } else {
            match buf.iter().position(|&c| c == b'\n') {
                Some(nl) => {
                    if nl > self.max {
                        return Err(FrameError::TooLarge {
                            len: nl,
                            max: self.max,
                        });
                    }
                    let mut frame = buf.split_to(nl + 1);
                    frame.truncate(nl);
                    if frame.last() == Some(&b'\r') {
                        frame.truncate(nl - 1);
                    }
                    Ok(Some(frame.freeze()))
                }
                None if buf.len() > self.max => Err(FrameError::TooLarge {
                    len: buf.len(),
                    max: self.max,
                }),
                None => Ok(None),
            }
        }
    }
}

/// Split an `application/logplex-1` body into its frames (strict octet counting).
pub fn split_logplex_body(body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut frames = Vec::new();
    let mut i = 0;
    while i < body.len() {
        if matches!(body[i], b'\n' | b'\r') {
            i += 1;
            continue;
        }
        let n = frames.len() + 1;
        let digits = body[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 7 {
            return Err(format!(
                "frame {n} at byte {i}: expected an octet count (RFC 6587), found {:?}",
                String::from_utf8_lossy(&body[i..body.len().min(i + 12)])
            ));
        }
        if body.get(i + digits) != Some(&b' ') {
            return Err(format!(
                "frame {n} at byte {i}: expected a space after the octet count"
            ));
        }
        let len: usize = std::str::from_utf8(&body[i..i + digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(usize::MAX);
        if len > LOGPLEX_MAX_FRAME {
            return Err(format!(
                "frame {n} is {len} bytes, over the {LOGPLEX_MAX_FRAME}-byte limit"
            ));
        }
        let start = i + digits + 1;
        if start + len > body.len() {
            return Err(format!(
                "frame {n} claims {len} bytes but only {} remain",
                body.len() - start
            ));
        }
        frames.push(&body[start..start + len]);
        i = start + len;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> LogLine {
        LogLine {
            app: "api-default".into(),
            space: "default".into(),
            source: Source::App,
            process: "web.1".into(),
            timestamp_us: 1_700_000_000_123_456,
            line: "hello world".into(),
        }
    }

    #[test]
    fn encode_heroku_shape() {
        let m = encode_message(&line(), "d.abc");
        assert_eq!(
            m,
            "<190>1 2023-11-14T22:13:20.123456+00:00 d.abc app web.1 - - hello world"
        );
        let p = parse_message(m.as_bytes()).unwrap();
        assert_eq!(p.to_line("api-default", "default"), line());
    }

    #[test]
    fn timestamps_fast_and_general_agree() {
        let general = |t: &str| {
            let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .unwrap();
            (dt.unix_timestamp_nanos() / 1000) as i64
        };
        for t in [
            "2026-11-23T10:00:00.000000+00:00",
            "2026-11-23T10:00:00Z",
            "2024-02-29T23:59:59.999999Z",
            "1999-12-31T23:59:59.5-05:30",
            "2000-03-01T00:00:00.123456789+14:00",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.000001Z",
        ] {
            assert_eq!(parse_timestamp_fast(t.as_bytes()), Some(general(t)), "{t}");
        }
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-23 10:00:00Z",
            "2026-11-23T10:00:00",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T24:00:00Z",
        ] {
            assert_eq!(parse_timestamp_fast(bad.as_bytes()), None, "{bad}");
        }
        let mut c = TimestampCache::default();
        for us in [
            0i64,
            1_700_000_000_123_456,
            951_782_400_000_000,
            -1,
            253_402_300_799_999_999,
        ] {
            let mut out = Vec::new();
            c.write(&mut out, us);
            let s = String::from_utf8(out).unwrap();
            assert_eq!(general(&s), us, "{s}");
        }
    }

    #[test]
    fn octet_counted_length_is_exact() {
        let mut l = line();
        let mut e = Encoder::default();
        for (process, text, host) in [
            ("web.1", "hello", "d.x"),
            ("", "", ""),
            ("router", &"é".repeat(300)[..], "h"),
        ] {
            l.process = process.into();
            l.line = text.into();
            let mut out = Vec::new();
            e.octet_counted(&mut out, &l, host);
            let mut want = Vec::new();
            push_octet_counted(&mut want, encode_message(&l, host).as_bytes());
            assert_eq!(out, want);
            let mut d = FrameDecoder { max: 100_000 };
            let mut b = BytesMut::from(&out[..]);
            let f = d.decode(&mut b).unwrap().unwrap();
            assert_eq!(f.len(), Encoder::message_len(&l, host));
        }
    }

    #[test]
    fn header_fields_split_at_single_spaces() {
        fn ok(m: &[u8]) -> Result<(&str, &str, &str, &str), String> {
            parse_message(m).map(|p| (p.host, p.app_name, p.procid, p.msg))
        }
        assert_eq!(
            ok(b"<13>1 - h a p m - hello  world"),
            Ok(("h", "a", "p", "hello  world"))
        );
        // No STRUCTURED-DATA at all reads as `-`; an empty one after a space does not.
        assert_eq!(ok(b"<13>1 - h a p m"), Ok(("h", "a", "p", "")));
        assert_eq!(ok(b"<13>1 - h a p m -"), Ok(("h", "a", "p", "")));
        assert!(
            ok(b"<13>1 - h a p m ")
                .unwrap_err()
                .contains("STRUCTURED-DATA")
        );
        // Two spaces make an empty field; a short header misses the next one.
        assert!(ok(b"<13>1 - h  a p m -").unwrap_err().contains("APP-NAME"));
        assert!(ok(b"<13>1 - h a p").unwrap_err().contains("MSGID"));
        assert!(ok(b"<13>1 - h a p ").unwrap_err().contains("MSGID"));
        assert!(ok(b"<13>1 ").unwrap_err().contains("TIMESTAMP"));
        assert_eq!(ok(b"<191>1 - h a p m -").map(|_| ()), Ok(()));
        assert_eq!(parse_message(b"<7>1 - h a p m -").unwrap().pri, 7);
        for bad in [&b"<1234>1 - h a p m -"[..], b"<>1 - h a p m -", b"<13"] {
            assert!(parse_message(bad).unwrap_err().contains("PRI"));
        }
        assert!(parse_message("<13>1 - hé ü p m - ½".as_bytes()).is_ok_and(|p| p.app_name == "ü"));
    }

    #[test]
    fn sd_values_are_scanned_and_a_plain_token_is_borrowed() {
        let p = parse_message(
            "<14>1 - h app web.2 - [x note=\"é ] \\\\ done\" token=\"tök\"][y z=\"]\"] msg é"
                .as_bytes(),
        )
        .unwrap();
        assert!(
            matches!(p.token, Some(Cow::Borrowed("tök"))),
            "{:?}",
            p.token
        );
        assert_eq!(p.msg, "msg é");
        let p = parse_message(br#"<14>1 - h app web.2 - [x token="a\]b"] m"#).unwrap();
        assert!(
            matches!(p.token, Some(Cow::Owned(ref t)) if t == "a]b"),
            "{:?}",
            p.token
        );
        assert!(
            parse_message(br#"<14>1 - h app web.2 - [x token="never closed] m"#)
                .unwrap_err()
                .contains("unterminated")
        );
    }

    #[test]
    fn parse_sd_token_and_errors() {
        let p = parse_message(
            br#"<14>1 - h app web.2 - [wharf@1 token="t\"x" a="b"][x y="z"] the msg"#,
        )
        .unwrap();
        assert_eq!(p.token.as_deref(), Some("t\"x"));
        assert_eq!(p.msg, "the msg");
        assert_eq!(p.timestamp_us, None);
        assert!(parse_message(b"hello").unwrap_err().contains("PRI"));
        assert!(parse_message(b"<13>2 x").unwrap_err().contains("version"));
        assert!(
            parse_message(b"<13>1 nope h a p - - m")
                .unwrap_err()
                .contains("TIMESTAMP")
        );
        assert!(
            parse_message(b"<13>1 - h a")
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            parse_message(b"<13>1 - h a p m [x")
                .unwrap_err()
                .contains("unterminated")
        );
    }

    #[test]
    fn frames_both_framings() {
        let mut d = FrameDecoder { max: 100 };
        let mut b = BytesMut::from(&b"5 hello\nplain line\r\n3 ab"[..]);
        assert_eq!(d.decode(&mut b).unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(d.decode(&mut b).unwrap().unwrap(), &b"plain line"[..]);
        assert_eq!(d.decode(&mut b).unwrap(), None);
        b.extend_from_slice(b"c");
        assert_eq!(d.decode(&mut b).unwrap().unwrap(), &b"abc"[..]);
        let mut b = BytesMut::from(&b"500 x"[..]);
        assert!(matches!(d.decode(&mut b), Err(FrameError::TooLarge { .. })));
        let mut b = BytesMut::from(&b"12x4 y"[..]);
        assert!(matches!(d.decode(&mut b), Err(FrameError::BadCount(_))));
    }

    #[test]
    fn socs_redaction() {
        assert_eq!(redact_secrets("plain line"), None);
        assert_eq!(
            redact_secrets(
                "login password=hunter2 user=bob TOKEN: \"abc\" db=postgres://u:pw@h/db"
            )
            .unwrap(),
            "login password=[REDACTED] user=bob TOKEN: \"[REDACTED]\" db=postgres://u:[REDACTED]@h/db"
        );
    }

    #[test]
    fn logplex_body() {
        let f = split_logplex_body(b"3 abc4 defg\n").unwrap();
        assert_eq!(f, vec![&b"abc"[..], &b"defg"[..]]);
        assert!(
            split_logplex_body(b"x abc")
                .unwrap_err()
                .contains("octet count")
        );
        assert!(
            split_logplex_body(b"9 abc")
                .unwrap_err()
                .contains("claims 9")
        );
        assert!(
            split_logplex_body(b"20000 a")
                .unwrap_err()
                .contains("10240")
        );
    }
}
