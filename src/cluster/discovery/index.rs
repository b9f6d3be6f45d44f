//! The pure peer index: Kubernetes objects in, a peer set out. No I/O, so
//! every rule here is unit-tested with fabricated objects.
//!
//! Discovery input is untrusted. The rules:
//! - peers are the addresses under both `addresses` and `notReadyAddresses`
//!   (EndpointSlices: every endpoint, ready or not, terminating included: a
//!   draining pod still has users to deliver to), on the port named by
//!   `--k8s-peer-port-name` (or a subset's single unnamed port);
//! - this pod's own IP is left out; duplicates collapse; addresses without a
//!   `targetRef`, or that do not parse, are taken or skipped, never fatal;
//! - the peer set is never emptied by mistake: while no object lists any
//!   address at all (not even this pod), deleted objects included, the last
//!   published set stays. A set with only this pod in it is real: it empties
//!   the group;
//! - a re-list (after a dropped watch or 410 Gone) replaces the objects only
//!   once it is complete, so the set never passes through a partial state;
//! - the set is the union of every object: a Service's EndpointSlices (100
//!   endpoints each by default, so a 1,000-pod Service has ten or more) are
//!   merged, and an endpoint listed by two slices while the controller moves
//!   it is one peer. A v1 `Endpoints` holds at most 1,000 addresses: past
//!   that the controller truncates it and says so in the
//!   [`OVER_CAPACITY`] annotation, which the observation carries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{EndpointPort, Endpoints};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The annotation the endpoints controller puts on a v1 `Endpoints` whose
/// Service has more than 1,000 addresses, of which it keeps 1,000.
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// The peers of a pod: `host:port` of their peer listeners, sorted.
pub type PeerSet = BTreeSet<String>;

/// What to take from an object.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The name of the peer port.
    pub port_name: String,
    /// This pod's IP, left out.
    pub self_ip: Option<IpAddr>,
}

/// The peers one object lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Other pods' peer addresses.
    pub peers: PeerSet,
    /// Every address the object lists on the peer port, this pod included.
    pub addresses: usize,
    /// The object says it lists only part of the Service ([`OVER_CAPACITY`]).
    pub truncated: bool,
}

impl Filter {
    fn add(&self, observation: &mut Observation, host: &str, port: i32) {
        let Ok(port) = u16::try_from(port) else {
            return;
        };
        observation.addresses += 1;
        match host.parse::<IpAddr>() {
            Ok(ip) if Some(ip) == self.self_ip => {}
            Ok(ip) => {
                observation
                    .peers
                    .insert(SocketAddr::new(ip, port).to_string());
            }
            // FQDN slices name hosts rather than IPs.
            Err(_) if !host.is_empty() => {
                observation.peers.insert(format!("{host}:{port}"));
            }
            Err(_) => observation.addresses -= 1,
        }
    }

    fn port<'a, I>(&self, ports: I) -> Option<i32>
    where
        I: IntoIterator<Item = (Option<&'a str>, i32)>,
    {
        let ports: Vec<_> = ports.into_iter().collect();
        if let Some((_, port)) = ports
            .iter()
            .find(|(name, _)| *name == Some(self.port_name.as_str()))
        {
            return Some(*port);
        }
        match ports.as_slice() {
            [(None | Some(""), port)] => Some(*port),
            _ => None,
        }
    }

    /// The peers a v1 `Endpoints` object lists.
    pub fn endpoints(&self, endpoints: &Endpoints) -> Observation {
        let mut observation = Observation {
            truncated: endpoints
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(OVER_CAPACITY)),
            ..Observation::default()
        };
        for subset in endpoints.subsets.iter().flatten() {
            let ports = subset
                .ports
                .iter()
                .flatten()
                .map(|p: &EndpointPort| (p.name.as_deref(), p.port));
            let Some(port) = self.port(ports) else {
                continue;
            };
            let addresses = subset.addresses.iter().flatten();
            let not_ready = subset.not_ready_addresses.iter().flatten();
            for address in addresses.chain(not_ready) {
                self.add(&mut observation, &address.ip, port);
            }
        }
        observation
    }

