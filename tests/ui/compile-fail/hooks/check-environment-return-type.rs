pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn check_environment(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

fn main() {}
