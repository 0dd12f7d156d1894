//! WebSocket frames: a client's text frame as the gateway parses it
//! (`ClientFrame::from_json`), and a server frame as the SDK parses it
//! (`ServerFrame::from_json`). Never a panic; whatever parses serialises and
//! parses back to the same JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::frames::{ClientFrame, ServerFrame};

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the gateway answers a binary frame with bad_frame).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = ClientFrame::from_json(text) {
        let json = serde_json::to_string(&frame).expect("a parsed client frame serialises");
        let again = ClientFrame::from_json(&json)
            .unwrap_or_else(|e| panic!("{json} (from {text:?}) does not parse back: {e}"));
        let json2 = serde_json::to_string(&again).expect("serialises");
        assert_eq!(json, json2, "client frame round trip of {text:?}");
    }
    if let Ok(frame) = ServerFrame::from_json(text) {
        let json = frame.to_json();
        let again = ServerFrame::from_json(&json)
            .unwrap_or_else(|e| panic!("{json} (from {text:?}) does not parse back: {e}"));
        assert_eq!(json, again.to_json(), "server frame round trip of {text:?}");
    }
});
