//! Closure workers: a pool of worker processes that run one function (the seed's function
//! workers, `$this->worker('GetFactors', function ($n) { ... })`).
//!
//! [`FnMediator::new`] takes a closure of one argument; use a tuple for several. The pool, the
//! timeout, recycling, the callbacks, `wait`, `status` and the error counts are those of
//! object workers: [`FnMediator`] dereferences to [`Mediator<FnWorker<F, A, R>>`], whose
//! single method is named `"call"`.
//!
//! ```
//! use forkworker_core::closure::FnMediator;
//! use std::time::Duration;
//!
//! fn factors(mut n: u64) -> Vec<u64> {
//!     let mut found = Vec::new();
//!     let mut d = 2;
//!     while n > 1 {
//!         while n.is_multiple_of(d) {
//!             found.push(d);
//!             n /= d;
//!         }
//!         d += 1;
//!     }
//!     found
//! }
//!
//! let mut get_factors = FnMediator::new("GetFactors", |n: u64| factors(n));
//! get_factors.workers(2).timeout(Duration::from_secs(5));
//! let id = get_factors.call(1234)?;                          // returns at once
//! assert_eq!(get_factors.wait(id, Duration::from_secs(5))?, [2, 617]);
//! assert_eq!(get_factors.inline(12), [2, 2, 3]);             // in this process
//! # Ok::<(), forkworker_core::CallError>(())
//! ```

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CallError, WireError};
use crate::handle::Handle;
use crate::mediator::{Mediator, submit};
use crate::remote::{RemoteBuilder, RemotePool};
use crate::shared::{Builder, Face, Pending, SharedPool};
use crate::wire::{self, ReturnSlot};
use crate::worker::Worker;

/// The name of the single method of a closure worker, as seen in [`crate::Call::method`] and
/// in log lines.
pub const METHOD: &str = "call";

/// A [`Worker`] that runs one closure: `FnMut(A) -> R`.
///
/// Made by [`FnMediator::new`]; name it only in types, such as the
/// `Call<'_, FnWorker<F, A, R>>` handed to callbacks, where [`crate::Call::args`] decodes to
/// `A` and [`crate::Call::return_value`] to `R`.
pub struct FnWorker<F, A, R> {
    f: F,
    _types: PhantomData<fn(A) -> R>,
}

impl<F, A, R> FnWorker<F, A, R>
where
    F: FnMut(A) -> R,
{
    /// A worker running `f`.
    pub fn new(f: F) -> Self {
        FnWorker {
            f,
            _types: PhantomData,
        }
    }

    /// Runs the closure in this process.
    pub fn run(&mut self, arg: A) -> R {
        (self.f)(arg)
    }
}

fn check_method(method: u32) -> Result<(), WireError> {
    if method == 0 {
        Ok(())
    } else {
        Err(WireError::UnknownMethod(method))
    }
}

impl<F, A, R> Worker for FnWorker<F, A, R>
where
    F: FnMut(A) -> R + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Args = A;
    type Return = R;

    const METHODS: &'static [&'static str] = &[METHOD];

    fn interface() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Owned(format!(
            "fn;call({})->{}",
            std::any::type_name::<A>(),
            std::any::type_name::<R>()
        ))
    }

    fn dispatch(
        &mut self,
        method: u32,
        args: &[u8],
        ret: &mut ReturnSlot<'_>,
    ) -> Result<(), WireError> {
        check_method(method)?;
        let arg = wire::decode::<A>(args)?;
        let value = (self.f)(arg);
        ret.write(&value)
    }

    fn decode_args(method: u32, bytes: &[u8]) -> Result<A, WireError> {
        check_method(method)?;
        wire::decode(bytes)
    }

    fn decode_return(method: u32, bytes: &[u8]) -> Result<R, WireError> {
        check_method(method)?;
        wire::decode(bytes)
    }
}

/// A pool of worker processes running one closure: the mediator of a closure worker.
///
/// [`FnMediator::call`] queues a call and returns its [`Handle`] at once;
/// [`FnMediator::inline`] runs the closure in this process. Everything else (`workers`,
/// `timeout`, `on_return`, `wait`, `status`, `errors`, ...) is [`Mediator`]'s, which this
/// dereferences to.
///
/// The closure is inherited by every worker through `fork`: whatever it captured is there in
/// each worker, as it was when the worker was forked. A closure that mutates its captures
/// mutates the copy of the worker that runs it.
///
/// Arguments and returns go through postcard: a `Vec<u8>` is encoded byte by byte, so wrap
/// large byte payloads in `serde_bytes::ByteBuf`.
///
/// ```
/// use forkworker_core::closure::FnMediator;
/// use forkworker_core::CallStatus;
/// use std::time::Duration;
///
/// // Several arguments: one tuple.
/// let mut add = FnMediator::new("Add", |(a, b): (u64, u64)| a + b);
/// add.on_return(|call, log| {
///     let (a, b) = call.args().unwrap();
///     let sum = call.return_value().unwrap().unwrap();
///     log.info(format_args!("{a} + {b} = {sum}"));
///     assert_eq!(call.status(), CallStatus::Returned);
/// });
/// drop(add.call((2, 3))?); // the call runs on, for the callback
/// while add.pending() > 0 {
///     add.poll();
///     std::thread::sleep(Duration::from_millis(1));
/// }
/// # Ok::<(), forkworker_core::CallError>(())
/// ```
pub struct FnMediator<F, A, R>
where
    F: FnMut(A) -> R + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    inner: Mediator<FnWorker<F, A, R>>,
}

