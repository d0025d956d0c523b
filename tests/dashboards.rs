//! The Grafana dashboard and the Prometheus alerts in `dashboards/` against a real Keyway:
//!
//! - every metric name used by a query of `dashboards/keyway.json` (panels and template
//!   variables), by a rule of `dashboards/alerts.yaml` and by a series of
//!   `dashboards/alerts.test.yaml` is exported by a running Keyway (histogram series through
//!   their `_bucket`/`_sum`/`_count` suffixes), and every metric Keyway exports is documented in
//!   `docs/metrics.md`;
//! - the labelled series that alerts take `increase()` or ratios of exist at 0 on a fresh
//!   Keyway, and `keyway_server_up` reads 1 for a healthy server;
//! - `promtool check rules` accepts the alerts and `promtool test rules` passes their unit tests;
//! - every dashboard query parses (`promtool check rules` on one recording rule per query, with
//!   Grafana's variables substituted) and filters on the `job` and `instance` variables.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use redis::Commands;
use support::{Proxy, RawClient, RedisServer};

/// Series Prometheus itself adds to every target (not Keyway's, but fine to use).
const PROMETHEUS_SERIES: &[&str] = &["up"];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names of an expression.

/// A metric selector found in an expression: its name (empty for a `{...}` selector without
/// one) and the text between its braces (empty without braces).
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    name: String,
    matchers: String,
}

/// Keywords of PromQL that look like identifiers but are not metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
];

/// Keywords followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the quoted string starting at `i` (which holds the quote).
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// Index just past the bracket closing the one at `i`, skipping strings inside.
fn skip_group(b: &[u8], i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' | b'\'' | b'`' => {
                j = skip_string(b, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    b.len()
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Every metric selector of a PromQL expression. Strings, label matchers, range and subquery
/// brackets, label lists after `by`/`on`/..., function names, keywords and numbers (with
/// duration units) are not metric names.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'[' => i = skip_group(b, i, b'[', b']'),
            b'{' => {
                let end = skip_group(b, i, b'{', b'}');
                out.push(Selector {
                    name: String::new(),
                    matchers: expr[i + 1..end.saturating_sub(1)].to_string(),
                });
                i = end;
            }
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = skip_space(b, i);
                let lower = word.to_ascii_lowercase();
                // `sum by (...) (...)`: an aggregation whose grouping comes first.
                let rest = &expr[next..];
                let grouping_follows = ["by", "without"].iter().any(|k| {
                    rest.strip_prefix(k)
                        .is_some_and(|r| r.trim_start().starts_with('('))
                });
                if grouping_follows {
                    // The aggregation's name; the grouping is skipped as the next word.
                } else if next < b.len() && b[next] == b'(' {
                    if GROUPING.contains(&lower.as_str()) {
                        i = skip_group(b, next, b'(', b')');
                    }
                    // Otherwise a function or an aggregation: its arguments are lexed next.
                } else if !KEYWORDS.contains(&lower.as_str()) {
                    let mut matchers = String::new();
                    if next < b.len() && b[next] == b'{' {
                        let end = skip_group(b, next, b'{', b'}');
                        matchers = expr[next + 1..end.saturating_sub(1)].to_string();
                        i = end;
                    }
                    out.push(Selector {
                        name: word.to_string(),
                        matchers,
                    });
                }
            }
            _ => i += 1,
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// What Keyway exports.

/// Metric families of a scrape, name to type, from its `# TYPE` lines.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.trim().split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

/// Whether `name` is a series name of an exported family: a counter or gauge by its own name,
/// a histogram only through `_bucket`, `_sum` and `_count` (a summary through `_sum`, `_count`
/// and its own name, for quantiles). A histogram's bare name is no series.
fn exported(families: &BTreeMap<String, String>, name: &str) -> bool {
    if PROMETHEUS_SERIES.contains(&name) {
        return true;
    }
    if let Some(kind) = families.get(name) {
        if kind != "histogram" {
            return true;
        }
    }
    let suffixed = |suffix: &str, kinds: &[&str]| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|k| kinds.contains(&k.as_str()))
    };
    suffixed("_bucket", &["histogram"]) || suffixed("_sum", &["histogram", "summary"]) || {
        suffixed("_count", &["histogram", "summary"])
    }
}

