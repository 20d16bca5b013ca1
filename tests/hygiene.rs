//! The generated code needs no prelude and no imports, and does not trip over the user's names:
//! the worker below lives in a module without the prelude, where `Result`, `Vec`, `u32`, `core`,
//! `std` and even `forkworker` mean something else.

#![allow(dead_code, non_camel_case_types)]

mod no_prelude {
    #![no_implicit_prelude]

    // Names the generated code might have used unqualified.
    struct Result;
    struct Option;
    struct Ok;
    struct Err;
    struct Some;
    struct None;
    struct Vec;
    struct String;
    struct Box;
    struct Into;
    struct Deref;
    struct DerefMut;
    struct Worker;
    struct Mediator;
    struct u8;
    struct u32;
    struct str;
    mod core {}
    mod std {}
    mod forkworker {}
    mod serde {}
    mod serde_bytes {}
    mod __private {}

    pub struct Primes {
        pub calls: ::std::primitive::u64,
    }

    #[::forkworker::worker]
    impl Primes {
        pub fn sieve(
            &self,
            start: ::std::primitive::u64,
            end: ::std::primitive::u64,
        ) -> ::std::vec::Vec<::std::primitive::u64> {
            let mut found = ::std::vec::Vec::new();
            for n in start..end {
                let mut prime = n >= 2;
                for d in 2..n {
                    prime &= n % d != 0;
                }
                if prime {
                    found.push(n);
                }
            }
            found
        }

        pub fn name(&mut self, prefix: &::std::primitive::str) -> ::std::string::String {
            self.calls += 1;
            ::std::format!("{prefix}primes")
        }

        pub fn bytes(
            &self,
            data: &[::std::primitive::u8],
        ) -> ::std::vec::Vec<::std::primitive::u8> {
            ::std::borrow::ToOwned::to_owned(data)
        }

        pub fn ping(&self) {}

        pub fn setup(&mut self) {
            self.calls = 0;
        }

        pub fn check_environment(&self) -> ::std::vec::Vec<::std::string::String> {
            ::std::vec::Vec::new()
        }
    }
}

use forkworker::Worker;
use no_prelude::{Primes, PrimesArgs, PrimesMediator};

#[test]
fn the_generated_code_works_without_a_prelude() {
    assert_eq!(Primes::METHODS, ["sieve", "name", "bytes", "ping"]);
    let mut primes = PrimesMediator::new("Primes", Primes { calls: 0 });
    assert_eq!(primes.inline().sieve(1, 10), [2, 3, 5, 7]);
    assert_eq!(primes.inline().name("my "), "my primes");

    let bytes = forkworker::__private::encode_to_vec(&(&"x",)).unwrap();
    assert!(
        matches!(Primes::decode_args(1, &bytes), Ok(PrimesArgs::Name { prefix }) if prefix == "x")
    );
    let bytes = forkworker::__private::encode_to_vec(&(serde_bytes::Bytes::new(b"ab"),)).unwrap();
    assert!(
        matches!(Primes::decode_args(2, &bytes), Ok(PrimesArgs::Bytes { data }) if data == b"ab")
    );
}

/// The proxies type-check; calling them needs worker processes.
fn proxies(m: &mut PrimesMediator) -> Result<forkworker::Handle<Vec<u8>>, forkworker::CallError> {
    let _ = m.ping()?;
    m.bytes(b"data")
}
