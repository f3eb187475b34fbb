//! Domain errors to gRPC statuses (server side) and statuses to
//! `ClientError` (client side), each in exactly one place.

use chat_core::{ChatError, ClientError, ErrorCode};
use tonic::{Code, Status};

pub fn to_status(e: ChatError) -> Status {
    let code = match e.code() {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Internal | ErrorCode::Unspecified => Code::Internal,
    };
    Status::new(code, e.to_string())
}

pub fn from_status(status: Status, endpoint: &str) -> ClientError {
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists => ErrorCode::AlreadyExists,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::Internal => ErrorCode::Internal,
        Code::Unauthenticated => ErrorCode::Unauthenticated,
        Code::PermissionDenied => ErrorCode::PermissionDenied,
        // Transport failures (connection refused, reset, server gone) come
        // back as UNAVAILABLE or, mid-stream, as UNKNOWN/CANCELLED.
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::Aborted
        | Code::DeadlineExceeded => {
            return ClientError::Unavailable {
                endpoint: endpoint.to_owned(),
                reason: status.message().to_owned(),
            };
        }
        _ => {
            return ClientError::Protocol(format!("{:?}: {}", status.code(), status.message()));
        }
    };
    ClientError::Rejected {
        code,
        message: status.message().to_owned(),
    }
}
