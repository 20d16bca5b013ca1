// With an error in one method, the impl block and the rest of the expansion are still there:
// the user sees the one error, not a cascade of "cannot find" errors.
pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn wait(&self) {}

    pub fn is_prime(&self, n: u64) -> bool {
        n > 1
    }
}

fn main() {
    let mut primes = PrimesMediator::new("Primes", Primes);
    primes.workers(2);
    let _ = primes.is_prime(7);
    assert!(primes.inline().is_prime(7));
    Primes.wait();
}
