//! Mapping of bollard errors onto the port's `RuntimeError`: transport failures are
//! `Unavailable` (retry later may work), engine answers are `Other` unless a caller knows better.

use bollard::errors::Error as BollardError;
use sandboxd_usecase::ports::RuntimeError;

/// Engine replies that mean "not now" rather than "no".
const UNAVAILABLE_STATUSES: &[u16] = &[502, 503, 504];

pub(super) fn engine_error(error: BollardError) -> RuntimeError {
    let unreachable = match &error {
        // No socket, refused or reset connections, timeouts, broken HTTP: the engine is not there.
        BollardError::SocketNotFoundError(_)
        | BollardError::HyperLegacyError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError => true,
        BollardError::DockerResponseServerError { status_code, .. } => {
            UNAVAILABLE_STATUSES.contains(status_code)
        }
        _ => false,
    };
    if unreachable {
        RuntimeError::Unavailable(Box::new(error))
    } else {
        RuntimeError::Other(Box::new(error))
    }
}

pub(super) fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A create refused because the network it names does not exist (404 "network ... not found").
pub(super) fn is_network_not_found(error: &BollardError) -> bool {
    matches!(error, BollardError::DockerResponseServerError { status_code: 404, message }
        if message.contains("network"))
}

/// An engine error about an existing sandbox: gone (404) or being removed (409) means someone
/// removed it meanwhile (another lease holder's sweep while it started, or a removal behind the
/// service's back), not a broken engine.
pub(super) fn container_error(error: BollardError) -> RuntimeError {
    let being_removed = matches!(
        &error,
        BollardError::DockerResponseServerError { status_code: 409, message }
            if message.contains("removal")
    );
    if is_not_found(&error) || being_removed {
        RuntimeError::Vanished
    } else {
        engine_error(error)
    }
}

/// A concurrent removal of the same container already won.
pub(super) fn is_removal_in_progress(error: &BollardError) -> bool {
    matches!(error, BollardError::DockerResponseServerError { status_code: 409, message }
        if message.contains("already in progress"))
}

/// An `Other` with a message, for failures that are not bollard errors.
pub(super) fn other(message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(message.to_string().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_unavailable_and_engine_refusals_are_other() {
        assert!(matches!(
            engine_error(BollardError::SocketNotFoundError("/x.sock".into())),
            RuntimeError::Unavailable(_)
        ));
        assert!(matches!(
            engine_error(BollardError::RequestTimeoutError),
            RuntimeError::Unavailable(_)
        ));
        let server = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        };
        assert!(matches!(
            engine_error(server(503, "busy")),
            RuntimeError::Unavailable(_)
        ));
        assert!(matches!(
            engine_error(server(500, "runtime not found")),
            RuntimeError::Other(_)
        ));
        assert!(is_not_found(&server(404, "No such container: x")));
        assert!(is_removal_in_progress(&server(
            409,
            "removal of container x is already in progress"
        )));
        assert!(!is_removal_in_progress(&server(
            409,
            "conflict: name in use"
        )));
    }
}
