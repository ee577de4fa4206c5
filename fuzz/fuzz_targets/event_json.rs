//! Any bytes as a transaction event: parsed and validated, or refused with a
//! reason, never a panic; an accepted event round-trips through its JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_core::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::from_json(data) {
        let again = Event::from_json(&event.to_json()).expect("a valid event's own JSON must parse");
        assert_eq!(event, again);
    }
});
