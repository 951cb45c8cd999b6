//! Scratch directories for key files and logs.

use std::io;
use std::path::{Path, PathBuf};

/// `<tmp>/<prefix>-<pid>`, removed on drop. Creating one first removes the directories of the
/// same prefix whose process is gone (left by a SIGKILLed run).
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> io::Result<ScratchDir> {
        let tmp = std::env::temp_dir();
        if let Ok(dir) = std::fs::read_dir(&tmp) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('-'))
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = tmp.join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        Ok(ScratchDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_directories_go_and_ours_goes_on_drop() {
        let prefix = format!("hy-scratch-test-{}", std::process::id());
        // A pid that cannot be running: above the kernel's limit.
        let stale = std::env::temp_dir().join(format!("{prefix}-4294967295"));
        std::fs::create_dir_all(&stale).unwrap();
        let d = ScratchDir::new(&prefix).unwrap();
        assert!(!stale.exists());
        assert!(d.path().is_dir());
        let p = d.path().to_path_buf();
        drop(d);
        assert!(!p.exists());
    }
}
