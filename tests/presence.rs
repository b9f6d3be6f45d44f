//! Presence across pods as processes on 127.0.0.1-3, on the mesh (static
//! discovery) and on Redis alike: who
//! is in a topic is the same on every pod, leaves reach every pod when a user
//! closes, when their pod is killed (within a stated bound) and when it
//! drains; a restarted pod or a flapping link brings no duplicates and no
//! phantom joins; a burst of joins past the events limit is a
//! `presence_reset`; bad requests get their documented errors.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::PATIENCE;
use common::backend::Backend;
use common::process::{Ports, Process, spawn_ready};
use common::proxy::Proxy;
use common::user::{Ending, User};
use herald::proto::v1::publisher_client::PublisherClient;
use herald::proto::v1::{PresenceRequest, PresenceStatsRequest, UserPresenceRequest};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
const SECRET: &str = "a test-only presence secret";
const ROOM: &str = "room:1";

/// How long after a SIGKILL every survivor has dropped the killed pod's
/// users: on the mesh the peer grace (3 s, three keepalive intervals), on
/// Redis the silence before a pod is taken for down and its grace (2 s and
/// 0.5 s, checked every 0.5 s), plus a flush (100 ms) and the time to
/// notice, with room for a busy test machine. docs/presence.md states the
/// bounds.
const KILL_BOUND: Duration = Duration::from_secs(5);

struct Secret {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn secret() -> Secret {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("secret");
    std::fs::write(&path, SECRET).expect("written");
    Secret { path, _dir: dir }
}

fn token(sub: &str, profile: Value) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 600;
    let claims = json!({"sub": sub, "topics": ["room:*"], "exp": exp, "profile": profile});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signs")
}

/// `herald serve` flags of a pod with presence on `room:*` and `user:*`,
/// `info` from the `profile` claim, in the group `group` names.
fn flags(secret: &Secret, group: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut flags = vec![
        "--auth=jwt".to_owned(),
        format!("--jwt-secret-file={}", secret.path.display()),
        "--presence-topics=room:*,user:*".to_owned(),
        "--presence-info-claim=profile".to_owned(),
    ];
    flags.extend(group);
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    flags
}

async fn cluster(
    secret: &Secret,
    backend: &Backend,
    ips: &[&str],
    extra: &[&str],
) -> (Ports, Vec<Process>) {
    let ports = Ports::free_on(ips);
    let flags = flags(secret, backend.flags(ips, ports), extra);
    (ports, spawn_ready(ips, ports, &flags).await)
}

/// A user `sub` (with `{"name": sub}` as info) on `pod`.
async fn connect(pod: &Process, sub: &str) -> User {
    let url = format!(
        "{}?token={}",
        pod.ws_url(),
        token(sub, json!({"name": sub}))
    );
    User::connect(&url).await
}

