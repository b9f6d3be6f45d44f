//! The Kubernetes API stand-in, exercised with the real `kube` client and
//! `kube::runtime::watcher`: if these pass, discovery tests against the stand-in test the
//! real list/watch protocol.

mod common;

use std::{net::Ipv4Addr, time::Duration};

use common::kube_api::{KubeApi, endpoint_slice, endpoints};
use futures_util::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{core::v1::Endpoints, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher::{self, Event},
};

/// Upper bound for anything a test waits on; the stand-in answers in milliseconds.
const WAIT: Duration = Duration::from_secs(5);

const PEERS: &str = "herald-peers";

/// Makes the `herald-peers` Endpoints list exactly `ips`, ready, on port
/// `peer` 7001.
fn list_ready(api: &KubeApi, ips: &[&str]) {
    api.apply_endpoints(endpoints("default", PEERS, ips, &[], "peer", 7001));
}

type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

async fn start() -> (KubeApi, Client) {
    let api = KubeApi::start(Ipv4Addr::LOCALHOST.into()).await;
    let client = api.client().await;
    (api, client)
}

fn watch_peers(client: Client) -> Events<Endpoints> {
    let config = watcher::Config::default().fields(&format!("metadata.name={PEERS}"));
    watcher::watcher(Api::<Endpoints>::namespaced(client, "default"), config).boxed()
}

async fn next<K: std::fmt::Debug + Send + 'static>(
    events: &mut Events<K>,
) -> Result<Event<K>, watcher::Error> {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the watcher yields within the deadline")
        .expect("a watcher stream never ends")
}

async fn next_ok<K: std::fmt::Debug + Send + 'static>(events: &mut Events<K>) -> Event<K> {
    next(events).await.expect("a watcher event, not an error")
}

/// Polls until the watcher has finished an initial list, returning the listed objects.
async fn initial_list<K: std::fmt::Debug + Send + 'static>(events: &mut Events<K>) -> Vec<K> {
    let mut listed = Vec::new();
    loop {
        match next(events).await {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(object)) => listed.push(object),
            Ok(Event::InitDone) => return listed,
            other => panic!("expected an initial list, got {other:?}"),
        }
    }
}

/// Returns once the watcher's watch request is open: the watcher only issues it when polled
/// after `InitDone`, so apply a change and wait for it to arrive.
async fn watching(api: &KubeApi, events: &mut Events<Endpoints>) {
    list_ready(api, &["10.0.0.99"]);
    match next_ok(events).await {
        Event::Apply(ep) => assert_eq!(ready_ips(&ep), ["10.0.0.99"]),
        other => panic!("expected Apply, got {other:?}"),
    }
}

fn ready_ips(endpoints: &Endpoints) -> Vec<String> {
    endpoints
        .subsets
        .iter()
        .flatten()
        .flat_map(|subset| subset.addresses.iter().flatten())
        .map(|address| address.ip.clone())
        .collect()
}

fn slice_ips(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .flat_map(|endpoint| endpoint.addresses.clone())
        .collect()
}