    /// The peers a discovery.k8s.io/v1 `EndpointSlice` lists.
    pub fn slice(&self, slice: &EndpointSlice) -> Observation {
        let mut observation = Observation::default();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.as_deref(), p.port?)));
        let Some(port) = self.port(ports) else {
            return observation;
        };
        for endpoint in &slice.endpoints {
            for host in &endpoint.addresses {
                self.add(&mut observation, host, port);
            }
        }
        observation
    }
}

/// The objects seen so far, keyed by name, and the peer set they make.
#[derive(Debug, Default)]
pub struct Index {
    objects: BTreeMap<String, Observation>,
    relisting: Option<BTreeMap<String, Observation>>,
    published: Option<PeerSet>,
}

impl Index {
    /// An object was added or changed. Returns the new peer set if it moved.
    pub fn apply(&mut self, name: String, observation: Observation) -> Option<PeerSet> {
        self.objects.insert(name, observation);
        self.publish()
    }

    /// An object was deleted. Returns the new peer set if it moved.
    pub fn delete(&mut self, name: &str) -> Option<PeerSet> {
        self.objects.remove(name);
        self.publish()
    }

    /// A re-list begins: objects are gathered aside until it is done.
    pub fn relist_begin(&mut self) {
        self.relisting = Some(BTreeMap::new());
    }

    /// One object of the re-list.
    pub fn relist_object(&mut self, name: String, observation: Observation) {
        self.relisting
            .get_or_insert_with(BTreeMap::new)
            .insert(name, observation);
    }

    /// The re-list is complete: its objects replace the old ones. Returns
    /// the new peer set if it moved.
    pub fn relist_done(&mut self) -> Option<PeerSet> {
        if let Some(objects) = self.relisting.take() {
            self.objects = objects;
        }
        self.publish()
    }

    /// The peer set last returned, if any.
    pub fn published(&self) -> Option<&PeerSet> {
        self.published.as_ref()
    }

    fn publish(&mut self) -> Option<PeerSet> {
        let addresses: usize = self.objects.values().map(|o| o.addresses).sum();
        if addresses == 0 && self.published.is_some() {
            // Nothing lists even this pod: a vanished or emptied object, not
            // a real membership. Keep the last known peers.
            return None;
        }
        let peers: PeerSet = self
            .objects
            .values()
            .flat_map(|o| o.peers.iter().cloned())
            .collect();
        if self.published.as_ref() == Some(&peers) {
            return None;
        }
        self.published = Some(peers.clone());
        Some(peers)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, ObjectReference};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    use super::*;

    fn filter(self_ip: Option<&str>) -> Filter {
        Filter {
            port_name: "peer".into(),
            self_ip: self_ip.map(|ip| ip.parse().expect("valid ip")),
        }
    }

