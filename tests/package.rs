//! The Debian package, built with cargo-deb when it is installed (the test says it skipped
//! otherwise; `cargo install cargo-deb` to run it).
//!
//! It packages the binary this test run built (`--no-build --profile dev`): what goes where,
//! the conffile and the maintainer scripts are the same as for the release build
//! (`cargo deb`), which takes minutes to link with LTO.

use std::path::Path;
use std::process::Command;

fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

#[test]
fn the_debian_package_holds_binary_unit_conffile_and_creates_the_user() {
    if !available("cargo", &["deb", "--version"]) || !available("dpkg-deb", &["--version"]) {
        eprintln!("skipped: cargo-deb or dpkg-deb is not installed");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let built = Command::new("cargo")
        .current_dir(root)
        .args(["deb", "--no-build", "--profile", "dev", "--fast", "--output"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "cargo deb: {}", String::from_utf8_lossy(&built.stderr));
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb was written");

    let listing = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in
        ["./usr/bin/fieldwatch", "./usr/lib/systemd/system/fieldwatch.service", "./etc/fieldwatch/fieldwatch.toml"]
    {
        assert!(listing.lines().any(|l| l.ends_with(path)), "{path} missing from the package:\n{listing}");
    }
    assert!(listing.lines().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/fieldwatch")));

    let control = tempfile::tempdir().unwrap();
    let extracted = Command::new("dpkg-deb").arg("--control").arg(&deb).arg(control.path()).status().unwrap();
    assert!(extracted.success());
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/fieldwatch/fieldwatch.toml");
    let postinst = read("postinst");
    assert!(postinst.contains("adduser --system") && postinst.contains("fieldwatch"), "{postinst}");
    assert!(postinst.contains("daemon-reload"), "the unit is registered: {postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "installing does not start it: {postinst}");
    assert!(read("control").contains("Depends: adduser"), "{}", read("control"));

    // The packaged config is the reference, and the packaged unit runs the packaged binary.
    let unit = std::fs::read_to_string(root.join("systemd/fieldwatch.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/fieldwatch run --config /etc/fieldwatch/fieldwatch.toml"), "{unit}");
    assert!(unit.contains("StateDirectory=fieldwatch") && unit.contains("User=fieldwatch"), "{unit}");
}
