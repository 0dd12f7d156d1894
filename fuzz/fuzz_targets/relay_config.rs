//! The relay file (`relay.json`, `--relay-config`): any text is a valid
//! configuration or a typed error naming the problem; a file that parses
//! serialises and parses back equal (one type for the operator's writer
//! and the gateway's reader); every host the gateway accepts prints in a
//! form it accepts again as the same host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_core::relay::RelayFile;
use switchboard_gateway::relay::{RelayConfig, RelayHost};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = serde_json::from_str::<RelayFile>(text) {
        let json = serde_json::to_string(&file).expect("a relay file serialises");
        let back: RelayFile = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
        assert_eq!(back, file);
    }
    for key in [None, Some("appid.keyid:secret".to_string())] {
        if let Ok(cfg) = RelayConfig::parse(text, key) {
            for h in cfg.hosts().iter().chain(cfg.fallback_hosts()) {
                let shown = h.to_string();
                let again: RelayHost = shown
                    .parse()
                    .unwrap_or_else(|e| panic!("host {shown:?} does not parse back: {e}"));
                assert_eq!(&again, h, "{shown}");
            }
        }
    }
    // A host alone, as the file's lists hold them.
    if let Ok(h) = text.parse::<RelayHost>() {
        let shown = h.to_string();
        assert_eq!(
            shown.parse::<RelayHost>().as_ref(),
            Ok(&h),
            "{text:?} → {shown}"
        );
    }
});
