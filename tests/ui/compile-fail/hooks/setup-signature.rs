pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn setup(&mut self, workers: usize) {
        let _ = workers;
    }
}

fn main() {}
