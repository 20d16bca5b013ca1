// A worker that is not `Send` keeps its mediator, but has no shared pool: its pool's thread
// would own the value. The error says what is missing, at the call that needs it.
use std::rc::Rc;

pub struct Counter {
    seen: Rc<u64>,
}

#[forkworker::worker]
impl Counter {
    pub fn count(&self) -> u64 {
        *self.seen
    }
}

fn main() {
    // The mediator is fine.
    let _mediator = CounterMediator::new("Counter", Counter { seen: Rc::new(0) });
    // The pool is not.
    let _pool = CounterPool::builder("Counter", Counter { seen: Rc::new(0) });
}
