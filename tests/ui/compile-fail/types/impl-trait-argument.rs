pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn sum(&self, numbers: impl IntoIterator<Item = u64>) -> u64 {
        numbers.into_iter().sum()
    }
}

fn main() {}
