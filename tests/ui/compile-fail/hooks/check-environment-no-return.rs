pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn check_environment(&self) {}
}

fn main() {}
