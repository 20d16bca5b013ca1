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
