pub struct Primes;

#[forkworker::worker(crate = ::forkworker, crate = ::forkworker)]
impl Primes {
    pub fn ping(&self) {}
}

fn main() {}
