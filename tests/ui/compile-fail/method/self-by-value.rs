pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn consume(self) -> u64 {
        0
    }
}

fn main() {}
