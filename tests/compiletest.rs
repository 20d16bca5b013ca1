//! The compile-time behaviour of `#[forkworker::worker]`: what it accepts (`tests/ui/pass`) and
//! the errors it gives, one file per rejected case (`tests/ui/compile-fail`); and the edges of
//! the public surface, what a user's code cannot reach (`tests/ui/compile-fail/surface`).
//!
//! The `.stderr` files hold rustc's exact output, which changes between compiler versions; the
//! toolchain is pinned in `rust-toolchain.toml`. After a deliberate change of a message, run
//! `TRYBUILD=overwrite cargo test --test compiletest` and read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/compile-fail/**/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
