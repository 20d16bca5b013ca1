//! The message of a custom serde error, which postcard drops: its `Error::custom` keeps none
//! ("Serde Deserialization Error").
//!
//! When a decode failed that way, [`custom_message`] decodes the same bytes again through a
//! deserializer that wraps postcard's and has an error type of its own, which keeps the
//! message. The `Deserialize` impl that failed is handed the wrapper, so its
//! `D::Error::custom("...")` is ours; going back into postcard, the message is kept aside
//! (postcard's error cannot carry it) and taken at the top. Decoding that succeeds never
//! comes here: the wrapper costs nothing on the way of a call.

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

thread_local! {
    /// The first custom message that went back into the wrapped deserializer.
    static KEPT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The message of the custom error that decoding `bytes` as a `T` fails with, if it fails
/// with one.
pub(super) fn custom_message<T: DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    KEPT.with_borrow_mut(|k| *k = None);
    let mut inner = postcard::Deserializer::from_bytes(bytes);
    let result = T::deserialize(Wrap(&mut inner));
    let kept = KEPT.with_borrow_mut(Option::take);
    match result {
        Err(Error::Custom(message)) => Some(message),
        Err(Error::Inner(_)) => kept,
        Ok(_) => None,
    }
}

/// The wrapper's error: the wrapped deserializer's, or a custom one with its message.
#[derive(Debug)]
enum Error<E> {
    Inner(E),
    Custom(String),
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Inner(e) => e.fmt(f),
            Error::Custom(m) => f.write_str(m),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Error<E> {}

impl<E: fmt::Debug + fmt::Display> de::Error for Error<E> {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Custom(msg.to_string())
    }
}

/// Back into the wrapped deserializer's error: a custom message is kept aside (the first one
/// only: the innermost, the user's).
fn unwrap_err<E: de::Error>(e: Error<E>) -> E {
    match e {
        Error::Inner(e) => e,
        Error::Custom(m) => {
            let error = E::custom(&m);
            KEPT.with_borrow_mut(|k| {
                k.get_or_insert(m);
            });
            error
        }
    }
}

/// A deserializer, seed, visitor or access, wrapped.
struct Wrap<T>(T);

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
                self.0.$method($($arg,)* Wrap(visitor)).map_err(Error::Inner)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Wrap<D> {
    type Error = Error<D::Error>;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.0.$method(v).map_err(unwrap_err)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none().map_err(unwrap_err)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit().map_err(unwrap_err)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(Wrap(d)).map_err(unwrap_err)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(Wrap(d)).map_err(unwrap_err)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(Wrap(seq)).map_err(unwrap_err)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(Wrap(map)).map_err(unwrap_err)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(Wrap(data)).map_err(unwrap_err)
    }
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Wrap<T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(Wrap(d)).map_err(unwrap_err)
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Wrap<A> {
    type Error = Error<A::Error>;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0.next_element_seed(Wrap(seed)).map_err(Error::Inner)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Wrap<A> {
    type Error = Error<A::Error>;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.0.next_key_seed(Wrap(seed)).map_err(Error::Inner)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.next_value_seed(Wrap(seed)).map_err(Error::Inner)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Wrap<A> {
    type Error = Error<A::Error>;
    type Variant = Wrap<A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        self.0
            .variant_seed(Wrap(seed))
            .map(|(value, variant)| (value, Wrap(variant)))
            .map_err(Error::Inner)
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Wrap<A> {
    type Error = Error<A::Error>;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.0.unit_variant().map_err(Error::Inner)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.0
            .newtype_variant_seed(Wrap(seed))
            .map_err(Error::Inner)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .tuple_variant(len, Wrap(visitor))
            .map_err(Error::Inner)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .struct_variant(fields, Wrap(visitor))
            .map_err(Error::Inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize)]
    struct Odd(u8);

    impl<'de> Deserialize<'de> for Odd {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let n = u8::deserialize(d)?;
            if n % 2 == 1 {
                Ok(Odd(n))
            } else {
                Err(de::Error::custom(format_args!("{n} is even")))
            }
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Tuple(u8, Odd),
        Struct { a: Option<Vec<Odd>>, b: String },
    }

    #[test]
    fn the_message_is_found_at_any_depth() {
        let bytes = postcard::to_allocvec(&Odd(4)).unwrap();
        assert_eq!(custom_message::<Odd>(&bytes).as_deref(), Some("4 is even"));
        let bytes = postcard::to_allocvec(&Shape::Tuple(1, Odd(6))).unwrap();
        assert_eq!(
            custom_message::<Shape>(&bytes).as_deref(),
            Some("6 is even")
        );
        let value = Shape::Struct {
            a: Some(vec![Odd(1), Odd(8)]),
            b: "x".into(),
        };
        let bytes = postcard::to_allocvec(&value).unwrap();
        assert_eq!(
            custom_message::<(u8, Shape)>(&[&[7][..], &bytes].concat()).as_deref(),
            Some("8 is even")
        );
        let bytes = postcard::to_allocvec(&Shape::Unit).unwrap();
        assert_eq!(custom_message::<Shape>(&bytes), None, "it decodes");
        // serde's own messages come through the wrapper too.
        let unknown = custom_message::<Shape>(&[9]).unwrap();
        assert!(unknown.contains("variant index"), "{unknown}");
        // Not a custom error: nothing to say.
        assert_eq!(custom_message::<(u8, u8)>(&[1]), None);
    }
}
