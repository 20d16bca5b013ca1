pub struct Sieve<T>(T);

#[forkworker::worker]
impl<T: 'static> Sieve<T> {
    pub fn ping(&self) {}
}

fn main() {}
