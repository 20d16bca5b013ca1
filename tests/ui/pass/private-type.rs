// A private worker type with private argument and return types: the generated public items
// raise no warning.
#![deny(warnings)]

mod inner {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Point {
        x: i32,
        y: i32,
    }

    struct Hidden;

    #[forkworker::worker]
    impl Hidden {
        pub fn flip(&self, p: Point) -> Point {
            Point { x: p.y, y: p.x }
        }
    }

    pub fn run() {
        let mut hidden = HiddenMediator::new("Hidden", Hidden);
        assert_eq!(
            hidden.inline().flip(Point { x: 1, y: 2 }),
            Point { x: 2, y: 1 }
        );
    }
}

fn main() {
    inner::run();
}