    fn address(ip: &str, with_ref: bool) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            target_ref: with_ref.then(|| ObjectReference {
                kind: Some("Pod".into()),
                name: Some(format!("pod-{ip}")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn port(name: Option<&str>, port: i32) -> EndpointPort {
        EndpointPort {
            name: name.map(Into::into),
            port,
            ..Default::default()
        }
    }

    fn endpoints(subsets: Vec<EndpointSubset>) -> Endpoints {
        Endpoints {
            subsets: Some(subsets),
            ..Default::default()
        }
    }

    fn subset(ready: &[&str], not_ready: &[&str], ports: Vec<EndpointPort>) -> EndpointSubset {
        EndpointSubset {
            addresses: Some(ready.iter().map(|ip| address(ip, true)).collect()),
            not_ready_addresses: Some(not_ready.iter().map(|ip| address(ip, true)).collect()),
            ports: Some(ports),
        }
    }

    fn set(addrs: &[&str]) -> PeerSet {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn ready_and_not_ready_addresses_are_peers_minus_this_pod() {
        let ep = endpoints(vec![subset(
            &["10.0.0.1", "10.0.0.2"],
            &["10.0.0.3"],
            vec![port(Some("http"), 8080), port(Some("peer"), 7070)],
        )]);
        let seen = filter(Some("10.0.0.2")).endpoints(&ep);
        assert_eq!(seen.peers, set(&["10.0.0.1:7070", "10.0.0.3:7070"]));
        assert_eq!(seen.addresses, 3);
    }

    #[test]
    fn duplicates_collapse_and_addresses_without_target_ref_count() {
        let mut s = subset(
            &["10.0.0.1", "10.0.0.1"],
            &[],
            vec![port(Some("peer"), 7070)],
        );
        s.addresses
            .get_or_insert_with(Vec::new)
            .push(address("10.0.0.9", false));
        let seen = filter(None).endpoints(&endpoints(vec![s]));
        assert_eq!(seen.peers, set(&["10.0.0.1:7070", "10.0.0.9:7070"]));
    }

    #[test]
    fn subsets_without_the_named_port_are_skipped_and_a_lone_unnamed_port_is_used() {
        let ep = endpoints(vec![
            subset(&["10.0.0.1"], &[], vec![port(Some("http"), 8080)]),
            subset(&["10.0.0.2"], &[], vec![port(None, 7071)]),
            EndpointSubset::default(),
        ]);
        let seen = filter(None).endpoints(&ep);
        assert_eq!(seen.peers, set(&["10.0.0.2:7071"]));
    }

    #[test]
    fn garbage_addresses_and_ports_are_skipped() {
        let ep = endpoints(vec![
            subset(&["", "fe80::1"], &[], vec![port(Some("peer"), 7070)]),
            subset(&["10.0.0.5"], &[], vec![port(Some("peer"), 70_000)]),
        ]);
        let seen = filter(None).endpoints(&ep);
        assert_eq!(seen.peers, set(&["[fe80::1]:7070"]));
    }

    #[test]
    fn an_object_with_no_subsets_observes_nothing() {
        let seen = filter(None).endpoints(&Endpoints::default());
        assert_eq!(seen, Observation::default());
    }

    #[test]
    fn slices_take_every_endpoint_ready_or_not() {
        let endpoint = |ip: &str, ready: bool| Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        };
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![
                endpoint("10.0.0.1", true),
                endpoint("10.0.0.2", false),
                endpoint("10.0.0.3", true),
            ],
            ports: Some(vec![k8s_openapi::api::discovery::v1::EndpointPort {
                name: Some("peer".into()),
                port: Some(7070),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let seen = filter(Some("10.0.0.3")).slice(&slice);
        assert_eq!(seen.peers, set(&["10.0.0.1:7070", "10.0.0.2:7070"]));
        assert_eq!(seen.addresses, 3);
    }

    fn observed(peers: &[&str], with_self: bool) -> Observation {
        Observation {
            peers: set(peers),
            addresses: peers.len() + usize::from(with_self),
            truncated: false,
        }
    }

    #[test]
    fn the_index_publishes_changes_only() {
        let mut index = Index::default();
        assert_eq!(
            index.apply("a".into(), observed(&["p1"], true)),
            Some(set(&["p1"]))
        );
        assert_eq!(index.apply("a".into(), observed(&["p1"], true)), None);
        assert_eq!(
            index.apply("a".into(), observed(&["p1", "p2"], true)),
            Some(set(&["p1", "p2"]))
        );
    }

    #[test]
    fn a_vanished_or_emptied_object_keeps_the_last_peers() {
        let mut index = Index::default();
        index.apply("a".into(), observed(&["p1", "p2"], true));
        assert_eq!(index.apply("a".into(), Observation::default()), None);
        assert_eq!(index.delete("a"), None);
        assert_eq!(index.published(), Some(&set(&["p1", "p2"])));
    }

    #[test]
    fn an_object_listing_only_this_pod_empties_the_group() {
        let mut index = Index::default();
        index.apply("a".into(), observed(&["p1"], true));
        assert_eq!(index.apply("a".into(), observed(&[], true)), Some(set(&[])));
    }

    #[test]
    fn a_relist_replaces_objects_only_when_done() {
        let mut index = Index::default();
        index.apply("a".into(), observed(&["p1"], true));
        index.apply("b".into(), observed(&["p2"], false));
        index.relist_begin();
        index.relist_object("a".into(), observed(&["p1", "p3"], true));
        assert_eq!(index.published(), Some(&set(&["p1", "p2"])));
        assert_eq!(index.relist_done(), Some(set(&["p1", "p3"])));
    }

    #[test]
    fn slices_of_one_service_are_unioned() {
        let mut index = Index::default();
        index.apply("s1".into(), observed(&["p1"], true));
        assert_eq!(
            index.apply("s2".into(), observed(&["p2"], false)),
            Some(set(&["p1", "p2"]))
        );
        assert_eq!(index.delete("s2"), Some(set(&["p1"])));
    }

    /// A slice of `ips` on the peer port, as the EndpointSlice controller
    /// writes them (100 endpoints each by default).
    fn slice_of(ips: &[String]) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.clone()],
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![k8s_openapi::api::discovery::v1::EndpointPort {
                name: Some("peer".into()),
                port: Some(7070),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn twelve_hundred_pods_in_twelve_slices_are_one_peer_set_and_an_endpoint_moving_between_slices_stays()
     {
        let ips: Vec<String> = (0..1200)
            .map(|n| format!("10.1.{}.{}", n / 250, n % 250 + 1))
            .collect();
        let me = filter(Some("10.1.0.1"));
        let mut index = Index::default();
        index.relist_begin();
        for (n, chunk) in ips.chunks(100).enumerate() {
            index.relist_object(format!("herald-{n}"), me.slice(&slice_of(chunk)));
        }
        let peers = index.relist_done().expect("published");
        assert_eq!(peers.len(), 1199, "every pod but this one");
        assert!(!peers.contains("10.1.0.1:7070"));
        // The controller moves 10.1.4.51 (pod 1050) from slice 10 to slice
        // 11: while both list it, and after, it is one peer.
        let moving = ips[1050].clone();
        let mut eleven = ips[1100..].to_vec();
        eleven.push(moving.clone());
        assert_eq!(
            index.apply("herald-11".into(), me.slice(&slice_of(&eleven))),
            None
        );
        let ten: Vec<String> = ips[1000..1100]
            .iter()
            .filter(|ip| **ip != moving)
            .cloned()
            .collect();
        assert_eq!(
            index.apply("herald-10".into(), me.slice(&slice_of(&ten))),
            None
        );
        assert_eq!(index.published().map(BTreeSet::len), Some(1199));
        // A slice deleted (its pods gone) takes exactly its peers.
        let after = index.delete("herald-3").expect("moved");
        assert_eq!(after.len(), 1099);
        assert!(
            ips[300..400]
                .iter()
                .all(|ip| !after.contains(&format!("{ip}:7070")))
        );
    }

    #[test]
    fn an_endpoints_object_marked_over_capacity_is_observed_as_truncated() {
        let mut ep = endpoints(vec![subset(
            &["10.0.0.1"],
            &[],
            vec![port(Some("peer"), 7070)],
        )]);
        assert!(!filter(None).endpoints(&ep).truncated);
        ep.metadata.annotations = Some([(OVER_CAPACITY.to_owned(), "truncated".to_owned())].into());
        let seen = filter(None).endpoints(&ep);
        assert!(seen.truncated);
        assert_eq!(
            seen.peers,
            set(&["10.0.0.1:7070"]),
            "what it lists still counts"
        );
    }

    #[test]
    fn the_first_observation_is_published_even_when_empty() {
        let mut index = Index::default();
        assert_eq!(index.relist_done(), Some(set(&[])));
    }
}