#[tokio::test]
async fn a_client_from_the_written_kubeconfig_lists_applied_endpoints() {
    let api = KubeApi::start(Ipv4Addr::LOCALHOST.into()).await;
    list_ready(&api, &["10.0.0.1"]);
    api.apply_endpoints(endpoints(
        "default",
        "other",
        &["10.0.0.9"],
        &[],
        "peer",
        7001,
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = api.write_kubeconfig(dir.path());

    let kubeconfig = Kubeconfig::read_from(&path).expect("read the written kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config from the written kubeconfig");
    assert_eq!(config.default_namespace, "default");
    assert_eq!(config.cluster_url.scheme_str(), Some("http"));
    let client = Client::try_from(config).expect("client over plain http");

    let mut events = watch_peers(client);
    let listed = tokio::time::timeout(WAIT, initial_list(&mut events))
        .await
        .expect("initial list in time");

    assert_eq!(listed.len(), 1, "the field selector keeps only {PEERS}");
    assert_eq!(listed[0].name_any(), PEERS);
    assert_eq!(ready_ips(&listed[0]), ["10.0.0.1"]);
    assert_eq!(listed[0].meta().resource_version.as_deref(), Some("1"));
}

#[tokio::test]
async fn later_applies_and_deletes_arrive_as_watch_events_not_polls() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    let mut events = watch_peers(client);
    initial_list(&mut events).await;

    api.apply_endpoints(endpoints(
        "default",
        "other",
        &["10.0.0.9"],
        &[],
        "peer",
        7001,
    ));
    api.apply_endpoints(endpoints(
        "default",
        PEERS,
        &["10.0.0.1", "10.0.0.2"],
        &["10.0.0.3"],
        "peer",
        7001,
    ));
    match next_ok(&mut events).await {
        Event::Apply(ep) => assert_eq!(ready_ips(&ep), ["10.0.0.1", "10.0.0.2"]),
        other => panic!("expected Apply, got {other:?}"),
    }

    assert!(api.delete_endpoints("default", PEERS));
    match next_ok(&mut events).await {
        Event::Delete(ep) => {
            assert_eq!(ep.name_any(), PEERS);
            assert_eq!(ep.resource_version().as_deref(), Some("4"));
        }
        other => panic!("expected Delete, got {other:?}"),
    }

    let requests = api.requests();
    let lists = requests.iter().filter(|r| !r.contains("watch=")).count();
    let watches: Vec<_> = requests
        .iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert_eq!(lists, 1, "one initial list: {requests:?}");
    assert_eq!(watches.len(), 1, "one long-lived watch: {requests:?}");
    assert!(
        watches[0].starts_with("GET /api/v1/namespaces/default/endpoints?"),
        "{watches:?}"
    );
    assert!(
        watches[0].contains("fieldSelector=metadata.name%3Dherald-peers"),
        "{watches:?}"
    );
    assert!(watches[0].contains("resourceVersion=1"), "{watches:?}");
}

#[tokio::test]
async fn a_watcher_relists_when_its_resource_version_has_expired() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    let mut events = watch_peers(client);
    initial_list(&mut events).await;
    watching(&api, &mut events).await;

    // While the watcher is disconnected the object changes and the history is compacted,
    // so resuming from its resourceVersion is impossible.
    api.drop_watches();
    list_ready(&api, &["10.0.0.2"]);
    api.expire_history();

    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert!(
                status.message.contains("too old resource version"),
                "{status:?}"
            );
        }
        other => panic!("expected the 410 watch error, got {other:?}"),
    }
    let relisted = initial_list(&mut events).await;
    assert_eq!(relisted.len(), 1);
    assert_eq!(ready_ips(&relisted[0]), ["10.0.0.2"]);

    list_ready(&api, &["10.0.0.3"]);
    match next_ok(&mut events).await {
        Event::Apply(ep) => assert_eq!(ready_ips(&ep), ["10.0.0.3"]),
        other => panic!("expected Apply after the re-list, got {other:?}"),
    }
    let lists = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch="))
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_resource_version_without_a_relist() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    let mut events = watch_peers(client);
    initial_list(&mut events).await;
    watching(&api, &mut events).await;

    api.drop_watches();
    list_ready(&api, &["10.0.0.2"]);

    match next_ok(&mut events).await {
        Event::Apply(ep) => assert_eq!(ready_ips(&ep), ["10.0.0.2"]),
        other => panic!("expected the change to be replayed, got {other:?}"),
    }
    let requests = api.requests();
    let lists = requests.iter().filter(|r| !r.contains("watch=")).count();
    let watches = requests.iter().filter(|r| r.contains("watch=true")).count();
    assert_eq!((lists, watches), (1, 2), "{requests:?}");
    assert!(requests[2].ends_with("resourceVersion=2"), "{requests:?}");
}

#[tokio::test]
async fn a_watcher_errors_while_the_server_is_down_and_catches_up_after_restart() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    let mut events = watch_peers(client);
    initial_list(&mut events).await;
    watching(&api, &mut events).await;
    let addr = api.addr();

    api.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
    let error = next(&mut events)
        .await
        .expect_err("the watcher reports the server being down");
    assert!(
        matches!(
            error,
            watcher::Error::WatchStartFailed(_) | watcher::Error::WatchFailed(_)
        ),
        "{error:?}"
    );

    list_ready(&api, &["10.0.0.2"]);
    api.restart().await;
    assert_eq!(api.addr(), addr);

    let caught_up = loop {
        match next(&mut events).await {
            Err(_) => continue,
            Ok(Event::Apply(ep)) => break ep,
            Ok(other) => panic!("expected the missed change to be replayed, got {other:?}"),
        }
    };
    assert_eq!(ready_ips(&caught_up), ["10.0.0.2"]);
}

