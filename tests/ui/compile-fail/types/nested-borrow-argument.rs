pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn count(&self, words: Vec<&str>) -> usize {
        words.len()
    }
}

fn main() {}
