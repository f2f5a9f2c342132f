use std::convert::Infallible;
use std::time::Instant;

use tower::ServiceExt;

use super::*;

#[test]
fn rejects_rates_that_would_never_send() {
    for (qps, burst) in [(0.0, 1), (-1.0, 1), (f64::NAN, 1), (5.0, 0)] {
        assert!(
            matches!(
                RateLimitLayer::new(qps, burst),
                Err(Error::InvalidRateLimit { .. })
            ),
            "{qps}/{burst}"
        );
    }
}

#[tokio::test]
async fn requests_beyond_the_burst_wait_for_tokens() {
    // 20 per second with a burst of 2: the first two go at once, the next three wait ~50 ms
    // each. Only a lower bound is asserted: a slow machine can be slower, never faster.
    let layer = RateLimitLayer::new(20.0, 2).expect("valid");
    let mut svc = layer.layer(tower::service_fn(
        |x: u32| async move { Ok::<_, Infallible>(x) },
    ));
    let start = Instant::now();
    for i in 0..5u32 {
        let got = svc
            .ready()
            .await
            .expect("ready")
            .call(i)
            .await
            .expect("call");
        assert_eq!(got, i);
        if i == 1 {
            assert!(
                start.elapsed() < Duration::from_millis(40),
                "burst passes at once"
            );
        }
    }
    assert!(
        start.elapsed() >= Duration::from_millis(140),
        "three requests past the burst took {:?}",
        start.elapsed()
    );
}

#[test]
fn flags_parse_with_defaults_and_overrides() {
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        client: ClientArgs,
    }
    let args = <Args as clap::Parser>::try_parse_from(["x"]).expect("defaults");
    assert_eq!(args.client.kube_api_qps, 20.0);
    assert_eq!(args.client.kube_api_burst, 30);
    assert!(args.client.kubeconfig.is_none());
    let args = <Args as clap::Parser>::try_parse_from([
        "x",
        "--kubeconfig",
        "/tmp/kc",
        "--kube-api-qps",
        "5",
        "--kube-api-burst",
        "10",
    ])
    .expect("overrides");
    assert_eq!(
        args.client.kubeconfig.as_deref(),
        Some(std::path::Path::new("/tmp/kc"))
    );
    assert_eq!(args.client.kube_api_qps, 5.0);
    assert_eq!(args.client.kube_api_burst, 10);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_request_times_out_but_a_watch_does_not() {
    let layer = RequestTimeoutLayer::new(Duration::from_secs(2)).expect("valid");
    let svc = layer.layer(tower::service_fn(|_req: http::Request<()>| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, Infallible>("answered")
    }));
    let get = http::Request::get("/api/v1/pods?limit=500")
        .body(())
        .expect("request");
    let error = svc.clone().oneshot(get).await.expect_err("times out");
    assert!(error.is::<TimedOut>(), "{error}");
    let watch = http::Request::get("/api/v1/pods?watch=true&resourceVersion=1")
        .body(())
        .expect("request");
    assert_eq!(svc.oneshot(watch).await.expect("watch waits"), "answered");
    assert!(matches!(
        RequestTimeoutLayer::new(Duration::ZERO),
        Err(Error::InvalidTimeout)
    ));
}