impl<F, A, R> FnMediator<F, A, R>
where
    F: FnMut(A) -> R + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    /// A pool named `alias` (in log lines and in the name of the shared-memory segment)
    /// running `f`. No process starts before the first call (or [`Mediator::start`]).
    pub fn new(alias: impl Into<String>, f: F) -> Self {
        FnMediator {
            inner: Mediator::new(alias, FnWorker::new(f)),
        }
    }

    /// Queues a call of the closure with `arg` for a worker process and returns its handle at
    /// once. Pass the handle to [`Mediator::wait`] for the typed result; with
    /// [`Mediator::on_return`] installed, the callback sees it too (drop the handle if the
    /// callback is all you need: the call still runs).
    ///
    /// # Errors
    /// As the proxy methods of object workers: [`CallError::TooLarge`] when the encoded
    /// argument cannot fit in the shared memory ([`Mediator::malloc`]), [`CallError::Wire`]
    /// when it cannot be encoded, [`CallError::Pool`] or [`CallError::Environment`] when the
    /// pool cannot start.
    pub fn call(&mut self, arg: A) -> Result<Handle<R>, CallError> {
        submit(&mut self.inner, 0, &arg, wire::decode::<R>)
    }

    /// Runs the closure in this process, blocking: no fork, no shared memory, no timeout and
    /// no callbacks. It runs on the parent's copy of the closure.
    pub fn inline(&mut self, arg: A) -> R {
        self.inner.inline().run(arg)
    }

    /// The mediator itself.
    pub fn into_inner(self) -> Mediator<FnWorker<F, A, R>> {
        self.inner
    }
}

impl<F, A, R> Deref for FnMediator<F, A, R>
where
    F: FnMut(A) -> R + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Target = Mediator<FnWorker<F, A, R>>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<F, A, R> DerefMut for FnMediator<F, A, R>
where
    F: FnMut(A) -> R + 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// A shared pool running one closure: [`FnMediator`]'s shared face, as `XPool` is the
/// generated mediator's. `Send + Sync + Clone`, driven by a thread of its own; [`FnPool::call`]
/// returns a [`Pending`] handle to await or wait for. It dereferences to
/// [`SharedPool<FnWorker<F, A, R>>`].
///
/// ```
/// use forkworker_core::closure::FnPool;
/// use std::time::Duration;
///
/// let square = FnPool::builder("Square", |n: u64| n * n)
///     .workers(2)
///     .timeout(Duration::from_secs(5))
///     .start()?;
/// let calls: Vec<_> = (1..=3).map(|n| square.call(n)).collect();
/// let squares: Vec<u64> = calls.into_iter().map(|c| c.wait()).collect::<Result<_, _>>()?;
/// assert_eq!(squares, [1, 4, 9]);
/// assert_eq!(square.inline(4), 16); // in this process
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FnPool<F, A, R, B = SharedPool<FnWorker<F, A, R>>>
where
    F: FnMut(A) -> R + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    inner: B,
    types: PhantomData<fn(A) -> (F, R)>,
}

/// A connected [`FnPool`]: its calls run on the hosts serving its alias (see
/// [`FnPool::remote`]).
pub type FnRemote<F, A, R> = FnPool<F, A, R, RemotePool<FnWorker<F, A, R>>>;

