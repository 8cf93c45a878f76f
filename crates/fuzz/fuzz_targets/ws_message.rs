//! WebSocket client messages: any text parses to a message or an error
//! frame, never a panic; an error never amplifies its input; every channel
//! name parses to a channel or an error, and a parsed channel's name parses
//! back to the same channel.
#![no_main]

use flowmeter::hub::ws::ClientMsg;
use flowmeter::hub::Channel;
use libfuzzer_sys::fuzz_target;

fn check_channel(name: &str) {
    match Channel::parse(name) {
        Ok(c) => {
            let again = Channel::parse(c.name()).expect("a channel's own name parses");
            assert_eq!(again, c);
        }
        Err(e) => assert!(e.len() <= 1024, "channel error of {} bytes", e.len()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMsg::parse(text) {
        Ok(ClientMsg::Subscribe { channels, .. }) | Ok(ClientMsg::Unsubscribe { channels }) => {
            for c in &channels {
                check_channel(c);
            }
        }
        Ok(ClientMsg::Ping { .. }) => {}
        Err(e) => assert!(
            e.len() <= 2 * text.len() + 512,
            "an error of {} bytes for {} bytes of input",
            e.len(),
            text.len()
        ),
    }
    check_channel(text);
});
