//! `operator demo`: the etcd 11651 failure and its automatic repair, end to end, in about a
//! minute. Three local members run with the fault switch on; the seed's trigger is played
//! (auth on, a grant, a member restarted before any write, writes through every member); the
//! supervisor's table shows the AuthRevision drift appear, the heal run, and the members
//! agree again. It succeeds only if every acknowledged write is then readable on every member.

use std::path::PathBuf;
use std::time::Duration;

use crds::StorageClusterSpec;
use storage_node::pb::authpb::{Permission, permission::Type as PermissionType};
use storage_node::pb::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthenticateRequest, PutRequest,
    RangeRequest, auth_client::AuthClient, kv_client::KvClient,
};
use tonic::transport::Channel;

use crate::client;
use crate::supervisor::{self, Config, Supervisor};

/// Why the demo did not show what it promises.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The supervisor failed.
    #[error(transparent)]
    Supervisor(#[from] supervisor::Error),
    /// A member refused or did not answer a call the demo makes.
    #[error("{call} on {endpoint}: {message}")]
    Call {
        /// The call.
        call: &'static str,
        /// Where.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// Something the demo checks did not hold.
    #[error("{0}")]
    Check(String),
}

/// Result of the demo.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes made through each member.
const WRITES_PER_MEMBER: usize = 5;
/// Bound on each wait of the demo.
const STAGE_LIMIT: Duration = Duration::from_secs(90);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The demo's cluster: three members, auth on, healing automatic, probing every 2 seconds
/// (every other field at the resource's defaults).
pub fn spec() -> Result<StorageClusterSpec> {
    let mut spec: StorageClusterSpec = serde_json::from_value(serde_json::json!({}))
        .map_err(|e| Error::Check(format!("StorageCluster defaults: {e}")))?;
    spec.replicas = 3;
    spec.healing.probe_interval_seconds = 2;
    spec.healing.consecutive_probes = 3;
    Ok(spec)
}

/// Runs the demo in `workdir` with `storage_node`; returns the one-line summary.
pub async fn run(workdir: PathBuf, storage_node: PathBuf) -> Result<String> {
    println!(
        "Mend demo: 3 storage-node members with the etcd 11651 fault switch on, in {}",
        workdir.display()
    );
    let mut sup = Supervisor::open(Config {
        name: "demo".into(),
        spec: spec()?,
        workdir,
        storage_node,
        node_args: ["--unsafe-reproduce-etcd-11651", "--bcrypt-cost", "4"]
            .map(String::from)
            .to_vec(),
        print_table: true,
        spec_file: None,
        annotations: Default::default(),
    })?;
    let result = play(&mut sup).await;
    sup.shutdown()?;
    result
}

async fn play(sup: &mut Supervisor) -> Result<String> {
    let settled = |s: &Supervisor| s.auth_ready() && s.status().is_some_and(supervisor::settled);
    stage(sup, "the members to start and agree", settled).await?;
    let endpoints = sup.endpoints();
    let (user, password) = sup
        .credentials()
        .cloned()
        .ok_or_else(|| Error::Check("the demo needs auth on".into()))?;

    println!("\n>>> The seed's trigger: a role and a grant through node2 (auth is on) ...");
    let (channel, token) = login(&endpoints[1], &user, &password).await?;
    let mut auth = AuthClient::new(channel);
    auth.role_add(request(AuthRoleAddRequest { name: "app".into() }, &token))
        .await
        .map_err(|s| call("RoleAdd", &endpoints[1], &s))?;
    auth.role_grant_permission(request(
        AuthRoleGrantPermissionRequest {
            name: "app".into(),
            perm: Some(Permission {
                perm_type: PermissionType::Read as i32,
                key: b"demo/".to_vec(),
                range_end: b"demo0".to_vec(),
            }),
        },
        &token,
    ))
    .await
    .map_err(|s| call("RoleGrantPermission", &endpoints[1], &s))?;
    stage(sup, "every member to apply the grant", settled).await?;

    println!("\n>>> ... then node1 restarts before any write: it replays the grant");
    sup.platform_mut()
        .stop_member("node1")
        .map_err(supervisor::Error::from)?;
    stage(sup, "node1 to be back", |s| {
        s.status()
            .is_some_and(|st| st.members.iter().all(|m| m.healthy))
    })
    .await?;

    println!("\n>>> Writes through every member ({WRITES_PER_MEMBER} each), all acknowledged");
    let mut acknowledged = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let (channel, token) = login(endpoint, &user, &password).await?;
        let mut kv = KvClient::new(channel);
        for n in 0..WRITES_PER_MEMBER {
            let key = format!("demo/node{}-{n}", i + 1);
            let value = format!("written through node{}", i + 1);
            kv.put(request(
                PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..PutRequest::default()
                },
                &token,
            ))
            .await
            .map_err(|s| call("Put", endpoint, &s))?;
            acknowledged.push((key, value));
        }
    }
    let mut counts = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let held = present(endpoint, &user, &password, &acknowledged).await?;
        counts.push(format!("node{} holds {held}", i + 1));
    }
    println!(
        "    of {} acknowledged writes, {}",
        acknowledged.len(),
        counts.join(", ")
    );

    println!("\n>>> The operator probes, detects the drift and heals (no human involved)");
    let healed = |s: &Supervisor| s.heals() >= 1 && settled(s);
    stage(sup, "the heal", healed).await?;
    let times = sup.last_heal_times().unwrap_or_default();

    for endpoint in &endpoints {
        let held = present(endpoint, &user, &password, &acknowledged).await?;
        if held != acknowledged.len() {
            return Err(Error::Check(format!(
                "{endpoint} holds {held} of {} acknowledged writes after the heal",
                acknowledged.len()
            )));
        }
    }
    Ok(format!(
        "demo passed: AuthRevision drift confirmed {:.1}s after a probe first showed it, {} \
         member(s) rebuilt in {:.1}s, all {} acknowledged writes readable on all {} members",
        times.detection.as_secs_f64(),
        times.rebuilt,
        times.heal.as_secs_f64(),
        acknowledged.len(),
        endpoints.len()
    ))
}

