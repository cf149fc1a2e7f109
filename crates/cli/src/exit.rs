//! Exit codes (`docs/cli.md`) and the error that carries one to `main`.

/// 0 success; 1 the run ended ERROR/STOPPED; 2 invalid input; 3 server unreachable or internal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    RunFailed = 1,
    Invalid = 2,
    Unavailable = 3,
}

/// An error that knows its exit code. Anything else that reaches `main` exits 3.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn invalid(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Invalid,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Unavailable,
            message: message.into(),
        }
    }

    pub fn run_failed(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::RunFailed,
            message: message.into(),
        }
    }
}
