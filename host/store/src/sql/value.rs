//! Values that cross the database boundary, the same for both backends:
//! integers (booleans are 0/1), floats, text, bytes and NULL.

use super::DbError;

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer (SQLite INTEGER, PostgreSQL BIGINT).
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes (SQLite BLOB, PostgreSQL BYTEA).
    Blob(Vec<u8>),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(v as i64)
            }
        }
    )*};
}
from_int!(i64, i32, u32, u16, u8, usize, u64);

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v as i64)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}
impl From<&Vec<u8>> for Value {
    fn from(v: &Vec<u8>) -> Value {
        Value::Blob(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
impl From<&Value> for Value {
    fn from(v: &Value) -> Value {
        v.clone()
    }
}

/// Builds a parameter list: `args![name, 3, Some(true)]`.
#[macro_export]
macro_rules! args {
    () => { &[] as &[$crate::sql::Value] };
    ($($e:expr),+ $(,)?) => { &[$($crate::sql::value_of(&$e)),+] as &[$crate::sql::Value] };
}

/// A parameter from a borrowed Rust value (what [`args!`] calls).
pub fn value_of<T: Clone + Into<Value>>(v: &T) -> Value {
    v.clone().into()
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i`, converted.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, DbError> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| DbError::Decode(format!("no column {i}")))?;
        T::from_value(v).map_err(|want| DbError::Decode(format!("column {i}: {v:?} is not {want}")))
    }
}

/// A Rust type a column converts to.
pub trait FromValue: Sized {
    /// Converts, or names the type that was expected.
    fn from_value(v: &Value) -> Result<Self, &'static str>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        match v {
            Value::Int(i) => Ok(*i),
            _ => Err("an integer"),
        }
    }
}
impl FromValue for u64 {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        i64::from_value(v).and_then(|i| u64::try_from(i).map_err(|_| "a non-negative integer"))
    }
}
impl FromValue for i32 {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        i64::from_value(v).and_then(|i| i32::try_from(i).map_err(|_| "a 32-bit integer"))
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        i64::from_value(v).and_then(|i| u32::try_from(i).map_err(|_| "a 32-bit unsigned integer"))
    }
}
impl FromValue for usize {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        i64::from_value(v).and_then(|i| usize::try_from(i).map_err(|_| "a size"))
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        match v {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            _ => Err("a number"),
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            _ => Err("text"),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            _ => Err("bytes"),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self, &'static str> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}
