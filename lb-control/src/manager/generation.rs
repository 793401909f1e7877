//! The manager's generation counter, persisted before each use so a number
//! is never handed out twice, across crashes and restarts.

use std::path::{Path, PathBuf};

use crate::atomic_file;

/// Persisted, strictly increasing generation numbers.
#[derive(Debug)]
pub struct Generations {
    path: PathBuf,
    current: u64,
}

impl Generations {
    /// Opens (creating `dir` if needed) the counter in `dir/generation`.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))?;
        let path = dir.join("generation");
        let current = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                format!(
                    "{}: {e}: it must hold one number, the last generation used",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Self { path, current })
    }

    /// The last generation handed out.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// A new generation, recorded on disk before it is returned.
    pub fn take_next(&mut self) -> Result<u64, String> {
        self.advance_to(self.current + 1)
    }

    /// Moves the counter to at least `floor` (a node reported a newer
    /// generation than this manager remembers, e.g. after its state
    /// directory was lost), and returns the next one after it.
    pub fn advance_to(&mut self, floor: u64) -> Result<u64, String> {
        let next = floor.max(self.current + 1);
        atomic_file::write(&self.path, format!("{next}\n").as_bytes()).map_err(|e| {
            format!(
                "cannot record generation {next} in {}: {e}",
                self.path.display()
            )
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
        let e = Generations::open(dir.path()).unwrap_err();
        assert!(e.contains("one number"), "{e}");
    }
}
