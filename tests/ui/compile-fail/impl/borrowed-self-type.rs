pub struct View<'a>(&'a [u64]);

#[forkworker::worker]
impl View<'_> {
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

fn main() {}