// ---------------------------------------------------------------------------------------------
// The queries of the dashboard and the rules.

/// Every `expr` string anywhere in the dashboard JSON, with where it is.
fn json_exprs(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            let title = m
                .get("title")
                .and_then(|t| t.as_str())
                .map(|t| format!("{at}/{t}"))
                .unwrap_or_else(|| at.to_string());
            for (k, child) in m {
                if k == "expr" {
                    if let Some(e) = child.as_str() {
                        out.push((title.clone(), e.to_string()));
                    }
                } else {
                    json_exprs(child, &title, out);
                }
            }
        }
        serde_json::Value::Array(a) => {
            for child in a {
                json_exprs(child, at, out);
            }
        }
        _ => {}
    }
}

/// The series selector of a Grafana template variable query: `label_values(SEL, label)` gives
/// SEL, `label_values(label)` nothing, `query_result(EXPR)` EXPR.
fn variable_expr(query: &str) -> Option<String> {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return inner
            .rsplit_once(',')
            .map(|(sel, _)| sel.trim().to_string());
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(inner.to_string());
    }
    None
}

/// The queries of the dashboard's `query` template variables, with their names.
fn variable_exprs(dash: &serde_json::Value) -> Vec<(String, String)> {
    let empty = Vec::new();
    let vars = dash["templating"]["list"].as_array().unwrap_or(&empty);
    vars.iter()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| {
            let q = v["query"]["query"].as_str().or(v["query"].as_str())?;
            Some((format!("variable {}", v["name"]), variable_expr(q)?))
        })
        .collect()
}

/// The `expr:` values of a rule file, from its lines: plain, quoted, or block (`|`, `>`)
/// scalars. Enough for rule files written by hand; the count is checked against the rules.
fn yaml_exprs(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut name = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        for key in ["- alert:", "- record:", "alert:", "record:"] {
            if let Some(n) = trimmed.strip_prefix(key) {
                name = n.trim().to_string();
                break;
            }
        }
        let rest = trimmed
            .strip_prefix("expr:")
            .or_else(|| trimmed.strip_prefix("- expr:"));
        i += 1;
        let Some(rest) = rest else { continue };
        let rest = rest.trim();
        let expr = if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len() {
                let l = lines[i];
                let ind = l.len() - l.trim_start().len();
                if !l.trim().is_empty() && ind <= indent {
                    break;
                }
                block.push(l.trim());
                i += 1;
            }
            block.join("\n")
        } else if let Some(s) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            s.replace("''", "'")
        } else if let Some(s) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            s.replace("\\\"", "\"").replace("\\\\", "\\")
        } else {
            rest.split(" #").next().unwrap_or(rest).trim().to_string()
        };
        out.push((name.clone(), expr));
    }
    out
}

/// Rules of a rule file (lines starting a rule), to check that every one's `expr` was read.
fn yaml_rule_count(text: &str) -> usize {
    text.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("- alert:") || l.starts_with("- record:"))
        .count()
}

/// The metric names of the input series of a `promtool test rules` file.
fn test_series_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- series:"))
        .map(|s| {
            let s = s.trim().trim_matches(|c| c == '\'' || c == '"');
            s.split('{').next().unwrap_or(s).trim().to_string()
        })
        .collect()
}

/// A dashboard query with Grafana's variables replaced so that Prometheus can parse it:
/// interval variables (`$__rate_interval`, `$__interval`, `$__range`) by `5m`, any other
/// (`$instance`, `${instance}`, `${instance:regex}`) by `.*`.
fn substitute_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut name = String::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
        }
        out.push_str(if name.starts_with("__") { "5m" } else { ".*" });
    }
    out
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("promtool is installed (Debian package prometheus; scripts/ensure-deps.sh)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("dashboards/keyway.json"))
        .unwrap_or_else(|e| panic!("dashboards/keyway.json is not JSON: {e}"))
}

