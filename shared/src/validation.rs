//! The error every parser of client input returns: which field is wrong, a stable code, and
//! a message for the caller. The api maps it to a 4xx (`ApiError::Invalid`). Beside it, the one
//! check of a JSON body's field names (`unknown_field`).

use serde_json::Value;
use std::fmt;

/// A field of a request that is missing, malformed or out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// How the refusal of an unknown field words the fields a body takes. Clients may match the
/// message, so each route keeps the wording it has always had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// "expected catalog, expected_version"
    All,
    /// "expected one of email, name, credits"
    OneOf,
}

/// Refuses a body with a field that is not in `allowed`, naming the first one:
/// `unknown_field`, "unknown field; expected …". A body that is not an object has no fields.
pub fn only_fields(body: &Value, allowed: &[&str], expected: Expected) -> Result<(), FieldError> {
    let unknown = body
        .as_object()
        .and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str())));
    match unknown {
        None => Ok(()),
        Some(field) => {
            let names = allowed.join(", ");
            let message = match expected {
                Expected::All => format!("unknown field; expected {names}"),
                Expected::OneOf => format!("unknown field; expected one of {names}"),
            };
            Err(FieldError::new(field.as_str(), "unknown_field", message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_fields_pass_and_the_first_unknown_one_is_named() {
        let allowed = ["email", "name", "credits"];
        assert_eq!(
            only_fields(
                &json!({"email": "a@b", "name": "n"}),
                &allowed,
                Expected::OneOf
            ),
            Ok(())
        );
        assert_eq!(only_fields(&json!([1]), &allowed, Expected::OneOf), Ok(()));
        assert_eq!(
            only_fields(
                &json!({"email": "a@b", "role": "admin"}),
                &allowed,
                Expected::OneOf
            ),
            Err(FieldError::new(
                "role",
                "unknown_field",
                "unknown field; expected one of email, name, credits"
            ))
        );
    }

    #[test]
    fn each_route_keeps_its_wording() {
        let catalog = only_fields(
            &json!({"catalog": {}, "version": 1}),
            &["catalog", "expected_version"],
            Expected::All,
        );
        assert_eq!(
            catalog.map_err(|e| e.message),
            Err("unknown field; expected catalog, expected_version".to_owned())
        );
        let order = only_fields(&json!({"sku": "x"}), &["product_id"], Expected::All);
        assert_eq!(
            order.map_err(|e| e.to_string()),
            Err("sku: unknown field; expected product_id".to_owned())
        );
    }
}