#[tokio::test]
async fn a_forbidden_watcher_yields_a_403_and_recovers_when_allowed() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    api.forbid(true);
    let mut events = watch_peers(client);

    assert!(matches!(next_ok(&mut events).await, Event::Init));
    match next(&mut events).await {
        Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) => {
            assert_eq!(status.code, 403);
            assert_eq!(status.reason, "Forbidden");
            assert_eq!(
                status.message,
                "endpoints is forbidden: User \"system:serviceaccount:default:herald\" cannot \
                 list resource \"endpoints\" in API group \"\" in the namespace \"default\""
            );
            assert!(status.is_forbidden());
        }
        other => panic!("expected a 403 from the initial list, got {other:?}"),
    }

    api.forbid(false);
    let listed = initial_list(&mut events).await;
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn endpoint_slices_are_watched_by_their_service_label() {
    let (api, client) = start().await;
    api.apply_endpoint_slice(endpoint_slice(
        "default",
        "herald-peers-abc",
        PEERS,
        &[("10.0.0.1", true), ("10.0.0.2", false)],
        "peer",
        7001,
    ));
    api.apply_endpoint_slice(endpoint_slice(
        "default",
        "other-xyz",
        "other",
        &[("10.0.0.9", true)],
        "peer",
        7001,
    ));
    let slices = Api::<EndpointSlice>::namespaced(client, "default");
    let config = watcher::Config::default().labels("kubernetes.io/service-name=herald-peers");
    let mut events = watcher::watcher(slices, config).boxed();

    let listed = initial_list(&mut events).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name_any(), "herald-peers-abc");
    assert_eq!(slice_ips(&listed[0]), ["10.0.0.1", "10.0.0.2"]);
    let ready: Vec<_> = listed[0]
        .endpoints
        .iter()
        .map(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready))
        .collect();
    assert_eq!(ready, [Some(true), Some(false)]);

    api.apply_endpoint_slice(endpoint_slice(
        "default",
        "herald-peers-def",
        PEERS,
        &[("10.0.0.3", true)],
        "peer",
        7001,
    ));
    match next_ok(&mut events).await {
        Event::Apply(slice) => assert_eq!(slice.name_any(), "herald-peers-def"),
        other => panic!("expected Apply, got {other:?}"),
    }

    assert!(api.delete_endpoint_slice("default", "herald-peers-abc"));
    match next_ok(&mut events).await {
        Event::Delete(slice) => assert_eq!(slice.name_any(), "herald-peers-abc"),
        other => panic!("expected Delete, got {other:?}"),
    }

    let watch = api
        .requests()
        .into_iter()
        .find(|r| r.contains("watch=true"))
        .expect("a watch request");
    assert!(
        watch.starts_with("GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices?"),
        "{watch}"
    );
    assert!(
        watch.contains("labelSelector=kubernetes.io%2Fservice-name%3Dherald-peers"),
        "{watch}"
    );
}

#[tokio::test]
async fn relabelling_a_slice_out_of_the_selection_reads_as_a_delete() {
    let (api, client) = start().await;
    api.apply_endpoint_slice(endpoint_slice(
        "default",
        "herald-peers-abc",
        PEERS,
        &[("10.0.0.1", true)],
        "peer",
        7001,
    ));
    let slices = Api::<EndpointSlice>::namespaced(client, "default");
    let config = watcher::Config::default().labels("kubernetes.io/service-name=herald-peers");
    let mut events = watcher::watcher(slices, config).boxed();
    initial_list(&mut events).await;

    api.apply_endpoint_slice(endpoint_slice(
        "default",
        "herald-peers-abc",
        "someone-else",
        &[("10.0.0.1", true)],
        "peer",
        7001,
    ));
    match next_ok(&mut events).await {
        Event::Delete(slice) => assert_eq!(slice.name_any(), "herald-peers-abc"),
        other => panic!("expected Delete, got {other:?}"),
    }
}

