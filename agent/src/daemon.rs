//! The `georepd` process: the data-directory lock, the real link, processes and clock,
//! the local API server, and the incarnation loop that starts the agent again under a
//! higher generation when another agent with its node id displaced it.

use std::sync::Arc;
use std::time::Duration;

use georep_mesh::Link;
use georep_mesh::NodeIdentity;
use georep_mesh::SystemClock;
use georep_mesh::{QuicLink, QuicOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::config::AgentConfig;
use crate::process::{ProcessBackend, RealBackend};
use crate::supervise::SupervisePolicy;

/// Runs `georepd` with real QUIC, processes and clock until `shutdown`.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    // Before anything else touches the data directory or the API socket.
    let _lock = crate::data_dir_lock::DataDirLock::acquire(&config.data_dir)?;
    let config = crate::gluster::resolve(config).context("cannot use the local glusterd")?;
    for brick in &config.bricks {
        // Not a refusal: the brick may be a mount that comes up later.
        if !brick.path.is_dir() {
            tracing::warn!(volume = %brick.volume, path = %brick.path.display(), "brick directory does not exist (yet)");
        }
    }
    let identity = NodeIdentity::load(&config.tls_ca, &config.tls_cert, &config.tls_key)
        .context("cannot load TLS material")?;
    if identity.node_id() != config.node_id {
        anyhow::bail!(
            "certificate {} is for node `{}`, but this agent is `{}`",
            config.tls_cert.display(),
            identity.node_id(),
            config.node_id
        );
    }
    let mut floor = 0;
    loop {
        match run_incarnation(&config, &identity, floor, &shutdown).await? {
            None => {
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
                return Ok(());
            }
            Some(displaced_by) => {
                floor = displaced_by + 1;
                tracing::warn!(
                    node = %config.node_id,
                    generation = floor,
                    "restarting the mesh under a generation above the one that displaced this node"
                );
            }
        }
    }
}

/// Longest the agent waits for a peer before it tells systemd it is ready anyway.
const JOIN_GIVE_UP: Duration = Duration::from_secs(15);

