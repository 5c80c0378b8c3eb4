//! The results of a D1 batch, read statement by statement.

use serde::de::DeserializeOwned;
use shared::edge::{rows, IoError};
use worker::D1Result;

/// The rows of statement `i`; none when the batch returned no result for it.
pub fn rows_at<T: DeserializeOwned>(results: &[D1Result], i: usize) -> Result<Vec<T>, IoError> {
    Ok(results.get(i).map(rows).transpose()?.unwrap_or_default())
}

/// The result of statement `i`, which the caller cannot do without: a batch that returned none
/// for it is a failure of the `step`.
pub fn result_at<'r>(
    results: &'r [D1Result],
    i: usize,
    step: &str,
) -> Result<&'r D1Result, IoError> {
    results.get(i).ok_or_else(|| IoError {
        step: step.into(),
        cause: format!("batch returned no result {i}"),
    })
}
