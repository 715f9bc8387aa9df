//! Starting a mesh node: the start-up identity probe, the chitchat server over the
//! link, the key-change callback that marks namespaces dirty, and the demux and
//! refresh tasks.

use super::*;

impl MeshNode {
    /// Starts a node on `link`, restoring `snapshot` if the node ran before.
    pub async fn start(
        mut config: MeshConfig,
        link: Arc<dyn Link>,
        wall: Arc<dyn WallClock>,
        snapshot: Option<MeshSnapshot>,
        owned: Vec<(String, String)>,
    ) -> Result<MeshNode, MeshError> {
        let probe = probe::check_identity(&config, &link).await?;
        if snapshot.is_none() {
            // Nothing persisted (a new node, or a lost disk): peers may remember an
            // earlier incarnation with a higher generation than this clock gives.
            config.generation = probe::generation_above(&config, probe.highest);
        }
        let chitchat_id =
            ChitchatId::new(config.node_id.clone(), config.generation, link.local_addr());
        let mut hlc = HlcClock::new(config.node_id.clone(), wall.clone());
        let snapshot = snapshot.unwrap_or_default();
        if let Some(last) = &snapshot.hlc_last {
            hlc.observe(last);
        }
        if let Some(max) = snapshot.replica.max_stamp() {
            hlc.observe(&max);
        }
        let mut initial = owned;
        let mut own = BTreeMap::new();
        // The replica only grows (a join of everything ever merged), so a write seen
        // once is never forgotten, even after every namespace carrying it is gone.
        let mut replica = snapshot.replica;
        for record in &snapshot.own {
            replica.join_record(record);
        }
        for record in snapshot.own {
            initial.push((session_key(&record.id), codec::encode(&record)?));
            own.insert(record.id.clone(), record);
        }
        let (transport, gossip_tx) = GossipTransport::new(link.clone());
        let chitchat_config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: link.local_addr(),
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                initial_interval: config.gossip_interval,
                dead_node_grace_period: config.dead_node_grace,
            },
            marked_for_deletion_grace_period: config.dead_node_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|e| MeshError::Start(e.to_string()))?;
        let chitchat = handle.chitchat();
        let (changes, _) = watch::channel(0);
        let (app_tx, app_rx) = mpsc::channel(APP_QUEUE);
        let shared = Arc::new(Shared {
            config,
            chitchat_id,
            link,
            chitchat: chitchat.clone(),
            local: Mutex::new(Local {
                hlc,
                own,
                replica,
                acks: BTreeMap::new(),
                pushed_at: BTreeMap::new(),
                decoded: HashMap::new(),
                positions: HashMap::new(),
                heard: HashMap::new(),
                uncarried_since: HashMap::new(),
                superseded_since: HashMap::new(),
                published_seen: Arc::default(),
                members: HashMap::new(),
                topology: None,
                topology_epoch: 0,
                seen_published_at: None,
                undecodable: 0,
                latest_writes: BTreeMap::new(),
            }),
            wake: Notify::new(),
            dirty: Mutex::new(Dirty {
                all: true,
                ..Dirty::default()
            }),
            changes,
            view_changes: watch::channel(0).0,
            guard: IdentityGuard::default(),
            wall,
            sends: TaskTracker::new(),
            send_slots: Arc::new(Semaphore::new(MAX_DETACHED_SENDS)),
            app_tx,
            push_stats: PushStats::default(),
        });
        let listener = {
            let waker = Arc::downgrade(&shared);
            chitchat.lock().await.subscribe_event("", move |event| {
                let Some(shared) = waker.upgrade() else {
                    return;
                };
                // A primary's session keys are topology for the secondaries that
                // install them: they must act on them now, not at their next tick.
                let forget = event.key.starts_with(FORGET_PREFIX)
                    || event.key.starts_with(crate::keys::KEYS_PREFIX);
                if event.key.starts_with(SESSION_PREFIX) || event.key == NODE_KEY || forget {
                    let mut dirty = shared.dirty();
                    if !dirty.nodes.contains(event.node) {
                        dirty.nodes.insert(event.node.clone());
                    }
                    dirty.node_info |= event.key == NODE_KEY || forget;
                    drop(dirty);
                    shared.wake.notify_one();
                } else {
                    // A frontier (`seen`) or an agent's status moved: waiters on
                    // `--wait` progress care, the replica does not.
                    shared.bump();
                }
            })
        };
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(demux_loop(shared.clone(), gossip_tx, shutdown.clone())),
            tokio::spawn(refresh_loop(shared.clone(), shutdown.clone())),
        ];
        refresh(&shared, false).await;
        Ok(MeshNode {
            app_rx: Mutex::new(Some(app_rx)),
            shared,
            handle: Some(handle),
            tasks,
            shutdown,
            _listener: listener,
        })
    }
}