/// Every query of the dashboard and the alerts, with where it is.
fn all_exprs() -> Vec<(String, String)> {
    let dash = dashboard();
    let mut exprs = Vec::new();
    json_exprs(&dash, "keyway.json", &mut exprs);
    exprs.extend(
        variable_exprs(&dash)
            .into_iter()
            .map(|(w, e)| (format!("keyway.json {w}"), e)),
    );
    let alerts = read("dashboards/alerts.yaml");
    exprs.extend(
        yaml_exprs(&alerts)
            .into_iter()
            .map(|(w, e)| (format!("alerts.yaml {w}"), e)),
    );
    exprs
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// A Keyway with traffic of every kind the dashboard shows, scraped.
fn scrape_with_traffic() -> String {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let proxy = Proxy::start(&[&a, &b]);
    let mut con = proxy.client();
    for i in 0..20 {
        let _: () = con.set(format!("d{i}"), i).unwrap();
        let _: i64 = con.get(format!("d{i}")).unwrap();
    }
    let _: () = con.set("text", "not a number").unwrap();
    // An error reply from a server, an unknown command, a refused command.
    let _ = con.incr::<_, _, i64>("text", 1).unwrap_err();
    let _ = redis::cmd("NOSUCHCOMMAND")
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    let _ = redis::cmd("MOVE")
        .arg("k")
        .arg("1")
        .query::<redis::Value>(&mut con)
        .unwrap_err();
    // A protocol error: Keyway answers and closes.
    let mut raw = RawClient::connect(proxy.addr);
    raw.send(b"*1\r\n$x\r\n");
    let _ = raw.read_to_close();
    proxy.metrics()
}

/// The labelled series that alerts take `increase()` or ratios of exist from the start, at 0
/// (docs/metrics.md), so that the first increment after a restart is seen.
const SERIES_AT_START: &[&str] = &[
    r#"keyway_config_reloads_total{outcome="applied"}"#,
    r#"keyway_config_reloads_total{outcome="rejected"}"#,
    r#"keyway_client_disconnects_total{reason="drain"}"#,
    r#"keyway_client_disconnects_total{reason="idle_timeout"}"#,
    r#"keyway_client_disconnects_total{reason="output_limit"}"#,
    r#"keyway_client_disconnects_total{reason="protocol_error"}"#,
    r#"keyway_twophase_transactions_total{outcome="committed"}"#,
    r#"keyway_twophase_transactions_total{outcome="conflict"}"#,
    r#"keyway_twophase_transactions_total{outcome="failed"}"#,
    r#"keyway_twophase_transactions_total{outcome="unavailable"}"#,
    r#"keyway_twophase_prepares_total{vote="no"}"#,
    r#"keyway_twophase_prepares_total{vote="yes"}"#,
    r#"keyway_twophase_commits_total{outcome="committed"}"#,
    r#"keyway_twophase_commits_total{outcome="failed"}"#,
    r#"keyway_twophase_recoveries_total{decision="abort"}"#,
    r#"keyway_twophase_recoveries_total{decision="commit"}"#,
];

#[test]
fn series_used_by_increase_and_ratios_exist_at_start() {
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let scrape = proxy.metrics();
    let missing: Vec<&str> = SERIES_AT_START
        .iter()
        .copied()
        .filter(|s| !scrape.lines().any(|l| l == format!("{s} 0")))
        .collect();
    assert!(
        missing.is_empty(),
        "not at 0 on a fresh Keyway: {missing:?}\n{scrape}"
    );
    // A healthy server reads up from the start (KeywayServerDown relies on it).
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("keyway_server_up{") && l.ends_with(" 1")),
        "keyway_server_up is not 1 for a healthy server:\n{scrape}"
    );
}

