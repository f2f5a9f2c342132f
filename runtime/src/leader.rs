//! Leader election on a coordination.k8s.io Lease, as client-go's `leaderelection` does it:
//! a holder renews every retry period; a candidate takes the lease once the record has not
//! changed for a whole lease duration, measured on its own clock (so clock skew between
//! replicas does not matter); a leader that shuts down releases the lease so the next one need
//! not wait.
//!
//! The one rule that keeps two replicas from writing at once: a leader whose renewals have not
//! succeeded within the renew deadline stops leading, and every round (a GET and a PUT) runs
//! under that deadline, so a stalled connection cannot keep a replica "leading". The deadline is
//! shorter than the lease, and a candidate waits a whole lease after the last renewal it saw, so
//! the old leader has stepped down before anyone else can take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::{Error, Result};

/// Leader-election flags, spelled as kube-controller-manager spells them.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderArgs {
    /// Take a Lease before writing, so only one replica writes.
    #[arg(long, env = "SVCPLANE_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Name of the Lease (default: the binary's name).
    #[arg(long, env = "SVCPLANE_LEADER_ELECT_RESOURCE_NAME")]
    pub leader_elect_resource_name: Option<String>,
    /// Namespace of the Lease.
    #[arg(
        long,
        env = "SVCPLANE_LEADER_ELECT_RESOURCE_NAMESPACE",
        default_value = "kube-system"
    )]
    pub leader_elect_resource_namespace: String,
    /// How long a lease lasts without renewal before another replica may take it.
    #[arg(long, env = "SVCPLANE_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = crate::parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops leading (less than the lease).
    #[arg(long, env = "SVCPLANE_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = crate::parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often to try to take or renew the lease.
    #[arg(long, env = "SVCPLANE_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = crate::parse_duration)]
    pub leader_elect_retry_period: Duration,
}

impl LeaderArgs {
    /// client-go's checks: lease duration > renew deadline > 1.2 × retry period. Without them
    /// a leader could still be renewing after another replica took the lease.
    pub fn validate(&self) -> Result<()> {
        let lease = self.leader_elect_lease_duration;
        let renew = self.leader_elect_renew_deadline;
        let retry = self.leader_elect_retry_period;
        if retry.is_zero() || renew <= retry.mul_f64(1.2) || lease <= renew {
            return Err(Error::LeaderTimings {
                lease,
                renew,
                retry,
            });
        }
        Ok(())
    }

    /// The Lease's name: the flag, else `default`.
    pub fn lease_name(&self, default: &str) -> String {
        self.leader_elect_resource_name
            .clone()
            .unwrap_or_else(|| default.to_owned())
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// What a candidate remembers of the record it last saw.
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    at: Instant,
}

/// Runs the election until `shutdown`, publishing whether we lead on `leading`. `lease` is the
/// Lease's name (see [`LeaderArgs::lease_name`]).
pub async fn run(
    client: Client,
    args: LeaderArgs,
    lease: String,
    identity: String,
    leading: watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &args.leader_elect_resource_namespace);
    let name = lease;
    let deadline = args.leader_elect_renew_deadline;
    let mut observed = Observed {
        record: None,
        at: Instant::now(),
    };
    let mut last_renewal = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let leader = *leading.borrow();
        // A leader's round must finish by its renew deadline; a candidate's gets the same
        // budget so a stalled request cannot wedge it either.
        let budget = if leader {
            deadline.saturating_sub(last_renewal.elapsed())
        } else {
            deadline
        };
        let round = tokio::time::timeout(
            budget,
            try_acquire_or_renew(&api, &name, &identity, &args, &mut observed),
        );
        let result = tokio::select! {
            _ = &mut shutdown => break,
            result = round => result,
        };
        match result {
            Ok(Ok(true)) => {
                last_renewal = Instant::now();
                if !leader {
                    tracing::info!(lease = %name, %identity, "took the lease");
                    leading.send_replace(true);
                }
            }
            Ok(Ok(false)) => {
                if leader {
                    tracing::warn!(lease = %name, "another replica holds the lease");
                    leading.send_replace(false);
                }
            }
            failed => {
                match failed {
                    Ok(Err(error)) => tracing::warn!(lease = %name, %error, "lease request failed"),
                    _ => tracing::warn!(lease = %name, ?budget, "lease request timed out"),
                }
                if leader && last_renewal.elapsed() >= deadline {
                    tracing::warn!(lease = %name, ?deadline, "could not renew within the deadline; stepping down");
                    leading.send_replace(false);
                }
            }
        }
        // Sleep to the next round, but never past a leader's deadline.
        let mut pause = args.leader_elect_retry_period;
        if *leading.borrow() {
            pause = pause.min(deadline.saturating_sub(last_renewal.elapsed()));
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        // Bounded too: a stalled API must not hold up the shutdown.
        let _ = tokio::time::timeout(deadline, release(&api, &name, &identity)).await;
    }
}

/// One round: `Ok(true)` when we hold the lease after it.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    args: &LeaderArgs,
    observed: &mut Observed,
) -> kube::Result<bool> {
    let duration = i32::try_from(args.leader_elect_lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = Some((holder.clone(), spec.renew_time.clone()));
    if record != observed.record {
        observed.record = record;
        observed.at = Instant::now();
    }
    let held_by_me = holder.as_deref() == Some(identity);
    let lease_duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .unwrap_or(args.leader_elect_lease_duration);
    let expired = holder.is_none() || observed.at.elapsed() > lease_duration;
    if !held_by_me && !expired {
        return Ok(false);
    }
    if !held_by_me {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(identity.to_owned());
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(duration);
    // The resourceVersion in `lease` makes this fail if anyone wrote in between.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(written) => {
            let spec = written.spec.unwrap_or_default();
            observed.record = Some((spec.holder_identity, spec.renew_time));
            observed.at = Instant::now();
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up on a clean shutdown: no holder, so the next replica takes it at once.
async fn release(api: &Api<Lease>, name: &str, identity: &str) {
    let Ok(Some(mut lease)) = api.get_opt(name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %name, "released the lease"),
        Err(error) => tracing::warn!(lease = %name, %error, "could not release the lease"),
    }
}
