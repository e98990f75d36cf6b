//! The deployment files: every YAML file parses; the driftd.toml of the
//! Kubernetes ConfigMap passes `driftd check-config`; the PrometheusRule
//! carries exactly the rule files' groups; the Grafana dashboard is a
//! dashboard model; the systemd unit and the Dockerfile have their
//! hardening. `check_queries_against` (called by `prometheus_e2e` once a real
//! Prometheus has data) evaluates every dashboard query and every PromQL
//! expression of the manifests.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;

use crate::support::prom::{repo_root, Prometheus};

fn files_under(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, exts, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            out.push(path);
        }
    }
}

/// Every document of a (multi-document) YAML file.
fn yaml_docs(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .collect()
}

fn docs_of_kind(path: &str, kind: &str) -> Vec<serde_yaml::Value> {
    yaml_docs(&repo_root().join(path))
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("dashboards/driftd.json")).unwrap(),
    )
    .expect("dashboard is JSON")
}

#[test]
fn every_yaml_file_parses() {
    let mut files = Vec::new();
    for dir in ["deploy", "dashboards"] {
        files_under(&repo_root().join(dir), &["yml", "yaml"], &mut files);
    }
    assert!(files.len() >= 10, "{files:?}");
    for f in &files {
        let docs = yaml_docs(f);
        assert!(!docs.is_empty(), "{} is empty", f.display());
        for d in docs {
            assert!(
                d.is_mapping(),
                "{}: a document is not a mapping",
                f.display()
            );
        }
    }
}

#[test]
fn configmap_driftd_toml_passes_check_config() {
    let cms = docs_of_kind("deploy/kubernetes/sidecar.yaml", "ConfigMap");
    assert_eq!(cms.len(), 1);
    let toml = cms[0]["data"]["driftd.toml"]
        .as_str()
        .expect("ConfigMap has driftd.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("driftd.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftd"))
        .args(["check-config", "--config"])
        .arg(&file)
        .env_remove("DRIFTD_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The sidecar wiring: gRPC stays in the pod, HTTP is scraped.
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("127.0.0.1:7700"), "{effective}");
    assert!(effective.contains("0.0.0.0:9700"), "{effective}");
    // The Deployment mounts this ConfigMap and points driftd at it.
    let dep = &docs_of_kind("deploy/kubernetes/sidecar.yaml", "Deployment")[0];
    let containers = dep["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    assert_eq!(containers.len(), 2, "model and driftd containers");
    let driftd = containers.iter().find(|c| c["name"] == "driftd").unwrap();
    assert_eq!(driftd["args"][1].as_str(), Some("/etc/driftd/driftd.toml"));
}

#[test]
fn prometheusrule_carries_the_rule_files() {
    let rule = &docs_of_kind("deploy/kubernetes/prometheusrule.yaml", "PrometheusRule")[0];
    let mut expected = Vec::new();
    for f in ["recording.yml", "alerts.yml"] {
        let doc = &yaml_docs(&repo_root().join("deploy/prometheus").join(f))[0];
        expected.extend(doc["groups"].as_sequence().unwrap().iter().cloned());
    }
    assert_eq!(
        rule["spec"]["groups"].as_sequence().unwrap(),
        &expected,
        "regenerate with python3 deploy/kubernetes/gen_prometheusrule.py"
    );
}

#[test]
fn dashboard_is_a_dashboard_model() {
    let d = dashboard();
    let uid = d["uid"].as_str().expect("uid");
    assert!((8..=40).contains(&uid.len()), "uid length: {uid}");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    assert!(d["title"].is_string());
    assert!(d["id"].is_null(), "provisioned dashboards have id null");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["model", "version", "feature", "window"]);
    let mut ids = std::collections::BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "gridPos.{k} of {}", p["title"]);
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "prometheus", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no targets", p["title"]);
        for t in targets {
            assert!(t["refId"].is_string() && t["expr"].is_string());
        }
    }
    // The provisioned datasource has the uid the panels use.
    let ds =
        &yaml_docs(&repo_root().join("dashboards/provisioning/datasources/prometheus.yaml"))[0];
    assert_eq!(ds["datasources"][0]["uid"], "prometheus");
}

#[test]
fn systemd_unit_and_dockerfile_are_hardened() {
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/driftd.service")).unwrap();
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=driftd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "ExecStart=/usr/local/bin/driftd --config /etc/driftd/driftd.toml",
    ] {
        assert!(
            unit.contains(directive),
            "driftd.service lacks {directive:?}"
        );
    }
    let docker = std::fs::read_to_string(repo_root().join("deploy/docker/Dockerfile")).unwrap();
    let froms = docker.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    let user = docker
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
}

