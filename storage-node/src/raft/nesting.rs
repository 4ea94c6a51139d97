//! Decoding with a bound on nesting: a serde adapter that refuses values nested deeper than a
//! limit.
//!
//! serde decodes a nested value by recursion, several stack frames per level. Peer messages
//! hold recursive types (a txn inside a txn; openraft's `ChangeMembers::Batch` of changes), and
//! their encoding costs two or three bytes per level, so a message of a few kilobytes could nest
//! thousands deep and overflow the stack of the member decoding it. A stack overflow is no
//! panic: nothing catches it, and the process aborts. [`deserialize`] wraps the deserializer so
//! that every nested value is handed a deserializer with one level fewer left, and going past
//! the last level is an error instead.
//!
//! A level is a value inside another: a struct's field, a sequence's element, a map's key or
//! value, an enum's content, an `Option`'s `Some` or a newtype's inner value.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};

/// Why a value was not decoded.
#[derive(Debug)]
pub(crate) enum Refused<E> {
    /// It nests deeper than the limit.
    TooDeep,
    /// The deserializer refused it.
    Invalid(E),
}

/// Decodes a `T` from `deserializer`, refusing it when it nests more than `limit` levels.
pub(crate) fn deserialize<'de, T, D>(deserializer: D, limit: usize) -> Result<T, Refused<D::Error>>
where
    T: de::Deserialize<'de>,
    D: Deserializer<'de>,
{
    let tripped = Cell::new(false);
    let limited = Limited {
        inner: deserializer,
        depth: Depth {
            left: limit,
            tripped: &tripped,
        },
    };
    T::deserialize(limited).map_err(|e| {
        if tripped.get() {
            Refused::TooDeep
        } else {
            Refused::Invalid(e)
        }
    })
}

/// How many more levels a value may nest, and where going past the last is recorded (the
/// error the deserializer carries up may not say why, e.g. postcard's custom errors do not).
#[derive(Clone, Copy)]
struct Depth<'t> {
    left: usize,
    tripped: &'t Cell<bool>,
}

impl<'t> Depth<'t> {
    /// The depth of the values one level further in.
    fn descend<E: de::Error>(self) -> Result<Depth<'t>, E> {
        match self.left.checked_sub(1) {
            Some(left) => Ok(Depth { left, ..self }),
            None => {
                self.tripped.set(true);
                Err(E::custom("nested too deep"))
            }
        }
    }
}

/// A deserializer whose values may nest at most `depth.left` more levels.
struct Limited<'t, D> {
    inner: D,
    depth: Depth<'t>,
}

/// Forwards `Deserializer` methods to the inner deserializer with the visitor wrapped.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method($($arg,)* Visit { inner: visitor, depth: self.depth })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

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
        self.inner.is_human_readable()
    }
}

/// A visitor that hands the values nested in what it visits a deserializer one level deeper.
struct Visit<'t, V> {
    inner: V,
    depth: Depth<'t>,
}

/// Forwards `Visitor` methods for values that nest nothing.
macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
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
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_some(Limited { inner, depth })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_newtype_struct(Limited { inner, depth })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_seq(Access { inner, depth })
    }

    fn visit_map<A: MapAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_map(Access { inner, depth })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_enum(Access { inner, depth })
    }
}

/// A sequence, map, enum or variant whose values are decoded at `depth`.
struct Access<'t, A> {
    inner: A,
    depth: Depth<'t>,
}

/// A seed whose value is decoded at `depth`.
struct Seed<'t, S> {
    inner: S,
    depth: Depth<'t>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        self.inner.deserialize(Limited {
            inner,
            depth: self.depth,
        })
    }
}

impl<'t, A> Access<'t, A> {
    fn seed<S>(&self, inner: S) -> Seed<'t, S> {
        Seed {
            inner,
            depth: self.depth,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(self.seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(self.seed(seed))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(self.seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 't, A: EnumAccess<'de>> EnumAccess<'de> for Access<'t, A> {
    type Error = A::Error;
    type Variant = Access<'t, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let seed = self.seed(seed);
        let (value, inner) = self.inner.variant_seed(seed)?;
        Ok((
            value,
            Access {
                inner,
                depth: self.depth,
            },
        ))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(
            len,
            Visit {
                inner: visitor,
                depth: self.depth,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(
            fields,
            Visit {
                inner: visitor,
                depth: self.depth,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list nested `levels` deep: `[[...[]...]]`, one postcard byte per level.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Nest(Vec<Nest>);

    fn decode(bytes: &[u8], limit: usize) -> Result<Nest, Refused<postcard::Error>> {
        deserialize(&mut postcard::Deserializer::from_bytes(bytes), limit)
    }

    /// `Nest` values `n` deep: a length 1 per level, then an empty list.
    fn nested(n: usize) -> Vec<u8> {
        let mut bytes = vec![1; n];
        bytes.push(0);
        bytes
    }

    #[test]
    fn values_within_the_limit_decode_and_deeper_ones_are_refused() {
        // Each `Nest` is two levels: the newtype's content and the list's elements.
        assert!(decode(&nested(9), 20).is_ok());
        assert!(matches!(decode(&nested(10), 20), Err(Refused::TooDeep)));
        assert!(matches!(
            decode(&nested(100_000), 20),
            Err(Refused::TooDeep)
        ));
    }

    #[test]
    fn other_errors_are_the_deserializers() {
        assert!(matches!(
            decode(&[1, 1], 20),
            Err(Refused::Invalid(postcard::Error::DeserializeUnexpectedEnd))
        ));
    }
}
