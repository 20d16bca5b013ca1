pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn first<'a>(&self, text: &'a str) -> String {
        text.to_owned()
    }
}

fn main() {}
