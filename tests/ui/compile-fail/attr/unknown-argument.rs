pub struct Primes;

#[forkworker::worker(workers = 4)]
impl Primes {
    pub fn ping(&self) {}
}

fn main() {}
