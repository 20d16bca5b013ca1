//! The text of a caught panic, as a worker reports a method's panic and a task its closure's,
//! and where it happened: a worker's panic hook records the location of each thread's last
//! panic (the payload caught by `catch_unwind` does not carry it).

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// Where this thread's last panic happened (`file:line:column`), since it was last taken.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs a panic hook that records where each panic happened (see [`take_location`]), then
/// runs the hook that was installed before, the user's own or the default one, as it would
/// have run. Called in a worker after `setup`, so that a hook `setup` installs runs too.
pub(crate) fn record_locations() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(at) = info.location() {
            LOCATION.with_borrow_mut(|l| *l = Some(at.to_string()));
        }
        previous(info)
    }));
}

/// Where this thread's last panic since the last call happened, if the hook of
/// [`record_locations`] saw one.
pub(crate) fn take_location() -> Option<String> {
    LOCATION.with_borrow_mut(Option::take)
}

/// A panic's message with its location, if known: `boom (at src/parse.rs:12:5)`.
pub(crate) fn with_location(message: String, location: Option<String>) -> String {
    match location {
        Some(at) => format!("{message} (at {at})"),
        None => message,
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_becomes_its_text() {
        let caught = |f: fn()| panic_message(std::panic::catch_unwind(f).unwrap_err().as_ref());
        assert_eq!(caught(|| panic!("plain")), "plain");
        assert_eq!(caught(|| panic!("formatted {}", 7)), "formatted 7");
        assert_eq!(
            caught(|| std::panic::panic_any(7u8)),
            "panic with a non-string payload"
        );
    }

    #[test]
    fn the_hook_records_where_a_panic_happened_and_runs_the_previous_hook() {
        // Per thread: other tests may panic meanwhile, through the same hooks.
        thread_local!(static RAN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| RAN.set(RAN.get() + 1)));
        record_locations();
        take_location();
        let line = line!() + 1;
        let caught = std::panic::catch_unwind(|| panic!("boom"));
        let at = take_location();
        std::panic::set_hook(default);
        let message = with_location(panic_message(caught.unwrap_err().as_ref()), at);
        assert_eq!(message, format!("boom (at {}:{line}:50)", file!()));
        assert_eq!(RAN.get(), 1, "the previous hook ran");
        assert_eq!(take_location(), None, "taken");
        assert_eq!(with_location("plain".into(), None), "plain");
    }
}
