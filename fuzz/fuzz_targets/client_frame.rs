//! A client text frame, as the session handles it: split into lines, each
//! parsed, each answered. Checks that nothing panics and that every reply is
//! one JSON object on one line, whatever the client sent.

#![no_main]

use herald::ws::protocol::{self, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = String::from_utf8_lossy(data);
    for line in protocol::lines(&frame) {
        let reply = match protocol::parse(line) {
            Ok(request) => match request.op {
                Op::Ping => protocol::pong(request.reference),
                _ => protocol::ok(request.reference),
            },
            Err(rejection) => {
                protocol::error(rejection.reference, rejection.code, &rejection.message)
            }
        };
        assert!(!reply.contains('\n'), "a reply holds a raw newline");
        let value: serde_json::Value =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("a reply is not JSON: {e}"));
        assert!(value.is_object(), "a reply is not an object");
    }
});
