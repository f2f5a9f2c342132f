use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A control-plane child process whose output goes to a log file.
///
/// Its stdin is a pipe only we hold (the lifeline, see `tests/controlplane/lifeline`): when this
/// process ends in any way, the child sees EOF and stops itself.
#[derive(Debug)]
pub(crate) struct Process {
    pub name: &'static str,
    child: Child,
    lifeline: Option<ChildStdin>,
    pub log: PathBuf,
    stopped: bool,
}

impl Process {
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self> {
        let out = File::create(&log).map_err(|source| Error::Io {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| Error::Io {
            path: log.clone(),
            source,
        })?;
        let mut child = Command::new(program)
            .args(args)
            .env("SVCPLANE_LIFELINE", "stdin")
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn { name, source })?;
        let lifeline = child.stdin.take();
        Ok(Self {
            name,
            child,
            lifeline,
            log,
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::ExitedEarly {
                name: self.name,
                status: status.to_string(),
                log: self.log.clone(),
                tail: self.log_tail(),
            }),
            _ => Ok(()),
        }
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        const TAIL_BYTES: u64 = 4096;
        let Ok(mut f) = File::open(&self.log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Cuts the lifeline (the child stops itself, gracefully) and waits up to `grace`, then kills.
    pub fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        drop(self.lifeline.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
