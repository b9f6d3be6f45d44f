//! Bytes from a peer connection, as the peer port reads them: fed to
//! `wire::decode` in chunks (the first input byte sets the chunk size, as
//! TCP would split them) until the buffer runs dry or a frame is refused.
//! Checks: no panic, no frame past the size limit, nothing buffered beyond
//! one frame's worth, and every decoded frame encodes back to one that
//! decodes equal.

#![no_main]

use bytes::BytesMut;
use herald::cluster::wire;
use libfuzzer_sys::fuzz_target;

/// A small limit, so the length-prefix checks are reached.
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match wire::decode(&mut buf, MAX_FRAME) {
                Ok(Some(frame)) => {
                    let mut encoded = BytesMut::new();
                    wire::encode(&frame, &mut encoded);
                    assert!(encoded.len() <= 4 + MAX_FRAME, "decoded past the limit");
                    let again = wire::decode(&mut encoded, MAX_FRAME)
                        .expect("a re-encoded frame decodes")
                        .expect("a re-encoded frame is whole");
                    assert_eq!(frame, again, "a frame changed through encode and decode");
                    assert!(encoded.is_empty(), "re-encoding left bytes behind");
                }
                Ok(None) => break,
                // A refused stream is closed: nothing after it is read.
                Err(_) => return,
            }
        }
        assert!(
            buf.len() <= 4 + MAX_FRAME + chunk,
            "buffered more than one frame and one read"
        );
    }
});
