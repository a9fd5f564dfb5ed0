//! What an admin does, as operations shared by the API and the CLI (so both check and
//! record the same things): registering and editing repositories (`repos`), and users,
//! roles, personal tokens and identities (`people`), and the repository scope of a new
//! machine token (`token_scope`).

pub mod people;
pub mod repos;
pub mod token_scope;

use crate::api::error::ApiError;
use crate::store;

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong; the message says how (safe to show).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Something on the server is broken (e.g. a sealed value no longer opens).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => ApiError::unprocessable(m),
            Error::Store(e) => e.into(),
            Error::Internal(detail) => ApiError::internal(detail),
        }
    }
}
