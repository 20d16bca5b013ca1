pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn name(&self, text: &'static str) -> String {
        text.to_owned()
    }
}

fn main() {}
