pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn consume(self: Box<Self>) -> u64 {
        0
    }
}

fn main() {}
