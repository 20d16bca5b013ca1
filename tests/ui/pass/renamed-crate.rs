// `crate = path` for a renamed dependency: nothing generated names `forkworker`.
#![deny(warnings)]

extern crate forkworker as renamed;

pub struct Echo;

#[renamed::worker(crate = ::renamed)]
impl Echo {
    pub fn echo(&self, text: &str) -> String {
        text.to_owned()
    }
}

fn main() {
    let mut echo = EchoMediator::new("Echo", Echo);
    assert_eq!(echo.inline().echo("hi"), "hi");
    assert_eq!(<Echo as renamed::Worker>::METHODS, ["echo"]);
}