#[tokio::test]
async fn get_and_list_answer_like_the_api_server() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    api.apply_endpoints(endpoints("other", PEERS, &["10.0.0.9"], &[], "peer", 7001));
    let default = Api::<Endpoints>::namespaced(client.clone(), "default");

    let got = default.get(PEERS).await.expect("get an existing object");
    assert_eq!(ready_ips(&got), ["10.0.0.1"]);
    match default.get("missing").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
        }
        other => panic!("expected 404, got {other:?}"),
    }

    let list = default.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.metadata.resource_version.as_deref(), Some("2"));
    let everywhere = Api::<Endpoints>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={PEERS}")))
        .await
        .expect("cluster-wide list");
    assert_eq!(everywhere.items.len(), 2);

    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn a_raw_watch_gets_bookmarks_and_ends_at_its_timeout() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    let default = Api::<Endpoints>::namespaced(client, "default");
    let params = WatchParams::default().timeout(2);
    let mut stream = default
        .watch(&params, "0")
        .await
        .expect("start a watch")
        .boxed();

    let mut seen = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(event) = stream.next().await {
            seen.push(match event.expect("a watch event") {
                WatchEvent::Added(ep) => format!("ADDED {}", ep.name_any()),
                WatchEvent::Bookmark(bookmark) => {
                    format!("BOOKMARK {}", bookmark.metadata.resource_version)
                }
                other => format!("{other:?}"),
            });
        }
    })
    .await;

    assert!(ended.is_ok(), "the server ends the watch at timeoutSeconds");
    assert_eq!(seen.first().map(String::as_str), Some("ADDED herald-peers"));
    assert!(seen.contains(&"BOOKMARK 1".to_owned()), "{seen:?}");
}

#[tokio::test]
async fn a_watch_resuming_from_before_the_history_gets_410_in_stream() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    list_ready(&api, &["10.0.0.2"]);
    let default = Api::<Endpoints>::namespaced(client, "default");

    let mut replay = default
        .watch(&WatchParams::default(), "1")
        .await
        .expect("start a watch")
        .boxed();
    let event = tokio::time::timeout(WAIT, replay.next())
        .await
        .expect("in time");
    assert!(
        matches!(event, Some(Ok(WatchEvent::Modified(_)))),
        "{event:?}"
    );

    api.expire_history();
    let mut expired = default
        .watch(&WatchParams::default(), "1")
        .await
        .expect("the watch itself is accepted")
        .boxed();
    match tokio::time::timeout(WAIT, expired.next())
        .await
        .expect("in time")
    {
        Some(Ok(WatchEvent::Error(status))) => assert_eq!(status.code, 410),
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    let end = tokio::time::timeout(WAIT, expired.next())
        .await
        .expect("in time");
    assert!(end.is_none(), "the stream ends after the 410");
}

#[tokio::test]
async fn requests_without_the_token_are_unauthorized() {
    let api = KubeApi::start(Ipv4Addr::LOCALHOST.into()).await;
    let config = kube::Config::new(
        format!("http://{}", api.addr())
            .parse()
            .expect("a cluster URL"),
    );
    let client = Client::try_from(config).expect("anonymous client");
    match client.apiserver_version().await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn after_a_token_rotation_the_old_token_is_unauthorized() {
    let (api, client) = start().await;
    assert!(client.apiserver_version().await.is_ok());
    api.set_token("rotated-token");
    match client.apiserver_version().await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn a_change_behind_the_watches_reaches_a_watcher_only_through_410_and_a_relist() {
    let (api, client) = start().await;
    list_ready(&api, &["10.0.0.1"]);
    let mut events = watch_peers(client);
    initial_list(&mut events).await;
    watching(&api, &mut events).await;

    api.apply_endpoints_behind_watches(endpoints(
        "default",
        PEERS,
        &["10.0.0.2"],
        &[],
        "peer",
        7001,
    ));
    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected the 410 watch error, got {other:?}"),
    }
    let relisted = initial_list(&mut events).await;
    assert_eq!(ready_ips(&relisted[0]), ["10.0.0.2"]);
}
