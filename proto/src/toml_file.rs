//! Reading a daemon's TOML file: the two ways it fails before its own
//! validation, each naming the file.

use std::path::{Path, PathBuf};

/// A TOML file that cannot be read or does not parse.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the
    /// wrong type; `message` is the parser's, with the line and column.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, naming the key, line and column.
        message: String,
    },
}

/// The text of the file at `path`.
///
/// # Errors
/// [`FileError::Read`].
pub fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// `text` (of the file at `path`) as a `T`.
///
/// # Errors
/// [`FileError::Parse`], with the parser's message.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| parse_error(path, &e))
}

/// A parser's error about the file at `path` (also of a format-keeping
/// editor's parser).
#[must_use]
pub fn parse_error(path: &Path, error: &impl std::fmt::Display) -> FileError {
    FileError::Parse {
        path: path.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    }
}
