use std::future::Future;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::{Layer, Service};

use crate::{Error, Result};

/// How to reach the API server, shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Path to a kubeconfig file. Without it: $KUBECONFIG or ~/.kube/config, then the in-cluster
    /// service account.
    #[arg(long, env = "SVCPLANE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Sustained rate of API requests per second this process may send.
    #[arg(long, env = "SVCPLANE_KUBE_API_QPS", default_value_t = 20.0)]
    pub kube_api_qps: f64,
    /// Requests allowed in a burst above --kube-api-qps.
    #[arg(long, env = "SVCPLANE_KUBE_API_BURST", default_value_t = 30)]
    pub kube_api_burst: u32,
    /// Longest wait for the API server to answer one request (watches excepted: they are long
    /// by design). A stalled request fails instead of holding a worker or a lease renewal.
    #[arg(long, env = "SVCPLANE_KUBE_API_TIMEOUT", default_value = "30s", value_parser = crate::parse_duration)]
    pub kube_api_timeout: Duration,
}

impl ClientArgs {
    /// The client configuration these flags select.
    pub async fn config(&self) -> Result<Config> {
        match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|source| Error::KubeconfigRead {
                    path: path.clone(),
                    source,
                })?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| Error::KubeconfigRead {
                        path: path.clone(),
                        source,
                    })
            }
            None => Config::infer().await.map_err(Error::ConfigInfer),
        }
    }

    /// A client whose requests are held to --kube-api-qps/--kube-api-burst and bounded by
    /// --kube-api-timeout.
    pub async fn client(&self) -> Result<Client> {
        let config = self.config().await?;
        let limit = RateLimitLayer::new(self.kube_api_qps, self.kube_api_burst)?;
        let timeout = RequestTimeoutLayer::new(self.kube_api_timeout)?;
        Ok(kube::client::ClientBuilder::try_from(config)
            .map_err(Error::ClientBuild)?
            .with_layer(&timeout)
            .with_layer(&limit)
            .build())
    }
}

/// A token bucket in front of the API client, like client-go's QPS/burst limiter: requests wait
/// for a token instead of failing. Watches count once, when they start.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl RateLimitLayer {
    pub fn new(qps: f64, burst: u32) -> Result<Self> {
        let invalid = || Error::InvalidRateLimit { qps, burst };
        if !(qps.is_finite() && qps > 0.0) {
            return Err(invalid());
        }
        let burst = NonZeroU32::new(burst).ok_or_else(invalid)?;
        let period = Duration::from_secs_f64(1.0 / qps);
        let quota = Quota::with_period(period)
            .ok_or_else(invalid)?
            .allow_burst(burst);
        Ok(Self {
            limiter: Arc::new(RateLimiter::direct(quota)),
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            wait: None,
            permitted: false,
        }
    }
}

/// The service [`RateLimitLayer`] builds.
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A token was taken for the next call.
    permitted: bool,
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("permitted", &self.permitted)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.permitted {
            if let Some(wait) = self.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match self.limiter.check() {
                Ok(()) => self.permitted = true,
                Err(not_until) => {
                    let delay = not_until.wait_time_from(DefaultClock::default().now());
                    self.wait = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.permitted = false;
        self.inner.call(req)
    }
}

/// Fails a request the API server has not started answering within the timeout, like
/// client-go's `rest.Config.Timeout`, except for watches (`watch=true`), which stay open by
/// design. The rate limiter sits outside it, so time spent waiting for a token does not count.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeoutLayer {
    timeout: Duration,
}

impl RequestTimeoutLayer {
    pub fn new(timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::InvalidTimeout);
        }
        Ok(Self { timeout })
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service [`RequestTimeoutLayer`] builds.
#[derive(Debug, Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
}

/// The error a timed-out request fails with.
#[derive(Debug, thiserror::Error)]
#[error("the API server did not answer within {0:?}")]
pub struct TimedOut(pub Duration);

fn is_watch<B>(req: &http::Request<B>) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

impl<S, B> Service<http::Request<B>> for RequestTimeout<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let watch = is_watch(&req);
        let timeout = self.timeout;
        let response = self.inner.call(req);
        Box::pin(async move {
            if watch {
                return response.await.map_err(Into::into);
            }
            match tokio::time::timeout(timeout, response).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(TimedOut(timeout)) as tower::BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests;