/// A query to evaluate, where it came from, and whether it must return
/// data (not only parse).
pub struct Query {
    pub origin: String,
    pub expr: String,
    pub needs_data: bool,
}

/// Metrics that driftd does not export (yet): queries on them only have
/// to parse. Empty now that the webhook outbox exports its metrics.
const NOT_EXPORTED: &[&str] = &[];

fn substitute(expr: &str, model: &str, version: &str) -> String {
    expr.replace("{{args.model}}", model)
        .replace("{{args.version}}", version)
        .replace("{{ target }}", model)
        .replace("{{ interval }}", "1m")
        .replace("version=\"canary\"", &format!("version=\"{version}\""))
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$model", model)
        .replace("$version", version)
        .replace("$feature", "amount|stable|score|country")
        .replace("$window", ".*")
}

/// Every PromQL expression of the dashboard and of the manifests, with
/// template variables replaced by concrete values.
pub fn queries(model: &str, version: &str) -> Vec<Query> {
    let mut out = Vec::new();
    let needs = |e: &str| !NOT_EXPORTED.iter().any(|m| e.contains(m));
    let d = dashboard();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = substitute(t["expr"].as_str().unwrap(), model, version);
            out.push(Query {
                origin: format!("dashboard panel {:?}", p["title"]),
                needs_data: needs(&expr),
                expr,
            });
        }
    }
    for t in docs_of_kind(
        "deploy/kubernetes/analysistemplate.yaml",
        "AnalysisTemplate",
    ) {
        for m in t["spec"]["metrics"].as_sequence().unwrap() {
            if let Some(q) = m["provider"]["prometheus"]["query"].as_str() {
                out.push(Query {
                    origin: format!("AnalysisTemplate metric {:?}", m["name"]),
                    expr: substitute(q, model, version),
                    needs_data: true,
                });
            }
        }
    }
    for t in docs_of_kind("deploy/kubernetes/flagger.yaml", "MetricTemplate") {
        out.push(Query {
            origin: "Flagger MetricTemplate".into(),
            expr: substitute(t["spec"]["query"].as_str().unwrap(), model, version),
            needs_data: true,
        });
    }
    for r in docs_of_kind("deploy/kubernetes/prometheusrule.yaml", "PrometheusRule") {
        for g in r["spec"]["groups"].as_sequence().unwrap() {
            for rule in g["rules"].as_sequence().unwrap() {
                let expr = rule["expr"].as_str().unwrap().to_string();
                // Recording rules must produce data; an alert's expression
                // is empty while it does not fire, so it only has to parse.
                let recording = rule["record"].is_string();
                out.push(Query {
                    origin: format!(
                        "PrometheusRule {}",
                        rule["record"].as_str().or(rule["alert"].as_str()).unwrap()
                    ),
                    needs_data: recording && needs(&expr),
                    expr,
                });
            }
        }
    }
    out
}

/// Sends every query and every dashboard variable query to `prom`.
pub async fn check_queries_against(prom: &Prometheus, model: &str, version: &str) {
    // rate() needs two samples in its range: wait for three scrapes of
    // every target.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let scrapes = prom
            .query("min(count_over_time(up{job=\"driftd\"}[1m]))")
            .await
            .ok()
            .and_then(|r| crate::support::prom::first_value(&r));
        if scrapes.is_some_and(|n| n >= 3.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than three scrapes in 30 s: {scrapes:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let qs = queries(model, version);
    assert!(qs.len() > 30, "{} queries", qs.len());
    let mut parse_only = Vec::new();
    for q in &qs {
        let res = prom
            .query(&q.expr)
            .await
            .unwrap_or_else(|e| panic!("{}: {:?} fails: {e}", q.origin, q.expr));
        if q.needs_data {
            assert!(
                !res.is_empty(),
                "{}: {:?} returned no data",
                q.origin,
                q.expr
            );
        } else {
            parse_only.push(q.origin.clone());
        }
    }
    eprintln!("queries that only had to parse: {parse_only:?}");
    // Grafana's label_values(selector, label) is the label values API.
    let d = dashboard();
    for v in d["templating"]["list"].as_array().unwrap() {
        let q = v["definition"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {} is not label_values: {q}", v["name"]));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let selector = substitute(selector.trim(), model, version);
        let values = prom
            .label_values(&selector, label.trim())
            .await
            .unwrap_or_else(|e| panic!("variable {}: {e}", v["name"]));
        assert!(!values.is_empty(), "variable {} has no values", v["name"]);
    }
}
