//! `Worker::interface` and `Worker::fingerprint`: what two builds must share to take each
//! other's calls (for pools across machines). Plain tests: nothing is forked.

use forkworker::Worker;
use forkworker::closure::FnWorker;

mod a {
    pub struct Parser;
    #[forkworker::worker]
    impl Parser {
        pub fn parse(&self, input: &str, strict: bool) -> Result<Vec<u64>, String> {
            let _ = (input, strict);
            Ok(Vec::new())
        }
        pub fn version(&self) -> u32 {
            1
        }
    }
}

/// The same wire: other argument names, `String` for `&str`, a body that differs.
mod same {
    pub struct Parser;
    #[forkworker::worker]
    impl Parser {
        pub fn parse(&self, text: String, strict_mode: bool) -> Result<Vec<u64>, String> {
            let _ = (text, strict_mode);
            Err("other body".into())
        }
        pub fn version(&self) -> u32 {
            2
        }
    }
}

/// Another argument type.
mod other_type {
    pub struct Parser;
    #[forkworker::worker]
    impl Parser {
        pub fn parse(&self, input: &str, strict: u8) -> Result<Vec<u64>, String> {
            let _ = (input, strict);
            Ok(Vec::new())
        }
        pub fn version(&self) -> u32 {
            1
        }
    }
}

/// The same methods in another order: method indices differ on the wire.
mod reordered {
    pub struct Parser;
    #[forkworker::worker]
    impl Parser {
        pub fn version(&self) -> u32 {
            1
        }
        pub fn parse(&self, input: &str, strict: bool) -> Result<Vec<u64>, String> {
            let _ = (input, strict);
            Ok(Vec::new())
        }
    }
}

#[test]
fn the_interface_is_the_wire_view_of_the_methods() {
    assert_eq!(
        <a::Parser as Worker>::interface(),
        "Parser;parse(String,bool)->Result<Vec<u64>,String>;version()->u32"
    );
}

#[test]
fn builds_with_the_same_wire_share_a_fingerprint_and_others_do_not() {
    let fp = <a::Parser as Worker>::fingerprint();
    assert_eq!(fp, <same::Parser as Worker>::fingerprint());
    assert_ne!(fp, <other_type::Parser as Worker>::fingerprint());
    assert_ne!(fp, <reordered::Parser as Worker>::fingerprint());
}

#[test]
fn closure_workers_are_told_apart_by_their_types() {
    type U = FnWorker<fn(u64) -> u64, u64, u64>;
    type S = FnWorker<fn(String) -> u64, String, u64>;
    assert_ne!(U::fingerprint(), S::fingerprint());
    assert_eq!(U::fingerprint(), U::fingerprint());
}
