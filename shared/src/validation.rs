//! The error every parser of client input returns: which field is wrong, a stable code, and
//! a message for the caller. The api maps it to a 4xx (`ApiError::Invalid`).

use std::fmt;

/// A field of a request that is missing, malformed or out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
