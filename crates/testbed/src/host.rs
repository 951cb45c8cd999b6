//! What a lab needs of the host: root, and programs on `$PATH`.

use std::path::{Path, PathBuf};

/// Whether the process runs with effective uid 0 (namespaces and veth need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first executable file called `name` on `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit set.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// An error naming the first of `tools` (program, Debian package) not on `$PATH`.
pub fn require_tools(tools: &[(&str, &str)]) -> std::io::Result<()> {
    for (tool, package) in tools {
        if find_in_path(tool).is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{tool} not found on PATH (install {package})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-program-hypha").is_none());
        let dir = std::env::temp_dir().join(format!("hy-host-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("data");
        std::fs::write(&f, "x").unwrap();
        assert!(!is_executable(&f));
        assert!(!is_executable(&dir));
        assert!(is_executable(&find_in_path("sh").unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(require_tools(&[("sh", "a shell")]).is_ok());
        let e = require_tools(&[("sh", "x"), ("no-such-program-hypha", "hypha-pkg")]).unwrap_err();
        assert!(e.to_string().contains("install hypha-pkg"), "{e}");
    }
}
