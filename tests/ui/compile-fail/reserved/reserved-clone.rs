// `clone` is a name of the generated shared pool's; a proxy named so would hide it.
pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn clone(&self) {}
}

fn main() {}
