// A connected pool has no value of its own: its `inline()` does not exist, so calling it is a
// compile error (its calls run on the hosts).
pub struct Parser;

#[forkworker::worker]
impl Parser {
    pub fn parse(&self, n: u64) -> u64 {
        n
    }
}

fn main() {
    let pool = ParserPool::remote("Parser")
        .connect("redis://127.0.0.1:1")
        .unwrap();
    let _ = pool.parse(1);
    let _ = pool.inline();
}
