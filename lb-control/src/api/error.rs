//! Why the daemon did not carry out a request, and the stable kind each
//! error is sent with.

use super::ErrorKind;
use crate::{
    config::ConfigError,
    manager::{config_file::ConfigFileError, controller::ControllerError},
    node::ApplyError,
};

/// Why a request of `lbctl` (or a SIGHUP reload) was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The file does not load; the running configuration stays.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "[node] interfaces/pin_dir/hash_seed/debug_xdp and [limits] take effect on restart only; restart lb-control to change them (services and servers were not changed either)"
    )]
    RestartRequired,
    /// The node did not apply the file.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(
        "this lb-control runs no manager: add a [manager] section to its config to let it allocate servers"
    )]
    NoManager,
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// A node request handed to the manager's handler (a bug).
    #[error("not a manager request")]
    NotManagerRequest,
}

impl RequestError {
    /// The class of the error, as the response names it.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            RequestError::Config(_) => ErrorKind::InvalidConfig,
            RequestError::RestartRequired => ErrorKind::RestartRequired,
            RequestError::NoManager => ErrorKind::NoManager,
            RequestError::Controller(e) => controller_kind(e),
            RequestError::Apply(_) | RequestError::NotManagerRequest => ErrorKind::Internal,
        }
    }
}

fn controller_kind(e: &ControllerError) -> ErrorKind {
    match e {
        ControllerError::File(f) => file_kind(f),
        ControllerError::UnknownServer(_)
        | ControllerError::UnknownService(_)
        | ControllerError::NothingToRepin(_) => ErrorKind::NotFound,
        ControllerError::AlreadyFree(_) | ControllerError::AlreadyMember { .. } => {
            ErrorKind::Conflict
        }
        ControllerError::ServesNoService(_)
        | ControllerError::NoApplication(_)
        | ControllerError::Ambiguous { .. } => ErrorKind::InvalidRequest,
        ControllerError::Settings { .. }
        | ControllerError::UnexpectedSettings { .. }
        | ControllerError::BadSettings { .. } => ErrorKind::AgentUnavailable,
        ControllerError::NotApplied { .. } | ControllerError::NotSynced(_) => {
            ErrorKind::NodesFailed
        }
        ControllerError::Generation(_)
        | ControllerError::StateCorrupt { .. }
        | ControllerError::StateRead { .. }
        | ControllerError::NodesWithoutTls
        | ControllerError::RemoteNode { .. }
        | ControllerError::Task(_) => ErrorKind::Internal,
    }
}

fn file_kind(e: &ConfigFileError) -> ErrorKind {
    use crate::manager::config_file::EditError;
    match e {
        ConfigFileError::Invalid(_) | ConfigFileError::Rejected(_) => ErrorKind::InvalidConfig,
        ConfigFileError::Conflict { .. } | ConfigFileError::Locked { .. } => ErrorKind::Conflict,
        ConfigFileError::Edit { source, .. } => match source {
            EditError::UnknownServer(_) | EditError::UnknownService(_) => ErrorKind::NotFound,
            EditError::DuplicateServer(_) | EditError::DuplicateService(_) => ErrorKind::Conflict,
            EditError::Layout(_) => ErrorKind::InvalidConfig,
        },
        ConfigFileError::Io { .. } => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_names() {
        let e = RequestError::Controller(ControllerError::UnknownServer("s9".into()));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no server `s9` in the configuration");
        let text = serde_json::to_string(&super::super::Response::error(e.kind(), &e)).unwrap();
        assert_eq!(
            text,
            r#"{"response":"error","kind":"not_found","message":"no server `s9` in the configuration"}"#
        );
        // A daemon before kinds, and one with a kind this client does not
        // know: both parse.
        for old in [
            r#"{"response":"error","message":"m"}"#,
            r#"{"response":"error","kind":"from_the_future","message":"m"}"#,
        ] {
            let r: super::super::Response = serde_json::from_str(old).unwrap();
            assert!(
                matches!(r, super::super::Response::Error { kind: ErrorKind::Internal, ref message } if message == "m"),
                "{r:?}"
            );
        }
        assert_eq!(RequestError::NoManager.kind(), ErrorKind::NoManager);
        assert_eq!(
            RequestError::RestartRequired.kind(),
            ErrorKind::RestartRequired
        );
    }
}
