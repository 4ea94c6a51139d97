//! etcd's JSON gateway (`/v3/...`) side by side with etcd 3.4: the same HTTP requests go to a
//! Mend member and to an etcd member, and the answers (status and JSON, field by field) must be
//! the same, once what differs by nature is set aside: cluster and member IDs, raft terms,
//! tokens, hashes and versions.

mod cluster;

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cluster::{Cluster, Etcd, HttpResponse, Options};
use serde_json::{Value, json};

/// One server under test and the tokens its users got.
struct Side {
    name: &'static str,
    port: u16,
    tokens: HashMap<String, String>,
}

impl Side {
    fn post(&self, path: &str, user: Option<&str>, body: &str) -> HttpResponse {
        let token = user.map(|u| self.tokens[u].as_str());
        HttpResponse::post(self.port, path, token, body)
            .unwrap_or_else(|| panic!("{}: no answer to {path}", self.name))
    }

    fn call(&self, path: &str, user: Option<&str>, body: &str) -> (u16, Value) {
        let response = self.post(path, user, body);
        let status = response.status;
        let text = response.body();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {path} answered {text:?}: {e}", self.name));
        (status, value)
    }
}

/// A one-member Mend cluster and a one-member etcd, asked the same things.
struct Pair {
    mend: Side,
    etcd: Side,
    _cluster: Cluster,
    _etcd: Etcd,
}

impl Pair {
    fn start() -> Pair {
        let mut cluster = Cluster::start(1, Options::default());
        cluster.wait_healthy();
        let etcd = Etcd::start(1, &[]);
        Pair {
            mend: Side {
                name: "mend",
                port: cluster.member(0).client_port,
                tokens: HashMap::new(),
            },
            etcd: Side {
                name: "etcd",
                port: etcd.client_ports[0],
                tokens: HashMap::new(),
            },
            _cluster: cluster,
            _etcd: etcd,
        }
    }

    /// Both answers, with what differs by nature set aside.
    fn both(&self, path: &str, user: Option<&str>, body: &str) -> [(u16, Value); 2] {
        [&self.mend, &self.etcd].map(|side| {
            let (status, mut value) = side.call(path, user, body);
            normalize(&mut value);
            (status, value)
        })
    }

    /// Asks both; their answers must be equal. Returns etcd's.
    fn same(&self, path: &str, user: Option<&str>, body: &str) -> (u16, Value) {
        let [mend, etcd] = self.both(path, user, body);
        assert_eq!(
            mend, etcd,
            "POST {path} {body}: Mend (left) and etcd (right) differ"
        );
        etcd
    }

    /// Authenticates `user` on both and keeps each side's token.
    fn login(&mut self, user: &str, password: &str) {
        let body = json!({"name": user, "password": password}).to_string();
        for side in [&mut self.mend, &mut self.etcd] {
            let (status, value) = side.call("/v3/auth/authenticate", None, &body);
            assert_eq!(status, 200, "{}: {value}", side.name);
            let token = value["token"].as_str().expect("token").to_string();
            side.tokens.insert(user.to_string(), token);
        }
    }
}

/// Sets aside what two clusters never share: cluster and member IDs, names and URLs, raft
/// terms, tokens.
fn normalize(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::Object(header)) = fields.get_mut("header") {
                for id in ["cluster_id", "member_id", "raft_term"] {
                    header.remove(id);
                }
            }
            for members in ["members", "member"] {
                match fields.get_mut(members) {
                    Some(Value::Array(list)) => list.iter_mut().for_each(forget_id),
                    Some(member @ Value::Object(_)) => forget_id(member),
                    _ => {}
                }
            }
            if let Some(token) = fields.get_mut("token") {
                *token = json!("<token>");
            }
            fields.values_mut().for_each(normalize);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// A member's ID, name and URLs differ between the two; their presence and number do not.
fn forget_id(member: &mut Value) {
    if let Value::Object(fields) = member {
        fields.remove("ID");
        if let Some(name) = fields.get_mut("name") {
            *name = json!("<name>");
        }
        for urls in ["peerURLs", "clientURLs"] {
            if let Some(Value::Array(urls)) = fields.get_mut(urls) {
                urls.iter_mut().for_each(|url| *url = json!("<url>"));
            }
        }
    }
}

