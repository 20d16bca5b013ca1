pub struct Primes {
    found: Vec<u64>,
}

#[forkworker::worker]
impl Primes {
    pub fn found(&self) -> &[u64] {
        &self.found
    }
}

fn main() {}
