pub struct Primes;

#[forkworker::worker(crate = 42)]
impl Primes {
    pub fn ping(&self) {}
}

fn main() {}
