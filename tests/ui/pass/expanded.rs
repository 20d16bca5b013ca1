// The expansion snapshot of forkworker-macros compiles as it stands.
#![allow(dead_code)]

include!("../../../worker-macros/tests/expand/primes.expanded.rs");

fn main() {
    let mut primes = PrimesMediator::new("Primes", Primes::new());
    assert_eq!(primes.inline().sieve(1, 10), [2, 3, 5, 7]);
}
