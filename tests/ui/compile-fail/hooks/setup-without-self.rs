pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn setup() {}
}

fn main() {}
