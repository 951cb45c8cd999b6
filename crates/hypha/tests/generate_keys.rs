//! `hypha generate-keys` as a user runs it: the real binary, its exit status, its output and the
//! key file it leaves behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the binary with a private config directory (so no user config file is read).
fn hypha(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hypha"))
        .env("XDG_CONFIG_HOME", dir)
        .env("HOME", dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// The `Public key: ...` line of the command's output.
fn public_key(o: &Output) -> String {
    text(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Public key: "))
        .unwrap_or_else(|| panic!("no public key in {:?}", text(&o.stdout)))
        .to_owned()
}

fn inspect(dir: &Path, key: &Path) -> String {
    let o = hypha(dir, &["--key-file", key.to_str().unwrap(), "inspect"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    public_key(&o)
}

/// A private config directory, a key directory, and a first key generated in it:
/// (config dir, key dir, key path, the public key the command printed).
fn first_key() -> (tempfile::TempDir, tempfile::TempDir, PathBuf, String) {
    let home = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("priv_key.bin");
    let first = hypha(
        home.path(),
        &["--key-file", key.to_str().unwrap(), "generate-keys"],
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    let printed = public_key(&first);
    (home, keys, key, printed)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `--force` used to fail with `File exists` (the key was saved with `create_new`) and left the
/// old key in place. It must replace the key: a new key in the file, mode 0600, nothing else
/// left in the directory.
#[test]
fn generate_keys_force_replaces_the_key() {
    let (home, keys, key, old) = first_key();
    let k = key.to_str().unwrap();
    assert_eq!(inspect(home.path(), &key), old);

    let second = hypha(home.path(), &["--key-file", k, "generate-keys", "--force"]);
    assert!(
        second.status.success(),
        "--force failed: {}",
        text(&second.stderr)
    );
    let new = public_key(&second);
    assert_ne!(new, old, "--force printed the old key");
    assert_eq!(
        inspect(home.path(), &key),
        new,
        "the file holds another key"
    );
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(names(keys.path()), vec!["priv_key.bin".to_owned()]);
}

/// Without `--force` an existing key is kept, and the refusal is one line naming the file and
/// the cause once.
#[test]
fn generate_keys_without_force_keeps_the_key() {
    let (home, keys, key, _) = first_key();
    let k = key.to_str().unwrap();
    let before = std::fs::read(&key).unwrap();

    let again = hypha(home.path(), &["--key-file", k, "generate-keys"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stdout.is_empty(), "{}", text(&again.stdout));
    assert_eq!(
        text(&again.stderr),
        format!("hypha: key file {k} exists; use --force to overwrite it\n")
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert_eq!(names(keys.path()), vec!["priv_key.bin".to_owned()]);
}

/// A key file that cannot be written is one line that names the file and the cause once.
#[test]
fn generate_keys_failure_names_the_cause_once() {
    let home = tempfile::tempdir().unwrap();
    // A regular file where the key's directory should be.
    let blocker = home.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let key = blocker.join("priv_key.bin");
    let k = key.to_str().unwrap();
    for args in [
        vec!["--key-file", k, "generate-keys"],
        vec!["--key-file", k, "generate-keys", "--force"],
    ] {
        let o = hypha(home.path(), &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = text(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("hypha: key file {k}: ")), "{err}");
        assert_eq!(err.matches("key file").count(), 1, "{err}");
        assert_eq!(err.matches("(os error").count(), 1, "{err}");
    }
}
