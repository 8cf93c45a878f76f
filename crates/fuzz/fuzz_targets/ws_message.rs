//! WebSocket client messages: any text parses to a message or an error
//! frame, never a panic; an error never amplifies its input; every channel
//! name parses to a channel or an error, and a parsed channel's name parses
//! back to the same channel.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use flowmeter::event::SchemaRegistry;
use flowmeter::hub::ws::ClientMsg;
use flowmeter::processor::ProcessorRegistry;
use flowmeter::view::Views;
use libfuzzer_sys::fuzz_target;

/// The repository's views (processors/*_view.toml), loaded once.
fn views() -> &'static Views {
    static VIEWS: OnceLock<Views> = OnceLock::new();
    VIEWS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let schemas = SchemaRegistry::load(&root.join("schemas")).expect("schemas/");
        let processors =
            ProcessorRegistry::load(&root.join("processors"), &schemas).expect("processors/");
        Views::load(&root.join("processors"), &schemas, &processors).expect("views")
    })
}

fn check_channel(name: &str) {
    match views().channel(name) {
        Ok(c) => {
            let again = views().channel(c.name()).expect("a channel's own name parses");
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
