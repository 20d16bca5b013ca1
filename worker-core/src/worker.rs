//! The [`Worker`] trait: what `#[forkworker::worker]` implements for a user's type.
//!
//! Users do not implement it by hand; the macro writes it from the impl block. It is the only
//! contract between the generated code and the runtime.

use crate::error::WireError;
use crate::wire::ReturnSlot;

/// A type whose public methods run in forked worker processes.
///
/// Implemented by `#[forkworker::worker]`. The value is built in the parent and inherited by
/// every worker through `fork`, so any state it holds is there in each worker from the start.
pub trait Worker: Sized + 'static {
    /// The arguments of one call, decoded: an enum with one variant per method (`{Type}Args`).
    type Args;
    /// The return value of one call, decoded: an enum with one variant per method
    /// (`{Type}Return`).
    type Return;

    /// The names of the proxied methods; a method index is a position in this list.
    const METHODS: &'static [&'static str];

    /// The interface the methods present on the wire, as text: the type's name and, for each
    /// method in order, its name, the types its arguments are encoded as and its return type
    /// (as written in the source, without spaces). Two builds whose interfaces differ cannot
    /// take each other's calls; see [`Worker::fingerprint`].
    fn interface() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Owned(Self::METHODS.join(";"))
    }

    /// A 64-bit fingerprint (FNV-1a) of [`Worker::interface`]: equal for two builds whose
    /// methods, their order and the types as written are the same. A host that receives a
    /// call from another machine can refuse one made against another interface instead of
    /// running the wrong method. It sees names, not definitions: a type changed behind the
    /// same name keeps the fingerprint (its decoding then fails with a `WireError`).
    fn fingerprint() -> u64 {
        fnv1a(Self::interface().as_bytes())
    }

    /// Runs in each worker process right after the fork, before its first call.
    fn setup(&mut self) {}

    /// Runs in a worker process before it exits normally.
    fn teardown(&mut self) {}

    /// Runs in the parent before any fork. Each string is a problem that stops the pool from
    /// starting; an empty list means the environment is fine.
    fn check_environment(&self) -> Vec<String> {
        Vec::new()
    }

    /// Worker side: decodes the arguments of method `method`, runs it, and writes its return
    /// value into `ret`.
    fn dispatch(
        &mut self,
        method: u32,
        args: &[u8],
        ret: &mut ReturnSlot<'_>,
    ) -> Result<(), WireError>;

    /// Parent side: decodes the encoded arguments of a call to method `method`.
    fn decode_args(method: u32, bytes: &[u8]) -> Result<Self::Args, WireError>;

    /// Parent side: decodes the encoded return value of a call to method `method`.
    fn decode_return(method: u32, bytes: &[u8]) -> Result<Self::Return, WireError>;
}

/// 64-bit FNV-1a of `bytes`: a fingerprint, not a cryptographic hash.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a_matches_its_reference_values() {
        // From the FNV reference test suite.
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
