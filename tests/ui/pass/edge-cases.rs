// Shapes the macro accepts beyond the common case.
#![deny(warnings)]

use std::borrow::Cow;

use forkworker::Worker;

#[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
pub struct Point {
    x: i32,
    y: i32,
}

// `Self` in argument and return types means the worker type, not the generated items.
#[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
pub struct Cell(u32);

#[forkworker::worker]
impl Cell {
    pub fn replace(&mut self, other: Self) -> Self {
        std::mem::replace(self, other)
    }

    pub fn same(&self, other: &Self) -> bool {
        self == other
    }

    pub fn many(&self, cells: &[Self]) -> Vec<Self> {
        cells.to_vec()
    }

    /// `self: &Self` is `&self`; `mut` bindings and raw names are fine; argument names may be
    /// those of the generated locals.
    pub fn r#type(self: &Self, mut args: u32, ret: u32, method: u32, __bytes: u32) -> u32 {
        args += ret + method + __bytes;
        args + self.0
    }

    pub fn point(&self, p: &Point, text: Cow<'static, str>) -> Option<Point> {
        (text == "yes").then(|| p.clone())
    }

    pub fn slices(&self, a: &[u8], b: &Vec<u8>, c: Vec<u8>, d: &Vec<u16>) -> Vec<u8> {
        [a, &b[..], &c[..]]
            .concat()
            .into_iter()
            .chain(d.iter().map(|&x| x as u8))
            .collect()
    }
}

// A concrete instance of a generic type.
pub struct Wrapper<T>(T);

#[forkworker::worker]
impl Wrapper<u32> {
    pub fn get(&self) -> u32 {
        self.0
    }
}

// A worker with nothing to proxy.
pub struct Empty;

#[forkworker::worker]
impl Empty {
    pub fn new() -> Self {
        Empty
    }

    pub(crate) fn not_proxied(&self) {}
}

fn main() {
    assert_eq!(
        Cell::METHODS,
        ["replace", "same", "many", "type", "point", "slices"]
    );
    let mut cell = CellMediator::new("Cell", Cell(1));
    assert_eq!(cell.inline().replace(Cell(2)), Cell(1));
    assert_eq!(cell.inline().r#type(1, 1, 1, 1), 6);
    assert_eq!(
        cell.inline().slices(&[1], &vec![2], vec![3], &vec![4]),
        [1, 2, 3, 4]
    );

    let bytes = forkworker::__private::encode_to_vec(&(&Cell(5),)).unwrap();
    assert!(
        matches!(Cell::decode_args(1, &bytes).unwrap(), CellArgs::Same { other } if other == Cell(5))
    );
    let bytes = forkworker::__private::encode_to_vec(&(&1u32, &2u32, &3u32, &4u32)).unwrap();
    assert!(matches!(
        Cell::decode_args(3, &bytes).unwrap(),
        CellArgs::Type {
            args: 1,
            ret: 2,
            method: 3,
            __bytes: 4
        }
    ));

    let mut wrapper = WrapperMediator::new("Wrapper", Wrapper(7u32));
    assert_eq!(wrapper.inline().get(), 7);

    let mut empty = EmptyMediator::new("Empty", Empty::new());
    empty.inline().not_proxied();
    assert!(Empty::METHODS.is_empty());
    assert!(Empty::decode_args(0, &[]).is_err());
}
