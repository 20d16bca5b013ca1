pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn fill(&self, out: &mut Vec<u64>) {
        out.push(2);
    }
}

fn main() {}
