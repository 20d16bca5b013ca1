pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn check_environment(&mut self) -> Vec<String> {
        Vec::new()
    }
}

fn main() {}