#[test]
fn every_metric_used_by_the_dashboard_and_alerts_is_exported_and_documented() {
    let scrape = scrape_with_traffic();
    let families = families(&scrape);
    assert!(
        [
            "keyway_requests_total",
            "keyway_client_disconnects_total",
            "keyway_config_reloads_total",
            "keyway_twophase_transactions_total",
            "keyway_twophase_prepares_total",
            "keyway_twophase_commits_total",
            "keyway_twophase_recoveries_total",
        ]
        .iter()
        .all(|f| families.contains_key(*f)),
        "traffic did not create the labelled series: {scrape}"
    );

    let exprs = all_exprs();
    let alerts = read("dashboards/alerts.yaml");
    assert_eq!(
        yaml_exprs(&alerts).len(),
        yaml_rule_count(&alerts),
        "one expr read per rule of alerts.yaml"
    );
    let mut used = Vec::new();
    let mut problems = Vec::new();
    for (at, expr) in &exprs {
        let sels = selectors(expr);
        if sels.is_empty() {
            problems.push(format!("{at}: no metric in `{expr}`"));
        }
        for s in sels {
            if s.name.is_empty() {
                problems.push(format!("{at}: selector without a metric name in `{expr}`"));
            } else {
                used.push((at.clone(), s.name));
            }
        }
    }
    let test_file = read("dashboards/alerts.test.yaml");
    let series = test_series_names(&test_file);
    assert!(!series.is_empty(), "alerts.test.yaml has input series");
    used.extend(
        series
            .into_iter()
            .map(|n| ("alerts.test.yaml input series".to_string(), n)),
    );
    for (at, name) in &used {
        if !exported(&families, name) {
            problems.push(format!("{at}: `{name}` is not exported by Keyway"));
        }
    }

    // Every family Keyway exports is documented.
    let doc = read("docs/metrics.md");
    for name in families.keys() {
        if !doc.contains(&format!("`{name}`")) {
            problems.push(format!("docs/metrics.md does not document `{name}`"));
        }
    }
    // And every `keyway_*` name the page mentions exists (series suffixes included).
    for word in doc.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.len() > "keyway_".len()
            && word.starts_with("keyway_")
            && !exported(&families, word)
            && !families.contains_key(word)
        {
            problems.push(format!(
                "docs/metrics.md names `{word}`, which Keyway does not export"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\nexported: {:?}",
        problems.len(),
        problems.join("\n"),
        families.keys().collect::<Vec<_>>()
    );
    // The check saw real queries.
    assert!(used.len() > 40, "only {} metric uses found", used.len());
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_tests_pass() {
    let (ok, out) = promtool(&["check", "rules", "dashboards/alerts.yaml"]);
    assert!(ok, "promtool check rules dashboards/alerts.yaml:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "dashboards/alerts.test.yaml"]);
    assert!(
        ok,
        "promtool test rules dashboards/alerts.test.yaml:\n{out}"
    );
    // Every alert of the rule file has test cases.
    let tests = read("dashboards/alerts.test.yaml");
    for (alert, _) in yaml_exprs(&read("dashboards/alerts.yaml")) {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alerts.test.yaml has no case for {alert}"
        );
    }
}

#[test]
fn every_dashboard_query_parses_and_is_filtered_by_the_variables() {
    let dash = dashboard();
    assert_eq!(dash["schemaVersion"].as_u64().map(|v| v >= 36), Some(true));
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["datasource", "job", "instance"] {
        assert!(vars.contains(&v), "variable {v} missing: {vars:?}");
    }

    let mut exprs = Vec::new();
    json_exprs(&dash, "keyway.json", &mut exprs);
    assert!(exprs.len() > 25, "only {} dashboard queries", exprs.len());

    let mut problems = Vec::new();
    // Every panel and query uses the datasource variable; ids are unique.
    let mut ids = std::collections::BTreeSet::new();
    let empty = Vec::new();
    for p in dash["panels"].as_array().unwrap_or(&empty) {
        let title = p["title"].as_str().unwrap_or("?");
        if !ids.insert(p["id"].as_u64()) {
            problems.push(format!("panel {title}: duplicate id {}", p["id"]));
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("panel {title}: datasource is not ${{datasource}}"));
        }
        for t in p["targets"].as_array().unwrap_or(&empty) {
            if t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "panel {title}: a query's datasource is not ${{datasource}}"
                ));
            }
        }
    }
    // Every selector filters on the job and instance variables.
    for (at, expr) in &exprs {
        for s in selectors(expr) {
            let m = s.matchers.replace(' ', "");
            if !m.contains("job=~\"$job\"") || !m.contains("instance=~\"$instance\"") {
                problems.push(format!(
                    "{at}: `{}` is not filtered by $job and $instance",
                    s.name
                ));
            }
        }
    }

    // One recording rule per query, for promtool to parse.
    let mut rules = String::from("groups:\n  - name: keyway_dashboard_queries\n    rules:\n");
    for (i, (at, expr)) in exprs.iter().enumerate() {
        let e = substitute_variables(expr);
        assert!(!e.contains('$'), "{at}: a variable is left in `{e}`");
        rules.push_str(&format!(
            "      # {}\n      - record: keyway_dashboard_query_{i}\n        expr: {}\n",
            at.replace('\n', " "),
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&path, &rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()]);
    if !ok {
        problems.push(format!(
            "promtool check rules on the dashboard queries:\n{out}\n{rules}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// The helpers above decide what passes; their own edge cases:

#[test]
fn selectors_skip_functions_labels_strings_and_durations() {
    let names = |e: &str| -> Vec<String> { selectors(e).into_iter().map(|s| s.name).collect() };
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (server, le) (rate(keyway_server_request_duration_seconds_bucket{job=~"$job", le!="+Inf"}[$__rate_interval])))"#
        ),
        ["keyway_server_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names(
            r#"label_replace(up == 0 and on (job) group by (job) (last_over_time(keyway_topology_version[1d])), "reason", "x", "", "") or count_values("version", keyway_draining) offset 5m > bool 1e3"#
        ),
        ["up", "keyway_topology_version", "keyway_draining"]
    );
    assert_eq!(
        names("sum(rate(a[5m])) / ignoring(kind) group_left(server) b unless c"),
        ["a", "b", "c"]
    );
    let s = &selectors(r#"m{instance=~"$instance"}"#)[0];
    assert_eq!(s.matchers, r#"instance=~"$instance""#);
    assert_eq!(selectors(r#"{__name__="x"}"#)[0].name, "");
}

#[test]
fn histogram_series_count_only_with_their_suffixes() {
    let f: BTreeMap<String, String> = [
        ("keyway_request_duration_seconds", "histogram"),
        ("keyway_requests_total", "counter"),
        ("keyway_client_connections", "gauge"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for ok in [
        "keyway_request_duration_seconds_bucket",
        "keyway_request_duration_seconds_sum",
        "keyway_request_duration_seconds_count",
        "keyway_requests_total",
        "keyway_client_connections",
        "up",
    ] {
        assert!(exported(&f, ok), "{ok}");
    }
    for bad in [
        "keyway_request_duration_seconds",
        "keyway_requests_total_count",
        "keyway_client_connections_bucket",
        "keyway_requests",
        "keyway_nope",
    ] {
        assert!(!exported(&f, bad), "{bad}");
    }
}

#[test]
fn variables_are_substituted_and_rule_exprs_are_read() {
    assert_eq!(
        substitute_variables(
            r#"rate(m{instance=~"$instance",job=~"${job}",p=~"${pod:regex}"}[$__rate_interval])"#
        ),
        r#"rate(m{instance=~".*",job=~".*",p=~".*"}[5m])"#
    );
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: a == 0 # c\n      - alert: B\n        expr: |\n          sum(b)\n            > 1\n        for: 1m\n      - record: C\n        expr: 'c{x=''y''}'\n";
    assert_eq!(
        yaml_exprs(yaml),
        [
            ("A".to_string(), "a == 0".to_string()),
            ("B".to_string(), "sum(b)\n> 1".to_string()),
            ("C".to_string(), "c{x='y'}".to_string()),
        ]
    );
    assert_eq!(yaml_rule_count(yaml), 3);
    assert_eq!(
        variable_expr(r#"label_values(keyway_topology_version{job=~"$job"}, instance)"#).as_deref(),
        Some(r#"keyway_topology_version{job=~"$job"}"#)
    );
    assert_eq!(variable_expr("label_values(job)"), None);
}
