//! The wire format: postcard, written straight into shared memory.
//!
//! Arguments are encoded by the parent as a tuple of borrows and decoded by the worker as a
//! tuple of owned values; the two have the same postcard encoding. Byte payloads (`Vec<u8>`,
//! `&[u8]`) are wrapped by the generated code in `serde_bytes`, so they move as one block.

use serde::Serialize;
use serde::de::DeserializeOwned;

mod custom;

use crate::channel::INLINE_RET;
use crate::error::WireError;

/// Encodes `value` into `buf`, returning the number of bytes written.
///
/// `Ok(None)` means the buffer was too small.
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> Result<Option<usize>, WireError> {
    match postcard::to_slice(value, buf) {
        Ok(used) => Ok(Some(used.len())),
        Err(postcard::Error::SerializeBufferFull) => Ok(None),
        Err(e) => Err(WireError::Encode {
            what: std::any::type_name::<T>(),
            reason: e.to_string(),
        }),
    }
}

/// Encodes `value` into a new vector.
pub fn encode_to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_allocvec(value).map_err(|e| WireError::Encode {
        what: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// The encoded arguments of a call to `method`, on the heap (a call waiting for room, a call
/// through Redis).
pub(crate) fn encode_call<A: Serialize + ?Sized>(
    args: &A,
    method: &'static str,
) -> Result<Vec<u8>, crate::error::CallError> {
    encode_to_vec(args).map_err(|source| crate::error::CallError::Wire { method, source })
}

/// The encoded size of `value`, without allocating.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, WireError> {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).map_err(|e| {
        WireError::Encode {
            what: std::any::type_name::<T>(),
            reason: e.to_string(),
        }
    })
}

/// Decodes a `T` that must use every byte of `bytes`.
///
/// A custom error of `T`'s `Deserialize` (`D::Error::custom("...")`) keeps its message in
/// [`WireError::Decode`]'s reason.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let what = std::any::type_name::<T>();
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(WireError::TrailingBytes {
            what,
            extra: rest.len(),
        }),
        Err(e) => Err(WireError::Decode {
            what,
            reason: match e {
                // Postcard drops the message: decode again to find it.
                postcard::Error::SerdeDeCustom => custom::custom_message::<T>(bytes),
                _ => None,
            }
            .unwrap_or_else(|| e.to_string()),
        }),
    }
}

/// Where a worker writes a method's return value: a few bytes carried in the answer itself,
/// or a reservation in shared memory, with a private spill buffer when the value is larger
/// than the reservation.
pub struct ReturnSlot<'a> {
    inline: [u8; INLINE_RET],
    slot: &'a mut [u8],
    written: Written,
}

/// What a [`ReturnSlot`] holds after the method returned.
pub(crate) enum Written {
    Nothing,
    /// The first n bytes of the inline buffer.
    Inline(usize),
    InSlot(usize),
    Spilled(Vec<u8>),
}

impl<'a> ReturnSlot<'a> {
    pub(crate) fn new(slot: &'a mut [u8]) -> Self {
        ReturnSlot {
            inline: [0; INLINE_RET],
            slot,
            written: Written::Nothing,
        }
    }

    /// What was written, and the inline buffer.
    pub(crate) fn into_written(self) -> (Written, [u8; INLINE_RET]) {
        (self.written, self.inline)
    }

    /// Encodes the return value: into the answer when it is small, else into shared memory
    /// when it fits, else into a spill buffer that the runtime copies once the parent has
    /// made room.
    pub fn write<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WireError> {
        if let Some(n) = encode_into(value, &mut self.inline)? {
            self.written = Written::Inline(n);
            return Ok(());
        }
        self.written = match encode_into(value, self.slot)? {
            Some(n) => Written::InSlot(n),
            None => Written::Spilled(encode_to_vec(value)?),
        };
        Ok(())
    }
}

/// Encoded arguments, serialized as they are: postcard writes a tuple of bytes without a
/// length, byte by byte.
pub(crate) struct Raw<'a>(pub(crate) &'a [u8]);

impl serde::Serialize for Raw<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_encode_as_themselves() {
        let encoded = encode_to_vec(&(7u64, "text", vec![1u32, 300])).unwrap();
        assert_eq!(encode_to_vec(&Raw(&encoded)).unwrap(), encoded);
        assert_eq!(encode_to_vec(&Raw(&[])).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn borrowed_tuple_and_owned_tuple_share_an_encoding() {
        let numbers = [3u64, 5, 7];
        let text = "hi";
        let bytes = encode_to_vec(&(&numbers[..], text, serde_bytes::Bytes::new(b"ab"))).unwrap();
        let (n, t, b): (Vec<u64>, String, serde_bytes::ByteBuf) = decode(&bytes).unwrap();
        assert_eq!(
            (n, t, b.into_vec()),
            (numbers.to_vec(), "hi".into(), b"ab".to_vec())
        );
        assert_eq!(
            encoded_len(&(&numbers[..], text, serde_bytes::Bytes::new(b"ab"))).unwrap(),
            bytes.len()
        );
    }

    #[test]
    fn trailing_and_truncated_bytes_are_errors() {
        let bytes = encode_to_vec(&(1u64, 2u64)).unwrap();
        assert!(matches!(
            decode::<(u64,)>(&bytes),
            Err(WireError::TrailingBytes { .. })
        ));
        assert!(matches!(
            decode::<(u64, u64)>(&bytes[..1]),
            Err(WireError::Decode { .. })
        ));
        // A lying length prefix gives an error, not a huge allocation.
        assert!(decode::<Vec<u8>>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn return_slot_goes_inline_then_in_slot_then_spills() {
        let mut buf = [0u8; 64];
        let mut slot = ReturnSlot::new(&mut buf);
        slot.write(&vec![1u64; 100]).unwrap();
        assert!(matches!(slot.into_written().0, Written::Spilled(v) if v.len() > 64));
        let mut slot = ReturnSlot::new(&mut buf);
        slot.write(&vec![1u8; 40]).unwrap();
        assert!(matches!(slot.into_written().0, Written::InSlot(41)));
        let mut slot = ReturnSlot::new(&mut buf);
        slot.write(&7u8).unwrap();
        let (written, inline) = slot.into_written();
        assert!(matches!(written, Written::Inline(1)));
        assert_eq!(inline[0], 7);
        let mut slot = ReturnSlot::new(&mut buf);
        slot.write(&[9u8; INLINE_RET - 1]).unwrap();
        assert!(matches!(slot.into_written().0, Written::Inline(n) if n == INLINE_RET - 1));
    }
}

/// The decoded form of a byte payload (`Vec<u8>` arguments and returns; the generated code
/// uses it): as `serde_bytes::ByteBuf`, but a large buffer is allocated with transparent huge
/// pages requested, so that decoding a large payload takes a few page faults per 2 MiB instead
/// of one per 4 KiB page (figures in benches/README.md).
#[derive(Debug, Default)]
pub struct ByteBuf(Vec<u8>);

impl ByteBuf {
    /// The bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Copies `src` into a new vector; from 2 MiB on, asks for huge pages before touching it.
pub fn copy_to_vec(src: &[u8]) -> Vec<u8> {
    const HUGE: usize = 2 << 20;
    let mut v = Vec::with_capacity(src.len());
    if src.len() >= HUGE {
        let p = v.as_mut_ptr() as usize;
        let start = p.next_multiple_of(HUGE);
        let end = (p + src.len()) & !(HUGE - 1);
        if end > start {
            // SAFETY: advice on pages of our own fresh allocation; failure is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v.extend_from_slice(src);
    v
}

impl Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(copy_to_vec(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}