/// Ticks until `done`, or fails saying what did not happen in time.
async fn stage(
    sup: &mut Supervisor,
    what: &str,
    done: impl FnMut(&Supervisor) -> bool,
) -> Result<()> {
    if sup.tick_until(STAGE_LIMIT, done).await? {
        Ok(())
    } else {
        Err(Error::Check(format!(
            "waited {}s for {what}",
            STAGE_LIMIT.as_secs()
        )))
    }
}

/// How many of `writes` `endpoint` holds, reading its own copy (serializable).
async fn present(
    endpoint: &str,
    user: &str,
    password: &str,
    writes: &[(String, String)],
) -> Result<usize> {
    let (channel, token) = login(endpoint, user, password).await?;
    let mut kv = KvClient::new(channel);
    let mut held = 0;
    for (key, value) in writes {
        let reply = kv
            .range(request(
                RangeRequest {
                    key: key.clone().into_bytes(),
                    serializable: true,
                    ..RangeRequest::default()
                },
                &token,
            ))
            .await
            .map_err(|s| call("Range", endpoint, &s))?
            .into_inner();
        if reply
            .kvs
            .first()
            .is_some_and(|kv| kv.value == value.as_bytes())
        {
            held += 1;
        }
    }
    Ok(held)
}

async fn login(endpoint: &str, user: &str, password: &str) -> Result<(Channel, String)> {
    let channel = client::connect(endpoint, None, CALL_TIMEOUT)
        .await
        .map_err(|message| Error::Call {
            call: "connect",
            endpoint: endpoint.to_string(),
            message,
        })?;
    let token = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest {
            name: user.to_string(),
            password: password.to_string(),
        })
        .await
        .map_err(|s| call("Authenticate", endpoint, &s))?
        .into_inner()
        .token;
    Ok((channel, token))
}

fn request<T>(message: T, token: &str) -> tonic::Request<T> {
    client::request(message, Some(token))
}

fn call(call: &'static str, endpoint: &str, status: &tonic::Status) -> Error {
    Error::Call {
        call,
        endpoint: endpoint.to_string(),
        message: status.message().to_string(),
    }
}
