// `caller_id` is a name of the generated pool's connected face; a proxy named so would clash with it.
pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn caller_id(&self) {}
}

fn main() {}
