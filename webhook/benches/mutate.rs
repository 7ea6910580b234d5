//! Micro-benchmark of the mutation core: time per typical pod for `mutate` alone, and for
//! the server's whole step around it, `admission::answer` (read the AdmissionReview body,
//! decide, serialize the response with its patch); then `admission::answer` on 3 MiB
//! reviews of several shapes. One core.
//! Plain `harness = false` timing with `Instant`: 7 runs, the median reported.
//!
//! Run: `cargo bench -p holysheep-webhook --bench mutate`

use std::hint::black_box;
use std::time::{Duration, Instant};

use holysheep_webhook::admission;
use holysheep_webhook::annotations::Overrides;
use holysheep_webhook::mutation::mutate;
use holysheep_webhook::settings::Settings;
use holysheep_webhook::sidecar::SidecarSpec;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

mod reviews;
use reviews::MIB;

/// A pod as a Deployment creates it: generateName, labels, a few annotations, an app
/// container with env, ports, probes and mounts, a log-shipper sidecar, two volumes.
fn typical_pod() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8c6b5-",
            "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "checkout", "pod-template-hash": "7d9f8c6b5"},
            "annotations": {"holysheep/inject": "true", "team": "payments"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "checkout-7d9f8c6b5", "uid": "b1c2", "controller": true}]
        },
        "spec": {
            "serviceAccountName": "checkout",
            "containers": [
                {
                    "name": "checkout",
                    "image": "registry.local/checkout:2.4.1",
                    "ports": [{"name": "http", "containerPort": 3000}],
                    "env": [
                        {"name": "RUST_LOG", "value": "info"},
                        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}
                    ],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
                },
                {
                    "name": "log-shipper",
                    "image": "registry.local/shipper:1.0",
                    "volumeMounts": [{"name": "logs", "mountPath": "/logs"}]
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "logs", "emptyDir": {}}]
        }
    })
}

/// Median over `runs` of the mean time per call over `iterations` calls.
fn median_per_call(runs: usize, iterations: u32, mut f: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed() / iterations
        })
        .collect();
    samples.sort();
    samples[runs / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let settings = Settings::default();
    let pod_json = typical_pod();
    let pod_bytes = serde_json::to_vec(&pod_json)?;
    let pod: Pod = serde_json::from_value(pod_json)?;
    let patch = mutate(&pod, &settings)?.ok_or("typical pod not injected")?;
    let patch_bytes = serde_json::to_vec(&patch)?.len();

    // Warm-up, then measure.
    median_per_call(1, 2_000, || {
        black_box(mutate(black_box(&pod), &settings).ok());
    });
    let core = median_per_call(7, 20_000, || {
        black_box(mutate(black_box(&pod), &settings).ok());
    });
    let review_bytes = serde_json::to_vec(&reviews::envelope(typical_pod()))?;
    let full = median_per_call(7, 10_000, || {
        black_box(admission::answer(black_box(&review_bytes), &settings).ok());
    });
    let spec = SidecarSpec::resolve(&settings, Overrides::default());
    let build = median_per_call(7, 20_000, || {
        black_box(black_box(&spec).container());
    });
    let container = spec.container();
    let encode = median_per_call(7, 20_000, || {
        black_box(serde_json::to_value(black_box(&container)).ok());
    });
    println!(
        "typical pod: {} bytes of JSON in, {} operations / {patch_bytes} bytes of patch out",
        pod_bytes.len(),
        patch.len()
    );
    println!(
        "mutate (core only):                 median {:>8.2} us per pod",
        core.as_secs_f64() * 1e6
    );
    println!(
        "admission::answer (review in, out): median {:>8.2} us per pod ({} bytes in)",
        full.as_secs_f64() * 1e6,
        review_bytes.len()
    );
    println!(
        "  of which: build the sidecar Container  median {:>8.2} us",
        build.as_secs_f64() * 1e6
    );
    println!(
        "  of which: Container to serde_json::Value median {:>8.2} us",
        encode.as_secs_f64() * 1e6
    );

    println!("admission::answer on large reviews (read, decide, serialize):");
    let large: [(&str, Vec<u8>); 4] = [
        (
            "3 MiB, one long env value (injected)",
            reviews::text(3 * MIB)?,
        ),
        (
            "3 MiB of minimal volumes (injected)",
            reviews::volumes(3 * MIB)?,
        ),
        (
            "2.9 MiB declaring every port (refused)",
            reviews::ports(3 * MIB * 29 / 30)?,
        ),
        (
            "3 MiB of minimal containers (refused)",
            reviews::containers(3 * MIB)?,
        ),
    ];
    for (title, body) in &large {
        let answer = admission::answer(body, &settings)?;
        let time = median_per_call(7, 10, || {
            black_box(admission::answer(black_box(body), &settings).ok());
        });
        println!(
            "  {title:<40} median {:>8.2} ms  ({:?}, {} bytes out)",
            time.as_secs_f64() * 1e3,
            answer.result,
            answer.body.len()
        );
    }
    Ok(())
}
