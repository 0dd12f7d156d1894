//! Ably publish bodies (`POST /channels/{name}/messages`): any bytes are a
//! list of 1 to 100 messages or a typed 40000; a parsed message serialises
//! and parses back equal (the stored body is that serialisation); its id
//! always becomes a valid idempotency key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::ably::{MAX_BATCH, msg_id_of, parse_publish};

fuzz_target!(|data: &[u8]| {
    let Ok(list) = parse_publish(data) else {
        return;
    };
    assert!((1..=MAX_BATCH).contains(&list.len()));
    for m in &list {
        let text = serde_json::to_string(m).expect("a parsed message serialises");
        let back = parse_publish(text.as_bytes())
            .unwrap_or_else(|e| panic!("{text} does not parse back: {e:?}"));
        assert_eq!(back.as_slice(), std::slice::from_ref(m), "{text}");
        if let Some(id) = &m.id {
            let key = msg_id_of(id);
            assert!(
                key.as_str()
                    .parse::<switchboard_proto::ids::MsgId>()
                    .is_ok()
            );
            assert_eq!(key, msg_id_of(id), "stable");
        }
    }
});
