//! The typed errors of API calls ([`ApiError`]): what the agent's methods return,
//! what the routes turn into an HTTP status and an `ErrorBody` with its `ErrorCode`.

use georep_api::ErrorCode;
use georep_mesh::MeshError;
use georep_mesh::StateError;

/// A refusal or failure of an API call, mapped to an HTTP status by the API layer;
/// `code` is the machine-readable kind the error body carries.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was malformed (HTTP 400).
    #[error("{message}")]
    BadRequest {
        /// What kind.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
    /// The operation was refused (HTTP 409), naming the session.
    #[error("{message}")]
    Refused {
        /// What kind.
        code: ErrorCode,
        /// Session concerned.
        session: Option<String>,
        /// What was wrong and what to do.
        message: String,
    },
}

impl ApiError {
    /// A malformed request ([`ErrorCode::BadRequest`]).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(error: StateError) -> Self {
        use georep_mesh::session_config::ConfigKeyError;
        let message = error.to_string();
        let (code, session) = match &error {
            StateError::BadSessionName { .. } => {
                return ApiError::BadRequest {
                    code: ErrorCode::BadSessionName,
                    message,
                };
            }
            StateError::NotCreated(id) => (ErrorCode::SessionNotFound, id),
            StateError::AlreadyExists(id) => (ErrorCode::AlreadyExists, id),
            StateError::SameVolumes { session, .. } => (ErrorCode::SameVolumes, session),
            StateError::PrimaryVolumeUnknown { session, .. } => {
                (ErrorCode::PrimaryVolumeUnknown, session)
            }
            StateError::SecondaryNotHosted { session, .. } => {
                (ErrorCode::SecondaryNotHosted, session)
            }
            StateError::SecondaryVolumeTaken { session, .. } => {
                (ErrorCode::SecondaryVolumeTaken, session)
            }
            StateError::SecondaryHostUnknown { session, .. } => {
                (ErrorCode::SecondaryHostUnknown, session)
            }
            StateError::SecondaryUserMissing { session, .. } => {
                (ErrorCode::SecondaryUserMissing, session)
            }
            StateError::SecondaryTooSmall { session, .. } => {
                (ErrorCode::SecondaryTooSmall, session)
            }
            StateError::SizeUnknown { session, .. } => (ErrorCode::SizeUnknown, session),
            StateError::SecondaryNotEmpty { session, .. } => {
                (ErrorCode::SecondaryNotEmpty, session)
            }
            StateError::NoKeysToRotate(id) => (ErrorCode::NoKeysToRotate, id),
            StateError::WrongState { session, .. } => (ErrorCode::WrongState, session),
            StateError::Config { session, error } => (
                match error {
                    ConfigKeyError::UnknownKey { .. } => ErrorCode::UnknownKey,
                    ConfigKeyError::InvalidValue { .. } => ErrorCode::BadValue,
                },
                session,
            ),
        };
        ApiError::Refused {
            code,
            session: Some(session.to_string()),
            message,
        }
    }
}

impl From<MeshError> for ApiError {
    fn from(error: MeshError) -> Self {
        let code = match error {
            MeshError::Refused(refusal) => return refusal.into(),
            MeshError::Encode(_) => ErrorCode::NotStored,
            MeshError::ForgetRefused(_) => ErrorCode::ForgetRefused,
            MeshError::Start(_) | MeshError::AlreadyRunning { .. } => ErrorCode::Internal,
        };
        ApiError::Refused {
            code,
            session: None,
            message: error.to_string(),
        }
    }
}
