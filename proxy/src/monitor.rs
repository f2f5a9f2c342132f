//! Notices when another process changes svcplane-proxy's tables: a flushed table, a deleted
//! rule or chain, an element removed from a map. It follows `nft monitor` (the kernel's
//! nftables events for this network namespace); each committed batch ends with
//! `# new generation N by process P (comm)`, and a batch that touched one of our tables from a
//! process other than our own `nft -f` is reported, so the caller can replace the tables whole.
//! Our own transactions are told apart by the pids [`crate::nft::NftCli`] records.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

/// The pids of the last `nft` processes svcplane-proxy ran (shared with the monitor).
#[derive(Debug, Clone, Default)]
pub struct OwnPids(Arc<Mutex<VecDeque<u32>>>);

impl OwnPids {
    /// How many recent pids are remembered; a batch's generation line follows its commit by
    /// microseconds, long before this many more transactions run.
    const KEPT: usize = 64;

    pub fn record(&self, pid: u32) {
        if let Ok(mut pids) = self.0.lock() {
            if pids.len() == Self::KEPT {
                pids.pop_front();
            }
            pids.push_back(pid);
        }
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.0.lock().is_ok_and(|pids| pids.contains(&pid))
    }
}

/// What the monitor saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Another process committed a batch that changed our tables.
    Changed {
        pid: u32,
        command: String,
        /// The batch's first event on our tables, e.g. `delete rule ip svcplane services handle 7`.
        event: String,
    },
    /// The monitor stopped and was started again: changes in between may have been missed.
    Restarted { why: String },
}

/// Reads `nft monitor` lines and reports foreign batches on `table`.
#[derive(Debug)]
pub struct Parser {
    table: String,
    own: OwnPids,
    /// The first event of the current batch that touched our tables.
    touched: Option<String>,
}

impl Parser {
    pub fn new(table: &str, own: OwnPids) -> Self {
        Self {
            table: table.to_owned(),
            own,
            touched: None,
        }
    }

    /// One line of `nft monitor`'s output; a notice when it ends a foreign batch on our tables.
    pub fn line(&mut self, line: &str) -> Option<Notice> {
        if let Some(rest) = line.strip_prefix("# new generation ") {
            let touched = self.touched.take()?;
            // "N by process P (comm)"
            let mut words = rest.split_whitespace();
            let pid = words
                .nth(3)
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0);
            if pid != 0 && self.own.contains(pid) {
                return None;
            }
            let command = words
                .next()
                .unwrap_or_default()
                .trim_matches(|c| c == '(' || c == ')')
                .to_owned();
            return Some(Notice::Changed {
                pid,
                command,
                event: touched,
            });
        }
        if self.touched.is_none() && self.is_ours(line) {
            self.touched = Some(line.chars().take(200).collect());
        }
        None
    }

    /// `<verb> <object> <family> <table> …`, or `<verb> table <family> <table>`: our table in
    /// family ip or ip6.
    /// Called for every line (a full sync of ours prints one per element), so it allocates
    /// nothing.
    fn is_ours(&self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        let (Some(verb), Some(_), Some(family), Some(table)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return false;
        };
        matches!(
            verb,
            "add" | "delete" | "flush" | "replace" | "destroy" | "reset" | "rename"
        ) && matches!(family, "ip" | "ip6")
            && table == self.table
    }
}

