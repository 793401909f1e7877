//! The manager's generation counter, persisted before each use so a number
//! is never handed out twice, across crashes and restarts.

use std::path::{Path, PathBuf};

use crate::atomic_file;

/// Why the generation counter cannot be opened or advanced. A manager that
/// cannot record a generation makes no change: it would hand it out twice.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("cannot create state directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}: it must hold one number, the last generation used", path.display())]
    Corrupt {
        path: PathBuf,
        source: std::num::ParseIntError,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot record generation {next} in {}: {source}", path.display())]
    Record {
        next: u64,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Persisted, strictly increasing generation numbers.
#[derive(Debug)]
pub struct Generations {
    path: PathBuf,
    current: u64,
}

impl Generations {
    /// Opens (creating `dir` if needed) the counter in `dir/generation`.
    pub fn open(dir: &Path) -> Result<Self, GenerationError> {
        std::fs::create_dir_all(dir).map_err(|source| GenerationError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = dir.join("generation");
        let current = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(n) => n,
                Err(source) => return Err(GenerationError::Corrupt { path, source }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(GenerationError::Read { path, source }),
        };
        Ok(Self { path, current })
    }

    /// The last generation handed out.
    #[must_use]
    pub fn current(&self) -> u64 {
        self.current
    }

    /// A new generation, recorded on disk before it is returned.
    pub fn take_next(&mut self) -> Result<u64, GenerationError> {
        self.advance_to(self.current + 1)
    }

    /// Moves the counter to at least `floor` (a node reported a newer
    /// generation than this manager remembers, e.g. after its state
    /// directory was lost), and returns the next one after it.
    pub fn advance_to(&mut self, floor: u64) -> Result<u64, GenerationError> {
        let next = floor.max(self.current + 1);
        atomic_file::write(&self.path, format!("{next}\n").as_bytes()).map_err(|source| {
            GenerationError::Record {
                next,
                path: self.path.clone(),
                source,
            }
        })?;
        self.current = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_survive_reopen_and_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generations::open(dir.path()).unwrap();
        assert_eq!(g.current(), 0);
        assert_eq!(g.take_next().unwrap(), 1);
        assert_eq!(g.take_next().unwrap(), 2);
        drop(g);
        let mut g = Generations::open(dir.path()).unwrap();
        assert_eq!(g.current(), 2);
        assert_eq!(g.take_next().unwrap(), 3);
        assert_eq!(g.advance_to(10).unwrap(), 10);
        assert_eq!(g.advance_to(4).unwrap(), 11);
        std::fs::write(dir.path().join("generation"), "x").unwrap();
        let e = Generations::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("one number"), "{e}");
    }
}