/// A user `sub` on `pod` in the room (listening for its events when
/// `join_leave`).
async fn join(pod: &Process, sub: &str, join_leave: bool) -> User {
    let mut user = connect(pod, sub).await;
    let reply = user
        .request(json!({"op": "subscribe", "topic": ROOM, "ref": "s", "join_leave": join_leave}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    user
}

/// Every entry of `topic` as `probe`'s pod has them, page by page.
async fn presence(probe: &mut User, topic: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let mut request = json!({"op": "presence", "topic": topic, "ref": "p", "limit": 2});
        if !cursor.is_null() {
            request["cursor"] = cursor.clone();
        }
        let reply = probe.request(request).await;
        assert_eq!(reply["ok"], true, "{reply}");
        entries.extend(
            reply["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .cloned(),
        );
        cursor = reply["cursor"].clone();
        if cursor.is_null() {
            return entries;
        }
    }
}

fn subs(entries: &[Value]) -> Vec<String> {
    let mut subs: Vec<String> = entries
        .iter()
        .map(|e| e["sub"].as_str().expect("sub").to_owned())
        .collect();
    subs.sort();
    subs
}

/// Asks `probe` until the room's users are `expected` (sorted); returns how
/// long that took.
async fn wait_for_room(probe: &mut User, expected: &[&str]) -> Duration {
    let start = Instant::now();
    loop {
        let entries = presence(probe, ROOM).await;
        if subs(&entries) == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the room holds {:?}, not {expected:?}",
            subs(&entries)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `join` or `leave` event `watcher` gets, if one comes within
/// `within`.
async fn event(watcher: &mut User, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let frame = tokio::time::timeout(left, watcher.next()).await.ok()?;
        if ["join", "leave", "presence_reset"].contains(&frame["op"].as_str().unwrap_or("")) {
            return Some(frame);
        }
    }
}

/// Reads `watcher`'s events until `op` for `sub` arrives.
async fn event_for(watcher: &mut User, op: &str, sub: &str) -> Value {
    loop {
        let frame = event(watcher, PATIENCE)
            .await
            .unwrap_or_else(|| panic!("no {op} of {sub}"));
        assert_ne!(frame["op"], "presence_reset", "{frame}");
        if frame["op"] == op && frame["sub"] == sub {
            return frame;
        }
    }
}

on_both_backends!(users_on_three_pods_are_listed_alike_by_every_pod_soon_after_their_subscribe);
async fn users_on_three_pods_are_listed_alike_by_every_pod_soon_after_their_subscribe(
    backend: Backend,
) {
    let secret = secret();
    let (_, pods) = cluster(&secret, &backend, &IPS, &[]).await;
    let names = ["ada", "bob", "cy"];
    let mut users = Vec::new();
    for (pod, name) in pods.iter().zip(names) {
        users.push(join(pod, name, false).await);
    }
    let subscribed = Instant::now();
    let mut slowest = Duration::ZERO;
    for pod in &pods {
        let mut probe = connect(pod, "probe").await;
        wait_for_room(&mut probe, &names).await;
        slowest = slowest.max(subscribed.elapsed());
        let entries = presence(&mut probe, ROOM).await;
        let nodes: BTreeSet<&str> = entries.iter().filter_map(|e| e["node"].as_str()).collect();
        assert_eq!(nodes.len(), 3, "one entry per pod: {entries:?}");
        let conns: BTreeSet<&str> = entries.iter().filter_map(|e| e["conn"].as_str()).collect();
        assert_eq!(conns.len(), 3, "{entries:?}");
        for entry in &entries {
            assert_eq!(entry["info"], json!({"name": entry["sub"]}), "{entry}");
        }
        let stats = probe
            .request(json!({"op": "presence_stats", "topic": ROOM, "ref": "n"}))
            .await;
        assert_eq!(
            stats,
            json!({"op": "reply", "ref": "n", "ok": true, "connections": 3, "users": 3})
        );
    }
    eprintln!("every pod listed all three users {slowest:?} after the last subscribe reply");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");

    // Backends ask any pod the same over gRPC.
    users[0]
        .request(json!({"op": "subscribe", "topic": "user:ada", "ref": "u"}))
        .await;
    for pod in &pods {
        let mut api = PublisherClient::connect(pod.grpc_url())
            .await
            .expect("gRPC connects");
        let page = api
            .presence(PresenceRequest {
                topic: ROOM.into(),
                ..Default::default()
            })
            .await
            .expect("presence")
            .into_inner();
        let mut got: Vec<String> = page.entries.iter().filter_map(|e| e.sub.clone()).collect();
        got.sort();
        assert_eq!(got, names);
        let stats = api
            .presence_stats(PresenceStatsRequest { topic: ROOM.into() })
            .await
            .expect("stats")
            .into_inner();
        assert_eq!((stats.connections, stats.users), (3, 3));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ada = api
                .user_presence(UserPresenceRequest { sub: "ada".into() })
                .await
                .expect("user presence")
                .into_inner();
            if ada.connected {
                assert_eq!(ada.connections, 1);
                break;
            }
            assert!(Instant::now() < deadline, "ada never shows as connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bob = api
            .user_presence(UserPresenceRequest { sub: "bob".into() })
            .await
            .expect("user presence")
            .into_inner();
        assert!(!bob.connected, "bob is in no user topic");
    }
}

on_both_backends!(a_user_who_closes_their_socket_leaves_every_pod_with_a_leave_event);
async fn a_user_who_closes_their_socket_leaves_every_pod_with_a_leave_event(backend: Backend) {
    let secret = secret();
    let (_, pods) = cluster(&secret, &backend, &IPS, &[]).await;
    let mut watchers = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        watchers.push(join(pod, &format!("watcher{i}"), true).await);
    }
    let leaving = join(&pods[0], "dee", false).await;
    for watcher in &mut watchers {
        event_for(watcher, "join", "dee").await;
    }
    drop(leaving);
    for watcher in &mut watchers {
        let leave = event_for(watcher, "leave", "dee").await;
        assert_eq!(leave["topic"], ROOM);
        assert_eq!(leave["info"], json!({"name": "dee"}));
    }
    for pod in &pods {
        let mut probe = connect(pod, "probe").await;
        let entries = presence(&mut probe, ROOM).await;
        assert!(!subs(&entries).contains(&"dee".to_owned()), "{entries:?}");
        assert_eq!(entries.len(), 3, "the watchers stay: {entries:?}");
    }
}

on_both_backends!(a_sigkilled_pods_users_leave_every_survivor_within_the_stated_bound);
async fn a_sigkilled_pods_users_leave_every_survivor_within_the_stated_bound(backend: Backend) {
    let secret = secret();
    let (_, pods) = cluster(&secret, &backend, &IPS, &[]).await;
    let mut watchers = vec![
        join(&pods[0], "watcher0", true).await,
        join(&pods[1], "watcher1", true).await,
    ];
    let doomed = ["eve", "fay", "gus"];
    let mut users = Vec::new();
    for name in doomed {
        users.push(join(&pods[2], name, false).await);
    }
    for watcher in &mut watchers {
        for name in doomed {
            event_for(watcher, "join", name).await;
        }
    }
    let killed = Instant::now();
    pods[2].signal("KILL");
    let mut slowest = Duration::ZERO;
    for watcher in &mut watchers {
        let mut left = BTreeSet::new();
        while left.len() < doomed.len() {
            let frame = event(watcher, KILL_BOUND * 2).await.expect("leaves come");
            let sub = frame["sub"].as_str().expect("sub").to_owned();
            if sub.starts_with("watcher") {
                // The other watcher's join, late.
                assert_eq!(frame["op"], "join", "{frame}");
                continue;
            }
            assert_eq!(frame["op"], "leave", "{frame}");
            left.insert(sub);
        }
        slowest = slowest.max(killed.elapsed());
    }
    eprintln!("a SIGKILLed pod's users left every survivor {slowest:?} after the kill");
    assert!(slowest <= KILL_BOUND, "{slowest:?}");
    for pod in &pods[..2] {
        let mut probe = connect(pod, "probe").await;
        assert_eq!(
            subs(&presence(&mut probe, ROOM).await),
            ["watcher0", "watcher1"]
        );
    }
}

on_both_backends!(a_flapping_link_or_a_restarted_pod_brings_no_duplicates_and_no_phantom_joins);
async fn a_flapping_link_or_a_restarted_pod_brings_no_duplicates_and_no_phantom_joins(
    backend: Backend,
) {
    let secret = secret();
    let ips = &IPS[..2];
    let ports = Ports::free_on(ips);
    // Pod b reaches pod a (mesh), or Redis, through the proxy: the link
    // that carries b's presence to a flaps when the proxy cuts.
    let proxy = Proxy::to(backend.first_link(ips, ports)).await;
    let pod_a = Process::spawn(
        ips[0],
        ports,
        &flags(&secret, backend.flags(ips, ports), &[]),
        &[],
    );
    let b_flags = flags(
        &secret,
        backend.flags_through(ips, ports, &proxy.address),
        &[],
    );
    let mut pod_b = Process::spawn(ips[1], ports, &b_flags, &[]);
    pod_a.wait_ready().await;
    pod_b.wait_ready().await;

    let mut watcher = join(&pod_a, "watcher", true).await;
    let mut users = vec![
        join(&pod_b, "hal", false).await,
        join(&pod_b, "ivy", false).await,
    ];
    event_for(&mut watcher, "join", "hal").await;
    event_for(&mut watcher, "join", "ivy").await;
    let mut probe = connect(&pod_a, "probe").await;
    let before = presence(&mut probe, ROOM).await;
    assert_eq!(subs(&before), ["hal", "ivy", "watcher"]);

    // The flap: b's link breaks and b dials again at once.
    let relinked = backend.relinked_log();
    let reconnects = |pod: &Process| pod.logs().matches(relinked).count();
    let before_cut = reconnects(&pod_b);
    proxy.cut();
    let deadline = Instant::now() + PATIENCE;
    while reconnects(&pod_b) == before_cut {
        assert!(Instant::now() < deadline, "b never dialled a again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the grace too: the old state was replaced by the new one.
    assert_eq!(
        event(&mut watcher, Duration::from_secs(4)).await,
        None,
        "a flap is no leave and no join"
    );
    assert_eq!(presence(&mut probe, ROOM).await, before, "no duplicates");

    // The restart: b dies and comes back at the same address with a new
    // node id; its users come back to it.
    pod_b.signal("KILL");
    assert!(!pod_b.wait_exit(PATIENCE).await);
    drop(users.drain(..));
    let restarted = Instant::now();
    pod_b = Process::spawn(ips[1], ports, &b_flags, &[]);
    pod_b.wait_ready().await;
    users.push(join(&pod_b, "hal", false).await);
    users.push(join(&pod_b, "ivy", false).await);
    let mut events: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let joined = |events: &BTreeMap<String, Vec<String>>| {
        ["hal", "ivy"].iter().all(|name| {
            events
                .get(*name)
                .is_some_and(|ops| ops.contains(&"join".to_owned()))
        })
    };
    while !joined(&events) {
        let frame = event(&mut watcher, PATIENCE)
            .await
            .expect("the restart's events");
        let sub = frame["sub"].as_str().expect("sub").to_owned();
        events
            .entry(sub)
            .or_default()
            .push(frame["op"].as_str().expect("op").to_owned());
    }
    let shown = restarted.elapsed();
    // As soon as the new connections show, the old pod's are gone: its
    // state was replaced whole, not left to expire.
    let after = presence(&mut probe, ROOM).await;
    assert_eq!(subs(&after), ["hal", "ivy", "watcher"], "{after:?}");
    for name in ["hal", "ivy"] {
        assert_eq!(events[name], ["leave", "join"], "{events:?}");
    }
    assert_eq!(
        event(&mut watcher, Duration::from_secs(4)).await,
        None,
        "one leave and one join each, nothing when the grace has passed"
    );
    let old: BTreeSet<&str> = before.iter().filter_map(|e| e["conn"].as_str()).collect();
    assert!(
        after
            .iter()
            .filter(|e| e["sub"] != "watcher")
            .all(|e| !old.contains(e["conn"].as_str().unwrap_or_default())),
        "the old pod's entries are gone: {after:?}"
    );
    eprintln!("a restarted pod's users showed again {shown:?} after it was started again");
}

on_both_backends!(a_drained_pods_users_leave_as_they_are_closed_and_join_where_they_reconnect);
async fn a_drained_pods_users_leave_as_they_are_closed_and_join_where_they_reconnect(
    backend: Backend,
) {
    let secret = secret();
    let ips = &IPS[..2];
    let (_, mut pods) = cluster(&secret, &backend, ips, &["--drain-window=3s"]).await;
    let staying = pods.pop().expect("two pods");
    let mut draining = pods.pop().expect("two pods");
    let names = ["jo", "kim", "lee", "max", "ned", "oz", "pia", "quy"];
    let mut users = Vec::new();
    for name in names {
        users.push(join(&draining, name, false).await);
    }
    let mut watcher = join(&staying, "watcher", true).await;
    let mut probe = connect(&staying, "probe").await;
    let room = [
        "jo", "kim", "lee", "max", "ned", "oz", "pia", "quy", "watcher",
    ];
    wait_for_room(&mut probe, &room).await;
    for name in names {
        event_for(&mut watcher, "join", name).await;
    }

    // The watcher's events, each with when it arrived.
    let started = Instant::now();
    let heard = tokio::spawn(async move {
        let mut heard = Vec::new();
        while heard.len() < 2 * names.len() {
            let Some(frame) = event(&mut watcher, PATIENCE).await else {
                break;
            };
            heard.push((started.elapsed(), frame));
        }
        (heard, watcher)
    });
    draining.signal("TERM");
    let closed =
        futures_util::future::join_all(users.into_iter().zip(names).map(|(mut user, name)| {
            let staying = &staying;
            async move {
                assert_eq!(user.ending().await, Ending::Close(1012));
                let at = started.elapsed();
                let again = join(staying, name, false).await;
                (name, at, again)
            }
        }))
        .await;
    let (heard, _watcher) = heard.await.expect("the watcher's task");
    assert!(draining.wait_exit(PATIENCE).await, "{}", draining.logs());
    for (name, closed_at, _) in &closed {
        let of = |op: &str| {
            heard
                .iter()
                .find(|(_, f)| f["op"] == op && f["sub"] == *name)
                .map(|(at, _)| *at)
                .unwrap_or_else(|| panic!("no {op} of {name}: {heard:?}"))
        };
        // Its new connection joins on the other pod; the old one's leave
        // may come a flush later.
        of("join");
        let left = of("leave");
        // Users close at random over the window; the grace (3 s) would
        // only start when the pod's streams end, after its last user: a
        // leave within a few flushes of its close was sent as the user was
        // closed.
        assert!(
            left <= *closed_at + Duration::from_millis(600),
            "{name} closed at {closed_at:?}, left at {left:?}"
        );
    }
    assert_eq!(subs(&presence(&mut probe, ROOM).await), room);
}

#[tokio::test]
async fn bad_presence_requests_get_their_documented_errors_and_the_pod_carries_on() {
    let secret = secret();
    let ports = Ports::free_on(&IPS[..1]);
    let alone = Backend::mesh().flags(&IPS[..1], ports);
    let pod = Process::spawn(IPS[0], ports, &flags(&secret, alone, &[]), &[]);
    pod.wait_ready().await;
    let mut user = connect(&pod, "ned").await;
    let error = |code: &str, r#ref: &str| json!({"code": code, "ref": r#ref});
    let cases = [
        (
            json!({"op": "presence", "topic": "secret:1", "ref": "f"}),
            error("forbidden", "f"),
        ),
        (
            json!({"op": "presence_stats", "topic": "secret:1", "ref": "g"}),
            error("forbidden", "g"),
        ),
        (
            json!({"op": "presence", "topic": "user:ned", "ref": "o"}),
            json!(null),
        ),
        (
            json!({"op": "presence", "topic": "user:zed", "ref": "z"}),
            error("forbidden", "z"),
        ),
        (
            json!({"op": "presence", "topic": "room-less", "ref": "d"}),
            error("forbidden", "d"),
        ),
        (
            json!({"op": "presence", "topic": ROOM, "ref": "c", "cursor": "zz"}),
            error("invalid_cursor", "c"),
        ),
        (
            json!({"op": "presence", "topic": ROOM, "ref": "k", "cursor": 7}),
            error("missing_field", "k"),
        ),
        (
            json!({"op": "presence", "topic": ROOM, "ref": "l", "limit": 0}),
            error("invalid_limit", "l"),
        ),
        (
            json!({"op": "subscribe", "topic": ROOM, "ref": "j", "join_leave": "yes"}),
            error("missing_field", "j"),
        ),
    ];
    for (request, expected) in cases {
        let reply = user.request(request.clone()).await;
        if expected.is_null() {
            assert_eq!(reply["ok"], true, "{request} → {reply}");
            continue;
        }
        assert_eq!(reply["ok"], false, "{request} → {reply}");
        assert_eq!(reply["ref"], expected["ref"], "{reply}");
        assert_eq!(
            reply["error"]["code"], expected["code"],
            "{request} → {reply}"
        );
    }

    // A topic the user may use but that keeps no presence.
    let mut wide = {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 600;
        let claims = json!({"sub": "olga", "topics": ["news"], "exp": exp});
        let token = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signs");
        User::connect(&format!("{}?token={token}", pod.ws_url())).await
    };
    for request in [
        json!({"op": "presence", "topic": "news", "ref": "n"}),
        json!({"op": "presence_stats", "topic": "news", "ref": "n"}),
        json!({"op": "subscribe", "topic": "news", "ref": "n", "join_leave": true}),
    ] {
        let reply = wide.request(request.clone()).await;
        assert_eq!(
            reply["error"]["code"], "presence_disabled",
            "{request} → {reply}"
        );
        assert_eq!(reply["ref"], "n");
    }
    wide.subscribe("news").await;

    // Oversized info: the token is refused at the upgrade.
    let big = token("pat", json!({"name": "x".repeat(600)}));
    let refused = User::try_connect(&format!("{}?token={big}", pod.ws_url()), &[]).await;
    let Err((status, body)) = refused.map(|_| ()) else {
        panic!("a token with 600 bytes of info is refused");
    };
    assert_eq!(status, 401);
    assert!(body.contains("presence info may be at most 512"), "{body}");

    // gRPC: the same errors as statuses.
    let mut api = PublisherClient::connect(pod.grpc_url())
        .await
        .expect("gRPC connects");
    fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Code {
        result.expect_err("refused").code()
    }
    let disabled = api.presence(PresenceRequest {
        topic: "news".into(),
        ..Default::default()
    });
    assert_eq!(code(disabled.await), tonic::Code::FailedPrecondition);
    let cursor = api.presence(PresenceRequest {
        topic: ROOM.into(),
        cursor: "nope".into(),
        ..Default::default()
    });
    assert_eq!(code(cursor.await), tonic::Code::InvalidArgument);
    let bad = api.presence_stats(PresenceStatsRequest {
        topic: "not a topic".into(),
    });
    assert_eq!(code(bad.await), tonic::Code::InvalidArgument);

    // The pod carries on.
    user.still_usable().await;
    let reply = user
        .request(json!({"op": "subscribe", "topic": ROOM, "ref": "s", "join_leave": true}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let entries = presence(&mut user, ROOM).await;
    assert_eq!(subs(&entries), ["ned"]);
}

#[tokio::test]
async fn a_burst_of_joins_past_the_limit_reaches_a_listener_as_a_presence_reset_not_as_joins() {
    let secret = secret();
    let ports = Ports::free_on(&IPS[..1]);
    let alone = Backend::mesh().flags(&IPS[..1], ports);
    let extra = [
        "--max-connection-rate-per-ip=0",
        "--max-connection-rate=10000",
    ];
    let pod = Process::spawn(IPS[0], ports, &flags(&secret, alone, &extra), &[]);
    pod.wait_ready().await;
    let mut watcher = join(&pod, "watcher", true).await;
    const BURST: usize = 150;
    let mut crowd = Vec::new();
    for i in 0..BURST {
        crowd.push(connect(&pod, &format!("fan{i}")).await);
    }
    // 150 subscribes sent at once: at least one flush holds more than the
    // 20 events a topic sends per flush. A loaded machine may spread the
    // first few over an earlier flush of at most 20, which go out as joins.
    for user in &mut crowd {
        user.send_json(json!({"op": "subscribe", "topic": ROOM, "ref": "s"}))
            .await;
    }
    let (mut joins, mut resets) = (0, 0);
    while let Some(frame) = event(&mut watcher, Duration::from_secs(2)).await {
        match frame["op"].as_str() {
            Some("join") => {
                assert_eq!(resets, 0, "a join of the burst after its reset: {frame}");
                joins += 1;
            }
            Some("presence_reset") => resets += 1,
            _ => panic!("no leaves in a burst of joins: {frame}"),
        }
    }
    assert!((1..=2).contains(&resets), "{resets} resets");
    assert!(joins <= BURST / 2, "{joins} of the burst came as joins");
    let mut probe = connect(&pod, "probe").await;
    assert_eq!(
        presence(&mut probe, ROOM).await.len(),
        BURST + 1,
        "the picture to ask for is whole"
    );
    // Quiet is over: single changes are events again.
    drop(crowd.pop());
    let last = format!("fan{}", BURST - 1);
    assert_eq!(event_for(&mut watcher, "leave", &last).await["op"], "leave");
}