fn b64(text: &str) -> String {
    BASE64.encode(text)
}

#[test]
fn kv_txn_and_compaction_answer_as_etcd_does() {
    let pair = Pair::start();
    let (foo, bar, baz) = (b64("foo"), b64("bar"), b64("baz"));
    for value in [&bar, &baz] {
        pair.same(
            "/v3/kv/put",
            None,
            &json!({"key": foo, "value": value}).to_string(),
        );
    }
    // Both spellings of a field, as grpc-gateway reads them; unknown fields are ignored.
    let (status, put) = pair.same(
        "/v3/kv/put",
        None,
        &json!({"key": b64("foo/a"), "value": bar, "prevKv": true, "unknown": 1}).to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(put["header"]["revision"], "4", "{put}");
    pair.same(
        "/v3/kv/put",
        None,
        &json!({"key": foo, "value": bar, "prev_kv": true}).to_string(),
    );
    let (_, range) = pair.same("/v3/kv/range", None, &json!({"key": foo}).to_string());
    assert_eq!(range["kvs"][0]["value"], bar, "{range}");
    assert_eq!(range["count"], "1", "{range}");
    // A prefix, keys only, count only, a limit, an old revision, sorted.
    for body in [
        json!({"key": foo, "range_end": b64("fop")}),
        json!({"key": foo, "range_end": b64("fop"), "keys_only": true}),
        json!({"key": foo, "range_end": b64("fop"), "count_only": true}),
        json!({"key": foo, "range_end": b64("fop"), "limit": 1}),
        json!({"key": foo, "revision": 2}),
        json!({"key": foo, "revision": "3"}),
        json!({"key": foo, "range_end": b64("fop"), "sort_order": "DESCEND", "sort_target": "KEY"}),
    ] {
        pair.same("/v3/kv/range", None, &body.to_string());
    }
    // A transaction: a compare on the value, a range and a put on success.
    let (_, txn) = pair.same(
        "/v3/kv/txn",
        None,
        &json!({
            "compare": [{"key": foo, "result": "EQUAL", "target": "VALUE", "value": bar}],
            "success": [{"request_range": {"key": foo}}, {"requestPut": {"key": b64("t"), "value": bar}}],
            "failure": [{"request_delete_range": {"key": foo}}],
        })
        .to_string(),
    );
    assert_eq!(txn["succeeded"], true, "{txn}");
    // The failure branch, with numbers for the enums and a nested transaction.
    pair.same(
        "/v3/kv/txn",
        None,
        &json!({
            "compare": [{"key": foo, "result": 0, "target": 0, "version": "99"}],
            "failure": [
                {"request_delete_range": {"key": b64("t"), "prev_kv": true}},
                {"request_txn": {"success": [{"request_range": {"key": foo, "count_only": true}}]}},
            ],
        })
        .to_string(),
    );
    pair.same(
        "/v3/kv/deleterange",
        None,
        &json!({"key": foo, "range_end": b64("fop"), "prev_kv": true}).to_string(),
    );
    pair.same(
        "/v3/kv/compaction",
        None,
        &json!({"revision": 5}).to_string(),
    );
    // The error bodies: a compacted revision, a missing key.
    let (status, compacted) = pair.same(
        "/v3/kv/range",
        None,
        &json!({"key": foo, "revision": 3}).to_string(),
    );
    assert_eq!(status, 400);
    assert_eq!(
        compacted,
        json!({
            "error": "etcdserver: mvcc: required revision has been compacted",
            "message": "etcdserver: mvcc: required revision has been compacted",
            "code": 11,
        })
    );
    let (status, _) = pair.same("/v3/kv/range", None, "");
    assert_eq!(status, 400);
    // Malformed JSON: the same status and code; the parser's words differ (Go's and serde's).
    let [(mend_status, mend), (etcd_status, etcd)] = pair.both("/v3/kv/range", None, "{bad");
    assert_eq!((mend_status, &mend["code"]), (etcd_status, &etcd["code"]));
    assert_eq!((mend_status, &mend["code"]), (400, &json!(3)));
    // Only POST.
    for side in [&pair.mend, &pair.etcd] {
        let response = cluster::http_get(side.port, "/v3/kv/range").expect("answer");
        assert_eq!(response.0, 405, "{}", side.name);
    }
}

#[test]
fn leases_and_keepalive_answer_as_etcd_does() {
    let pair = Pair::start();
    let (_, grant) = pair.same("/v3/lease/grant", None, r#"{"TTL": 60, "ID": 77}"#);
    assert_eq!(grant["ID"], "77");
    assert_eq!(grant["TTL"], "60");
    pair.same(
        "/v3/kv/put",
        None,
        &json!({"key": b64("leased"), "value": b64("v"), "lease": "77"}).to_string(),
    );
    pair.same("/v3/lease/leases", None, "{}");
    pair.same("/v3/kv/lease/leases", None, "{}");
    // TTL counts down on both; what it reads at an instant is not compared.
    let [(s1, mut mend), (s2, mut etcd)] =
        pair.both("/v3/lease/timetolive", None, r#"{"ID": 77, "keys": true}"#);
    assert_eq!((s1, s2), (200, 200));
    for ttl in [&mut mend, &mut etcd] {
        let left: i64 = ttl["TTL"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("TTL");
        assert!((1..=60).contains(&left), "{ttl}");
        ttl["TTL"] = json!("<counts down>");
    }
    assert_eq!(mend, etcd);
    assert_eq!(mend["keys"], json!([b64("leased")]));
    // Two renewals in one body: two lines, in order; an unknown lease answers without a TTL.
    let lines = [&pair.mend, &pair.etcd].map(|side| {
        let mut stream = side.post("/v3/lease/keepalive", None, r#"{"ID": 77} {"ID": 78}"#);
        assert_eq!(stream.status, 200, "{}", side.name);
        let mut lines = Vec::new();
        while let Some(line) = stream.next_line() {
            let mut value: Value = serde_json::from_str(&line).expect("JSON line");
            normalize(&mut value);
            lines.push(value);
        }
        lines
    });
    assert_eq!(lines[0], lines[1]);
    assert_eq!(lines[0].len(), 2, "{:?}", lines[0]);
    assert_eq!(lines[0][0]["result"]["TTL"], "60");
    assert_eq!(lines[0][1]["result"].get("TTL"), None);
    pair.same("/v3/lease/revoke", None, r#"{"ID": 77}"#);
    let (status, gone) = pair.same("/v3/kv/lease/revoke", None, r#"{"ID": 77}"#);
    assert_eq!(status, 404);
    assert_eq!(gone["message"], "etcdserver: requested lease not found");
    pair.same(
        "/v3/kv/range",
        None,
        &json!({"key": b64("leased")}).to_string(),
    );
}

#[test]
fn a_watch_streams_events_as_etcd_does() {
    let pair = Pair::start();
    let key = b64("w");
    for value in ["1", "2"] {
        pair.same(
            "/v3/kv/put",
            None,
            &json!({"key": key, "value": b64(value)}).to_string(),
        );
    }
    let open = |side: &Side, body: Value| {
        let stream = side.post("/v3/watch", None, &body.to_string());
        assert_eq!(stream.status, 200, "{}", side.name);
        stream
    };
    let next = |stream: &mut HttpResponse| {
        let line = stream.next_line().expect("a watch response line");
        let mut value: Value = serde_json::from_str(&line).expect("JSON line");
        normalize(&mut value);
        value
    };
    // From now on, with previous values; and one from the start of history.
    let mut live = [&pair.mend, &pair.etcd].map(|side| {
        open(
            side,
            json!({"create_request": {"key": key, "prev_kv": true}}),
        )
    });
    let mut history = [&pair.mend, &pair.etcd].map(|side| {
        open(
            side,
            json!({"create_request": {"key": key, "start_revision": 2, "watch_id": 7}}),
        )
    });
    let created = live.each_mut().map(next);
    assert_eq!(created[0], created[1]);
    assert_eq!(created[0]["result"]["created"], true, "{}", created[0]);
    let created = history.each_mut().map(next);
    assert_eq!(created[0], created[1]);
    assert_eq!(created[0]["result"]["watch_id"], "7", "{}", created[0]);
    // One change at a time, so that each is one response on both.
    for (path, body) in [
        ("/v3/kv/put", json!({"key": key, "value": b64("3")})),
        ("/v3/kv/deleterange", json!({"key": key})),
    ] {
        pair.same(path, None, &body.to_string());
        let event = live.each_mut().map(next);
        assert_eq!(event[0], event[1]);
    }
    // The history: revisions 2 and 3 in one response (its header's revision is when it was
    // sent, which differs: Mend's watch is not yet on etcd's model, issue 13), then 4 and 5.
    let mut replayed = [Vec::new(), Vec::new()];
    for (stream, events) in history.iter_mut().zip(&mut replayed) {
        while events.len() < 4 {
            let response = next(stream);
            let batch = response["result"]["events"].as_array().expect("events");
            events.extend(batch.iter().cloned());
        }
    }
    assert_eq!(replayed[0], replayed[1]);
    assert_eq!(replayed[0][3]["type"], "DELETE", "{:?}", replayed[0]);
    // A progress request is answered with the header alone, watch ID -1.
    let progress = [&pair.mend, &pair.etcd]
        .map(|side| open(side, json!({"progress_request": {}})))
        .each_mut()
        .map(next);
    assert_eq!(progress[0], progress[1]);
    assert_eq!(progress[0]["result"]["watch_id"], "-1");
    // A compacted start: canceled with the compaction revision.
    pair.same("/v3/kv/compaction", None, r#"{"revision": 4}"#);
    let mut compacted = [&pair.mend, &pair.etcd].map(|side| {
        open(
            side,
            json!({"create_request": {"key": key, "start_revision": 2}}),
        )
    });
    let _created = compacted.each_mut().map(next);
    let canceled = compacted.each_mut().map(next);
    for response in &canceled {
        assert_eq!(response["result"]["canceled"], true, "{response}");
        assert_eq!(response["result"]["compact_revision"], "4", "{response}");
    }
}

#[test]
fn auth_users_roles_and_members_answer_as_etcd_does() {
    let mut pair = Pair::start();
    for (path, body) in [
        (
            "/v3/auth/user/add",
            json!({"name": "root", "password": "rootpw"}),
        ),
        ("/v3/auth/role/add", json!({"name": "root"})),
        (
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": "alice", "password": "a"}),
        ),
        ("/v3/auth/role/add", json!({"name": "reader"})),
        (
            "/v3/auth/role/grant",
            json!({"name": "reader", "perm": {"permType": "READ", "key": b64("a"), "range_end": b64("b")}}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "alice", "role": "reader"}),
        ),
        ("/v3/auth/role/get", json!({"role": "reader"})),
        ("/v3/auth/user/get", json!({"name": "alice"})),
        ("/v3/auth/user/list", json!({})),
        ("/v3/auth/role/list", json!({})),
        ("/v3/kv/put", json!({"key": b64("a1"), "value": b64("v")})),
        ("/v3/auth/enable", json!({})),
    ] {
        let (status, answer) = pair.same(path, None, &body.to_string());
        assert_eq!(status, 200, "{path}: {answer}");
    }
    // A wrong password.
    let (status, refused) = pair.same(
        "/v3/auth/authenticate",
        None,
        &json!({"name": "alice", "password": "wrong"}).to_string(),
    );
    assert_eq!(status, 400);
    assert_eq!(
        refused["message"],
        "etcdserver: authentication failed, invalid user ID or password"
    );
    pair.login("alice", "a");
    pair.login("root", "rootpw");
    // The token from `Authorization`: a read alice may make, a write she may not, and no token.
    let (status, _) = pair.same(
        "/v3/kv/range",
        Some("alice"),
        &json!({"key": b64("a1")}).to_string(),
    );
    assert_eq!(status, 200);
    let (status, denied) = pair.same(
        "/v3/kv/put",
        Some("alice"),
        &json!({"key": b64("a1"), "value": b64("w")}).to_string(),
    );
    assert_eq!(status, 403);
    assert_eq!(
        denied,
        json!({"error": "etcdserver: permission denied", "message": "etcdserver: permission denied", "code": 7})
    );
    let (status, _) = pair.same("/v3/kv/range", None, &json!({"key": b64("a1")}).to_string());
    assert_eq!(status, 400);
    // A token neither side issued.
    for side in [&mut pair.mend, &mut pair.etcd] {
        side.tokens.insert("forged".into(), "forged.1".into());
    }
    let (status, forged) = pair.same(
        "/v3/kv/range",
        Some("forged"),
        &json!({"key": b64("a1")}).to_string(),
    );
    assert_eq!(status, 401);
    assert_eq!(forged["message"], "etcdserver: invalid auth token");
    // Root may list members and read the status.
    let (_, members) = pair.same("/v3/cluster/member/list", Some("root"), "{}");
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));
    // The status has the same fields; their values (version, sizes, raft indexes) differ.
    let [(s1, mend), (s2, etcd)] = pair.both("/v3/maintenance/status", Some("root"), "{}");
    assert_eq!((s1, s2), (200, 200));
    let fields = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(fields(&mend), fields(&etcd), "{mend} {etcd}");
    pair.same(
        "/v3/auth/user/changepw",
        Some("root"),
        r#"{"name": "alice", "password": "b"}"#,
    );
    pair.same(
        "/v3/auth/user/revoke",
        Some("root"),
        r#"{"name": "alice", "role": "reader"}"#,
    );
    pair.same(
        "/v3/auth/role/delete",
        Some("root"),
        r#"{"role": "reader"}"#,
    );
    pair.same("/v3/auth/user/delete", Some("root"), r#"{"name": "alice"}"#);
    pair.same("/v3/auth/disable", Some("root"), "{}");
}

#[test]
fn a_snapshot_streams_over_the_gateway_whole() {
    let mut cluster = Cluster::start(1, Options::default());
    cluster.wait_healthy();
    let port = cluster.member(0).client_port;
    for i in 0..20 {
        let body = json!({"key": b64(&format!("k{i}")), "value": b64("v")}).to_string();
        let response = HttpResponse::post(port, "/v3/kv/put", None, &body).expect("answer");
        assert_eq!(response.status, 200);
    }
    let hash = HttpResponse::post(port, "/v3/maintenance/hash", None, "{}").expect("answer");
    let hash: Value = serde_json::from_str(&hash.body()).expect("JSON");
    let mut stream =
        HttpResponse::post(port, "/v3/maintenance/snapshot", None, "{}").expect("answer");
    assert_eq!(stream.status, 200);
    let mut file = Vec::new();
    let mut last_remaining = None;
    while let Some(line) = stream.next_line() {
        let line: Value = serde_json::from_str(&line).expect("JSON line");
        let result = &line["result"];
        let blob = result["blob"].as_str().expect("blob");
        file.extend(BASE64.decode(blob).expect("base64 blob"));
        last_remaining = Some(result.get("remaining_bytes").cloned());
    }
    // The last message says nothing remains (0 is left out, as every default).
    assert_eq!(last_remaining, Some(None));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.db");
    std::fs::write(&path, &file).expect("write snapshot");
    let status = std::process::Command::new(cluster::storage_node_bin())
        .args(["snapshot", "status"])
        .arg(&path)
        .args(["-w", "json"])
        .output()
        .expect("storage-node snapshot status");
    let status: Value = serde_json::from_slice(&cluster::ok(status).into_bytes()).expect("json");
    assert_eq!(status["revision"], 21, "{status}");
    // The file holds the member's state at the hash: nothing was written since.
    assert_eq!(status["hash"], hash["hash"], "{status} {hash}");
}

#[test]
fn streaming_routes_report_failures_as_etcd_gateway_lines() {
    let mut cluster = Cluster::start(1, Options::default());
    cluster.wait_healthy();
    let port = cluster.member(0).client_port;
    // A malformed first request: refused whole, as etcd's gateway does (code 2, Unknown).
    let refused = HttpResponse::post(port, "/v3/watch", None, "{bad").expect("answer");
    assert_eq!(refused.status, 500);
    let body: Value = serde_json::from_str(&refused.body()).expect("JSON");
    assert_eq!(body["code"], 2, "{body}");
    // A stream refused before its first message: one error line with the HTTP status.
    let forged = HttpResponse::post(
        port,
        "/v3/watch",
        Some("forged.1"),
        r#"{"create_request":{"key":"YQ=="}}"#,
    )
    .expect("answer");
    assert_eq!(forged.status, 401);
    let line: Value = serde_json::from_str(&forged.body()).expect("JSON line");
    assert_eq!(
        line,
        json!({"error": {"grpc_code": 16, "http_code": 401, "message": "etcdserver: invalid auth token", "http_status": "Unauthorized"}})
    );
}
