pub trait Speak {}

#[forkworker::worker]
impl dyn Speak {
    pub fn ping(&self) {}
}

fn main() {}