/// `READY=1` to systemd (`Type=notify`) once the API answers and the agent has a live
/// peer, or has no seeds, or gave up waiting for them after [`JOIN_GIVE_UP`] (a
/// first node, or every seed down: it goes on trying in the background).
async fn ready_when_joined(agent: Arc<Agent>, has_seeds: bool, round: CancellationToken) {
    let deadline = Instant::now() + JOIN_GIVE_UP;
    while has_seeds && Instant::now() < deadline {
        if agent.mesh().topology().await.live().count() > 1 {
            break;
        }
        tokio::select! {
            _ = round.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    tracing::info!("ready");
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("running"),
    ]);
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`); a no-op otherwise.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// How often a running agent checks whether another incarnation of its id displaced it.
const DISPLACEMENT_CHECK: Duration = Duration::from_secs(1);
/// How often it says so while that other incarnation is live.
const DISPLACEMENT_WARNING: Duration = Duration::from_secs(30);

/// Runs the agent under one chitchat generation (at least `floor`) until `shutdown`
/// (`None`) or until a newer incarnation of this node id that displaced it is dead
/// (`Some(its generation)`): then the caller starts again above it, and every peer sees
/// this node again. Monitors are left running across that restart and adopted again.
async fn run_incarnation(
    config: &AgentConfig,
    identity: &NodeIdentity,
    floor: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<u64>> {
    use anyhow::Context;
    let listener = crate::api::serve::bind_socket(&config.api_socket).with_context(|| {
        format!(
            "cannot serve the local API on {}",
            config.api_socket.display()
        )
    })?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    let dbus = match config.dbus {
        Some(bus) => Some(crate::dbus::connect(bus).await.with_context(|| {
            format!(
                "cannot export D-Bus objects as {} on the {} bus",
                crate::dbus::BUS_NAME,
                bus.name()
            )
        })?),
        None => None,
    };
    let data_endpoint = crate::datapath::server::bind(
        identity,
        config
            .data_listen
            .unwrap_or(std::net::SocketAddr::new(config.listen.ip(), 0)),
    )?;
    let link = bind_link(config, identity, floor > 0).await?;
    let backend: Arc<dyn ProcessBackend> = Arc::new(RealBackend::new());
    let agent = Agent::start_above(
        config.clone(),
        link,
        backend,
        Arc::new(crate::host_facts::RealHostFacts),
        Arc::new(SystemClock),
        SupervisePolicy {
            backoff_cap: std::time::Duration::from_millis(config.monitor_restart_max_ms),
            ..SupervisePolicy::default()
        },
        floor,
    )
    .await?;
    tracing::info!(node = %config.node_id, listen = %config.listen, api = %config.api_socket.display(), generation = agent.mesh().generation(), "georepd running");
    let round = shutdown.child_token();
    let api_task = tokio::spawn(crate::api::serve::serve(
        listener,
        crate::api::router(agent.clone()),
        round.clone(),
        crate::api::serve::Limits::default(),
    ));
    let loop_task = tokio::spawn(agent.clone().run_loop(round.clone()));
    let glusterd_task = tokio::spawn(agent.clone().follow_glusterd(round.clone()));
    let ready_task = tokio::spawn(ready_when_joined(
        agent.clone(),
        !config.seeds.is_empty(),
        round.clone(),
    ));
    let metrics_task = metrics.map(|listener| {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving Prometheus metrics at /metrics");
        tokio::spawn(crate::api::metrics::serve(listener, agent.clone(), round.clone()))
    });
    let data_addr = data_endpoint
        .local_addr()
        .map(|bound| std::net::SocketAddr::new(config.advertise.ip(), bound.port()))
        .context("data path endpoint")?;
    agent
        .mesh()
        .set_owned(crate::datapath::DATA_ADDR_KEY, data_addr.to_string())
        .await;
    tracing::info!(%data_addr, "data path endpoint listening");
    let data_task = tokio::spawn(crate::datapath::server::serve(
        data_endpoint,
        agent.clone(),
        round.clone(),
    ));
    let dbus_task = dbus.map(|connection| {
        tracing::info!(name = crate::dbus::BUS_NAME, "exporting D-Bus objects");
        tokio::spawn(crate::dbus::serve(connection, agent.clone(), round.clone()))
    });
    // A monitor that exits is noticed at once, not at the next poll: its status must
    // not read "running" to a waiting client while it is already gone.
    let child_task = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(mut children) => {
            let agent = agent.clone();
            let round = round.clone();
            Some(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = round.cancelled() => return,
                        received = children.recv() => match received {
                            Some(()) => agent.nudge(),
                            None => return,
                        },
                    }
                }
            }))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGCHLD: monitor exits are noticed by polling");
            None
        }
    };
    let displaced = tokio::select! {
        _ = shutdown.cancelled() => None,
        generation = displaced_by_a_dead_incarnation(&agent) => Some(generation),
    };
    round.cancel();
    let _ = ready_task.await;
    let _ = loop_task.await;
    let _ = glusterd_task.await;
    if let Some(task) = child_task {
        let _ = task.await;
    }
    let _ = api_task.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some(task) = dbus_task {
        let _ = task.await;
    }
    let _ = data_task.await;
    let _ = std::fs::remove_file(&config.api_socket);
    agent.shutdown().await;
    Ok(displaced)
}

/// The gossip link: QUIC on `config.listen`, wrapped in fault injection if configured.
/// With `retry` (an in-process restart, whose previous endpoint may still be closing)
/// it tries for a few seconds.
async fn bind_link(
    config: &AgentConfig,
    identity: &NodeIdentity,
    retry: bool,
) -> anyhow::Result<Arc<dyn Link>> {
    use anyhow::Context;
    let mut attempts = 0;
    let link = loop {
        match QuicLink::bind(config.listen, identity, QuicOptions::default()) {
            Ok(link) => break link,
            Err(_) if retry && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot listen on {}", config.listen));
            }
        }
    };
    Ok(match config.fault_injection() {
        Some(faults) => {
            let rules: Vec<String> = config.inject_delay.iter().map(|r| r.to_string()).collect();
            tracing::warn!(inject_delay = %rules.join(", "), "fault injection active: frames to these networks are delayed on purpose (--inject-delay is for testing only)");
            faults.wrap(link)
        }
        None => link,
    })
}

/// Resolves once another incarnation of this node's id, newer than this one, is known
/// and dead: its generation. While it is live this node is hidden behind it; say so.
async fn displaced_by_a_dead_incarnation(agent: &Agent) -> u64 {
    let mut warned: Option<Instant> = None;
    loop {
        tokio::time::sleep(DISPLACEMENT_CHECK).await;
        match agent.mesh().newer_incarnation().await {
            Some((generation, _, false)) => return generation,
            Some((generation, addr, true))
                if warned.is_none_or(|at| at.elapsed() >= DISPLACEMENT_WARNING) =>
            {
                tracing::error!(%addr, generation, "another agent runs as this node: every peer sees it instead of this one; stop it (this node takes its place again once it is declared dead)");
                warned = Some(Instant::now());
            }
            Some(_) | None => {}
        }
    }
}