impl<F, A, R> FnPool<F, A, R>
where
    F: FnMut(A) -> R + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// A builder for a shared pool named `alias` (in log lines) running `f`: its settings and
    /// callbacks, then [`Builder::start`] (or [`Builder::serve`], for the calls of other
    /// machines).
    pub fn builder(alias: impl Into<String>, f: F) -> Builder<FnWorker<F, A, R>, Self> {
        crate::shared::builder(alias, FnWorker::new(f), |inner| FnPool {
            inner,
            types: PhantomData,
        })
    }

    /// A builder for a pool whose calls run on the hosts serving pool `alias` through Redis
    /// (see [`RemotePool`]): its settings, then `connect(url)`. The closure's type does not
    /// matter on this side (name it `fn(A) -> R`): only `A` and `R` must match the hosts'.
    pub fn remote(alias: impl Into<String>) -> RemoteBuilder<FnWorker<F, A, R>, FnRemote<F, A, R>> {
        crate::remote::remote_builder(alias, |inner| FnPool {
            inner,
            types: PhantomData,
        })
    }

    /// Runs the closure in this process, blocking, on the parent's copy of it (behind the
    /// pool's lock: see [`SharedPool::inline`]).
    pub fn inline(&self, arg: A) -> R {
        self.inner.inline().run(arg)
    }
}

impl<F, A, R, B> FnPool<F, A, R, B>
where
    F: FnMut(A) -> R + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
    B: Face<FnWorker<F, A, R>>,
{
    /// Queues a call of the closure with `arg` and returns its handle at once: await it, or
    /// `wait()` for it; dropping it cancels the call (see [`Pending`]).
    pub fn call(&self, arg: A) -> Pending<R> {
        crate::shared::submit(&self.inner, 0, &arg, wire::decode::<R>)
    }
}

impl<F, A, R, B: Clone> Clone for FnPool<F, A, R, B>
where
    F: FnMut(A) -> R + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn clone(&self) -> Self {
        FnPool {
            inner: self.inner.clone(),
            types: PhantomData,
        }
    }
}

impl<F, A, R, B> Deref for FnPool<F, A, R, B>
where
    F: FnMut(A) -> R + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Target = B;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Repeat = (u64, String);

    fn worker() -> FnWorker<impl FnMut(Repeat) -> Vec<String>, Repeat, Vec<String>> {
        FnWorker::new(|(n, s): Repeat| vec![s; n as usize])
    }

    fn run<W: Worker>(w: &mut W, method: u32, args: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut buf = vec![0u8; 1024];
        let mut slot = ReturnSlot::new(&mut buf);
        w.dispatch(method, args, &mut slot)?;
        match slot.into_written() {
            (wire::Written::Inline(n), inline) => Ok(inline[..n].to_vec()),
            (wire::Written::InSlot(n), _) => Ok(buf[..n].to_vec()),
            (wire::Written::Spilled(v), _) => Ok(v),
            (wire::Written::Nothing, _) => panic!("nothing written"),
        }
    }

    #[test]
    fn dispatch_decodes_the_argument_and_encodes_the_return() {
        let mut w = worker();
        let args = wire::encode_to_vec(&(2u64, "ab".to_owned())).unwrap();
        let ret = run(&mut w, 0, &args).unwrap();
        assert_eq!(decode_return(&ret), vec!["ab".to_owned(), "ab".to_owned()]);
        assert_eq!(
            decode_args(&args),
            Ok((2, "ab".to_owned())),
            "the parent decodes the arguments as the worker did"
        );
        assert_eq!(w.run((1, "c".into())), ["c"]);
    }

    fn decode_return(bytes: &[u8]) -> Vec<String> {
        <FnWorker<fn(Repeat) -> Vec<String>, Repeat, Vec<String>> as Worker>::decode_return(
            0, bytes,
        )
        .unwrap()
    }

    fn decode_args(bytes: &[u8]) -> Result<(u64, String), WireError> {
        <FnWorker<fn(Repeat) -> Vec<String>, Repeat, Vec<String>> as Worker>::decode_args(0, bytes)
    }

    #[test]
    fn a_wrong_method_or_bad_bytes_are_wire_errors() {
        let mut w = worker();
        let args = wire::encode_to_vec(&(2u64, "ab".to_owned())).unwrap();
        assert_eq!(run(&mut w, 1, &args), Err(WireError::UnknownMethod(1)));
        assert!(matches!(
            run(&mut w, 0, &args[..1]),
            Err(WireError::Decode { .. })
        ));
        assert!(matches!(
            run(&mut w, 0, &[args.as_slice(), &[0]].concat()),
            Err(WireError::TrailingBytes { .. })
        ));
        assert!(decode_args(&[]).is_err());
    }

    #[test]
    fn the_mediator_runs_inline_without_forking_and_keeps_state() {
        let mut total = 0u64;
        let mut m = FnMediator::new("Sum", move |n: u64| {
            total += n;
            total
        });
        assert_eq!(m.inline(2), 2);
        assert_eq!(m.inline(3), 5);
        assert_eq!(m.alias(), "Sum");
        assert!(m.pids().is_empty(), "inline forks nothing");
        assert_eq!(
            <FnWorker<fn(u8) -> u8, u8, u8> as Worker>::METHODS,
            ["call"]
        );
    }
}
