pub struct Primes;

#[forkworker::worker]
impl Clone for Primes {
    fn clone(&self) -> Self {
        Primes
    }
}

fn main() {}
