//! The `#[worker]` attribute of [forkworker](https://docs.rs/forkworker). Use it through the
//! `forkworker` crate, which re-exports it; this crate is an implementation detail.
//!
//! The macro is split by phase: `attr.rs` reads the attribute's arguments, `ast.rs` reads the
//! impl block into a model, `valid.rs` holds every check, `expand.rs` writes the code, and
//! `fallback.rs` decides what goes out when there are errors (collected in `ctxt.rs`).
#![deny(missing_docs)]

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod reserved;
mod valid;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Runs the public methods of a type in a pool of forked worker processes.
///
/// ```ignore
/// use forkworker::prelude::*;
/// use std::time::Duration;
///
/// pub struct Primes;
///
/// #[forkworker::worker]
/// impl Primes {
///     /// Every prime in `start..end`.
///     pub fn sieve(&self, start: u64, end: u64) -> Vec<u64> { /* ... */ }
/// }
///
/// let mut primes = PrimesMediator::new("PrimeNumbers", Primes);
/// primes.workers(4);                                    // a `Mediator<Primes>` method
/// let call: Handle<Vec<u64>> = primes.sieve(1000, 2000)?; // returns at once
/// let found = primes.wait(call, Duration::from_secs(5))?;
/// let direct = primes.inline().sieve(1, 100);           // in this process
/// ```
///
/// On an inherent impl block `impl Primes { ... }`, next to the block itself, the macro writes:
///
/// - `PrimesMediator`: the parent's handle on the pool. It has `new(alias, value)`, one proxy
///   per proxied method (same name, same arguments, the method's docs, returning
///   `Result<Handle<R>, CallError>` at once), and dereferences to `Mediator<Primes>` for
///   everything else.
/// - `impl Worker for Primes`, with `PrimesArgs` and `PrimesReturn`: one variant per proxied
///   method, holding its decoded arguments and its return value.
///
/// **Proxied** are the `pub fn`s taking `&self` or `&mut self`. Others are left alone: private
/// or `pub(crate)` methods, and functions without `self` such as `new`. Three names are
/// **lifecycle hooks** instead, forwarded to by the `Worker` impl and not proxied:
/// `fn setup(&mut self)` (in each worker after the fork), `fn teardown(&mut self)` (in each
/// worker before it exits) and `fn check_environment(&self) -> Vec<String>` (in the parent
/// before any fork; each string is a problem that stops the pool).
///
/// Arguments and return values cross the process boundary with serde, so they must be
/// `Serialize + DeserializeOwned`. An argument may be borrowed as a whole (`&T`, `&[T]`,
/// `&str`); the worker decodes `T`, `Vec<T>`, `String`. `Vec<u8>` and `&[u8]` move as a block
/// of bytes.
///
/// A proxied method may not be generic, `async` or `unsafe`, take `self` by value, take
/// `&mut` or `impl Trait` arguments, use patterns as arguments, or return a borrow; and it may
/// not be named like a method of the mediator (`workers`, `wait`, `new`, ...). Each of these is
/// a compile error at the offending token, all of them reported in one compile.
///
/// `#[worker(crate = path)]` sets the path to forkworker, for a renamed dependency or a crate
/// re-exporting it: `#[forkworker::worker(crate = ::my_forkworker)]`.
#[proc_macro_attribute]
pub fn worker(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::worker(args.into(), input.into()).into()
}
