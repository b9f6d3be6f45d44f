//! The bench payload and a tiny scanner for the frames users receive.
//!
//! Every published document is `{"t":<unix nanos>,"s":<sequence>,"pad":"x…"}`
//! padded to the requested size. A received frame holds one or more
//! protocol v1 objects separated by `\n`; for each `message` object the
//! scanner pulls out `t` and `s` by looking for the literal keys, without
//! building a JSON tree or allocating. Topics and ids never contain `"`, so
//! the first `"data":` in a line is the payload's. [`document`] reads a
//! bare payload, as NATS delivers it. The searches use
//! `memchr`'s vectorised routines: at a million deliveries a second the
//! scanner is on the load generator's hot path, and every cycle it spends
//! is taken from the pods sharing its cores.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Builds the document for message `seq` sent at `unix_nanos`, padded to
/// `size` bytes (or left at its natural size if that is larger).
pub fn payload(unix_nanos: u64, seq: u64, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"t":{unix_nanos},"s":{seq},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut doc = Vec::with_capacity(head.len() + pad + 2);
    doc.extend_from_slice(head.as_bytes());
    doc.resize(head.len() + pad, b'x');
    doc.extend_from_slice(br#""}"#);
    doc
}

/// One bench message found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// When it was published, Unix nanoseconds.
    pub sent_nanos: u64,
    /// Its sequence number.
    pub seq: u64,
}

/// The bench message in one protocol line, or `None` for replies, pongs and
/// anything else.
pub fn message(line: &[u8]) -> Option<Seen> {
    const OP: &[u8] = br#"{"op":"message""#;
    const DATA: &[u8] = br#""data":"#;
    static FIND_DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(DATA));
    if !line.starts_with(OP) {
        return None;
    }
    let at = OP.len() + FIND_DATA.find(&line[OP.len()..])? + DATA.len();
    document(&line[at..])
}

/// The time and sequence number at the start of a bench document (what
/// [`payload`] made), or `None` if `bytes` does not start with one.
pub fn document(bytes: &[u8]) -> Option<Seen> {
    let rest = bytes.strip_prefix(br#"{"t":"#)?;
    let (sent_nanos, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","s":"#)?;
    let (seq, _) = number(rest)?;
    Some(Seen { sent_nanos, seq })
}

/// Splits a frame into its newline-separated objects, skipping blank lines.
pub fn lines(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', frame)
        .chain([frame.len()])
        .map(move |end| {
            let line = &frame[start..end];
            start = end + 1;
            line
        })
        .filter(|l| !l.is_empty())
}

fn number(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = text[..digits]
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some((value, &text[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_is_json() {
        let doc = payload(1_700_000_000_000_000_000, 42, 128);
        assert_eq!(doc.len(), 128);
        let value: serde_json::Value = serde_json::from_slice(&doc).expect("payload is JSON");
        assert_eq!(value["s"], 42);
    }

    #[test]
    fn splits_frames_on_newlines_and_skips_blank_lines() {
        let split: Vec<_> = lines(b"a\n\nbc\nd").collect();
        assert_eq!(split, [&b"a"[..], b"bc", b"d"]);
        assert_eq!(lines(b"").count(), 0);
        assert_eq!(lines(b"x\n").collect::<Vec<_>>(), [&b"x"[..]]);
    }

    #[test]
    fn finds_time_and_sequence_in_each_message_line() {
        let doc = String::from_utf8(payload(123, 7, 64)).expect("utf-8");
        let frame = format!(
            "{{\"op\":\"message\",\"topic\":\"b\",\"id\":\"01J\",\"data\":{doc}}}\n\
             {{\"op\":\"reply\",\"ref\":\"1\",\"ok\":true}}"
        );
        let seen: Vec<_> = lines(frame.as_bytes()).filter_map(message).collect();
        assert_eq!(
            seen,
            [Seen {
                sent_nanos: 123,
                seq: 7
            }]
        );
    }
}
