pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn teardown(&mut self) -> bool {
        true
    }
}

fn main() {}
