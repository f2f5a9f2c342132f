//! The foreground command, and what happens to etcd and kube-apiserver when whoever started them
//! dies without cleaning up.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Alive and not a zombie (a reparented child may linger as one until init reaps it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

struct Started {
    child: std::process::Child,
    values: Vec<(String, String)>,
}

impl Started {
    fn get(&self, key: &str) -> &str {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key}= line in {:?}", self.values))
    }

    fn pid(&self, key: &str) -> u32 {
        self.get(key).parse().expect("pid")
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `svcplane-testenv` and reads its key=value lines up to the closing comment.
fn start_foreground() -> Started {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svcplane-testenv"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn svcplane-testenv");
    let stdout = child.stdout.take().expect("stdout");
    let mut values = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if line.starts_with('#') {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            values.push((k.to_owned(), v.to_owned()));
        }
    }
    Started { child, values }
}

fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_parent_leaves_no_etcd_or_apiserver_behind() {
    let mut started = start_foreground();
    let pids = [started.pid("etcd-pid"), started.pid("kube-apiserver-pid")];
    let dir = started.get("logs").to_owned();
    assert!(pids.iter().all(|p| alive(*p)), "both run before the kill");

    started.child.kill().expect("SIGKILL the parent");
    started.child.wait().expect("reap");
    let left = wait_gone(&pids, Duration::from_secs(20));
    assert!(
        left.is_empty(),
        "still running after the parent was killed: {left:?}"
    );
    // A killed parent cannot remove its directory; it holds the logs of what was running.
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_stops_the_foreground_command_cleanly() {
    let mut started = start_foreground();
    let pids = [started.pid("etcd-pid"), started.pid("kube-apiserver-pid")];
    let dir = std::path::PathBuf::from(started.get("logs"));
    let kubeconfig = std::path::PathBuf::from(started.get("kubeconfig"));
    assert!(kubeconfig.exists(), "kubeconfig printed and written");
    assert!(started.get("server").starts_with("https://127.0.0.1:"));

    let status = Command::new("kill")
        .args(["-TERM", &started.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = started.child.wait().expect("wait");
    assert!(exit.success(), "clean exit, got {exit}");
    assert!(wait_gone(&pids, Duration::from_secs(5)).is_empty());
    assert!(!dir.exists(), "{} removed on a clean stop", dir.display());
}
