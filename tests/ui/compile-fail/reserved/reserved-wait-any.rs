// `wait_any` is a public method of the generated mediator; a proxy named so would hide it.
pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn wait_any(&self) {}
}

fn main() {}