/// The running `nft monitor`; dropping it stops the process.
#[derive(Debug)]
pub struct Monitor {
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Monitor {
    /// Starts `<binary> <leading…> monitor` on a thread; notices arrive on the receiver.
    /// When the process ends it is started again after a second (with a `Restarted` notice);
    /// when it cannot be started at all the receiver closes and the caller is told why once.
    pub fn start(
        binary: PathBuf,
        leading: Vec<String>,
        table: &str,
        own: OwnPids,
    ) -> std::io::Result<(Monitor, mpsc::UnboundedReceiver<Notice>)> {
        let spawn = move || {
            Command::new(&binary)
                .args(&leading)
                .arg("monitor")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        };
        let first = spawn()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let child = Arc::new(Mutex::new(None::<Child>));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let monitor = Monitor {
            child: child.clone(),
            stop: stop.clone(),
        };
        let table = table.to_owned();
        std::thread::Builder::new()
            .name("nft-monitor".into())
            .spawn(move || {
                let mut next = Some(first);
                loop {
                    let Some(mut process) = next.take() else {
                        break;
                    };
                    let stdout = process.stdout.take();
                    if let Ok(mut slot) = child.lock() {
                        *slot = Some(process);
                    }
                    let mut parser = Parser::new(&table, own.clone());
                    if let Some(stdout) = stdout {
                        for line in BufReader::new(stdout).lines() {
                            let Ok(line) = line else { break };
                            if let Some(notice) = parser.line(&line)
                                && tx.send(notice).is_err()
                            {
                                return;
                            }
                        }
                    }
                    if let Ok(mut slot) = child.lock()
                        && let Some(mut old) = slot.take()
                    {
                        let _ = old.kill();
                        let _ = old.wait();
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    match spawn() {
                        Ok(p) => {
                            next = Some(p);
                            let why = "nft monitor ended".to_owned();
                            if tx.send(Notice::Restarted { why }).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "nft monitor could not be restarted; changes others make to the tables are repaired only by the hourly full sync");
                            return;
                        }
                    }
                }
            })?;
        Ok((monitor, rx))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut slot) = self.child.lock()
            && let Some(child) = slot.as_mut()
        {
            let _ = child.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(own: &[u32], lines: &[&str]) -> Vec<Notice> {
        let pids = OwnPids::default();
        for p in own {
            pids.record(*p);
        }
        let mut parser = Parser::new("svcplane", pids);
        lines.iter().filter_map(|l| parser.line(l)).collect()
    }

    #[test]
    fn our_own_batches_are_not_reported() {
        let got = parse(
            &[41],
            &[
                "add element ip svcplane cluster-ips { 10.96.0.10 . udp . 53 }",
                "# new generation 7 by process 41 (nft)",
            ],
        );
        assert_eq!(got, vec![]);
    }

    #[test]
    fn a_flush_by_someone_else_is_reported_once_per_batch() {
        let got = parse(
            &[41],
            &[
                "delete rule ip svcplane services handle 5",
                "delete rule ip svcplane services handle 6",
                "delete rule ip6 svcplane services handle 2",
                "# new generation 8 by process 99 (nft)",
            ],
        );
        assert_eq!(
            got,
            vec![Notice::Changed {
                pid: 99,
                command: "nft".into(),
                event: "delete rule ip svcplane services handle 5".into(),
            }]
        );
    }

    #[test]
    fn other_tables_and_families_are_ignored() {
        let got = parse(
            &[],
            &[
                "add table ip other",
                "add chain ip other svcplane",
                "delete rule inet svcplane x handle 3",
                "add table bridge svcplane",
                "# new generation 9 by process 99 (nft)",
                "# new generation 10 by process 98 (nft)",
            ],
        );
        assert_eq!(got, vec![]);
    }

    #[test]
    fn deleting_the_table_is_reported() {
        let got = parse(
            &[],
            &[
                "delete table ip6 svcplane",
                "# new generation 11 by process 7 (iptables-nft)",
            ],
        );
        assert_eq!(
            got,
            vec![Notice::Changed {
                pid: 7,
                command: "iptables-nft".into(),
                event: "delete table ip6 svcplane".into(),
            }]
        );
    }

    #[test]
    fn remembered_pids_are_bounded() {
        let pids = OwnPids::default();
        for p in 0..200 {
            pids.record(p);
        }
        assert!(!pids.contains(0));
        assert!(pids.contains(199));
    }
}
