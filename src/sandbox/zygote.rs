//! [`Sandbox`]: one jailed zygote with its dataset loaded, and the state its
//! workers share with it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tracing::instrument::WithSubscriber;
use tracing::Instrument;

use super::control::{fork_worker, wait_ready, ForkReply};
use super::dataset::open_dataset;
use super::protocol::{ChannelPolicy, FramedSocket, ToZygote, WorkerLimits, ZygoteReady};
use super::spec::{self, check_image_location, HostView, JailInputs, WorkerSetup};
use super::unconfined::{unconfined_csv_path, unconfined_spec, unconfined_workdir, UnconfinedDir};
use super::{
    cgroup, layers, measure, reaper, seccomp, spawn, stats, uids, ExitInfo, Fault, IdLease,
    IsolationReport, Layer, Limits, SandboxError, SandboxOptions, Task, Worker, WorkerIsolation,
};

pub(super) struct Shared {
    pub(super) id: String,
    pub(super) limits: Limits,
    pub(super) worker_limits: WorkerLimits,
    pub(super) control_tx: FramedSocket,
    pub(super) pending: Mutex<HashMap<u64, oneshot::Sender<ForkReply>>>,
    pub(super) exits: Mutex<HashMap<u64, ExitInfo>>,
    pub(super) exit_notify: Notify,
    pub(super) zygote_gone: Mutex<Option<String>>,
    pub(super) next_worker: AtomicU64,
    pub(super) spares: tokio::sync::Mutex<Vec<Worker>>,
    pub(super) spare_target: usize,
    pub(super) refilling: AtomicBool,
    pub(super) stats: stats::Counters,
    pub(super) faults: Mutex<Vec<Fault>>,
    pub(super) closed: AtomicBool,
    pub(super) zygote_group: Option<Arc<cgroup::Group>>,
    /// Test hook: the worker whose cgroup sweep is held up, and how long.
    pub(super) slow_cgroup_kill: Option<(u64, Duration)>,
    pub(super) jail: Mutex<Option<spawn::JailProcess>>,
    /// The private directory of a jail without namespaces.
    pub(super) workdir: Option<UnconfinedDir>,
    /// Accept workers whose own Landlock domain or seccomp filter failed
    /// (with a warning).
    pub(super) allow_degraded: bool,
    /// The ids the zygote hands its workers (per-worker uid mode).
    pub(super) worker_ids: Option<uids::WorkerIds>,
    /// The jail's host ids; declared last so the lease outlives the jail.
    pub(super) _ids: IdLease,
}

/// One jailed zygote with its dataset loaded. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Sandbox {
    pub(super) shared: Arc<Shared>,
    pub(super) ready: Arc<ZygoteReady>,
    pub(super) report: Arc<IsolationReport>,
    pub(super) csv_in_jail: Arc<String>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.shared.id)
            .finish()
    }
}

pub(super) static SANDBOX_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Sandbox {
    /// Build the jail, start the zygote, load the CSV. Fails (listing the
    /// missing layers) when a layer is unavailable and degraded mode is off.
    pub async fn start(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let csv = std::fs::canonicalize(&opts.csv).map_err(|e| SandboxError::Dataset {
            path: opts.csv.clone(),
            reason: format!("cannot open it: {e}"),
        })?;
        // The jail's ids: a uid block of its own, or the single uid.
        let lease = uids::lease(opts.worker_uids);
        // Opened once, here; everything below uses this descriptor, never the
        // path again (a path swapped between the checks and the jail start
        // changes nothing).
        let dataset_fd = open_dataset(&csv, lease.ids)?;
        if let Some(hook) = &opts.test_hooks.after_dataset_open {
            hook(&csv);
        }

        // The image is bound at its own host path; under a path the jail
        // mounts itself it would be hidden or would leak into (say) /tmp.
        check_image_location(&opts.image.root)?;
        let id = format!(
            "{}-{}",
            std::process::id(),
            SANDBOX_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let limits = opts.limits.clone();

        let mut report = IsolationReport::default();
        reaper::spawn("removing stale cgroups", cgroup::remove_stale_groups)
            .wait()
            .await;
        let zygote_group = zygote_cgroup(&id, &limits, &mut report);
        if !opts.allow_degraded && zygote_group.is_none() {
            // Refused before any jail exists: name what is known to be
            // missing, not every layer that was never measured.
            let mut missing: Vec<Layer> = report.degraded().into_iter().cloned().collect();
            if let Some(reason) = user_namespaces_disabled() {
                missing.insert(0, Layer::unavailable("user_namespace", reason));
            }
            return Err(SandboxError::Degraded(missing));
        }

        let setup = WorkerSetup {
            ids: lease.workers,
            filter_hex: seccomp::worker_filter_hex().map_err(|e| SandboxError::Io {
                what: "compiling the worker seccomp filter".to_string(),
                source: std::io::Error::other(e.to_string()),
            })?,
            // The same kernel runs the jail: the rights for its ABI.
            landlock: super::landlock::worker_rights_here().map_err(|e| e.to_string()),
            extra_worker_paths: opts.test_hooks.extra_worker_paths.clone(),
        };
        let built = spec::build(&JailInputs {
            csv: &csv,
            image: &opts.image,
            limits: &limits,
            allow_degraded: opts.allow_degraded,
            setup: &setup,
            host: HostView::read(),
        });
        let csv_in_jail = built.csv_in_jail;
        let lib_paths_for_fallback = built.lib_paths;
        let mut spec = built.spec;
        // Without --allow-degraded a host without user namespaces is refused;
        // with it, the init may fall back to running on the host filesystem
        // under Landlock, in a private work directory.
        let workdir = if opts.allow_degraded {
            let dir = unconfined_workdir()?;
            match unconfined_spec(
                &spec,
                &dir.work(),
                &limits,
                lib_paths_for_fallback.clone(),
                &setup,
            ) {
                Ok(u) => spec.unconfined = Some(u),
                Err(e) => {
                    dir.remove();
                    return Err(e);
                }
            }
            Some(dir)
        } else {
            None
        };

        let jail = match spawn::launch(
            &opts.init_program,
            &spec,
            Some(dataset_fd.as_fd()),
            zygote_group.as_deref(),
            lease.ids,
            opts.startup_timeout,
        )
        .await
        {
            Ok(j) => j,
            Err(e) => {
                if zygote_group.is_some() {
                    remove_groups(zygote_group.clone(), &id).wait().await;
                }
                if let Some(dir) = &workdir {
                    dir.remove();
                }
                return Err(e.into());
            }
        };
        for layer in &jail.applied {
            report.set(layer.clone());
        }
        // The init has its own copy of the dataset's descriptor now.
        drop(dataset_fd);
        let csv_in_jail = match &jail.unconfined {
            Some(_) => unconfined_csv_path(),
            None => {
                // Not needed: the jail has its own root.
                if let Some(dir) = &workdir {
                    dir.remove();
                }
                csv_in_jail
            }
        };
        let jail_unconfined = jail.unconfined.is_some();
        let workdir = if jail.unconfined.is_some() {
            workdir
        } else {
            None
        };
        finish_report(&mut report, jail.unconfined.as_deref(), &lease);
        let (control_rx, control_tx) = control_sockets(&jail.control)?;

        let shared = Arc::new(Shared {
            id: id.clone(),
            worker_limits: WorkerLimits {
                cpu_seconds: Some(limits.cpu_seconds),
                address_space_extra: if zygote_group.is_some() {
                    None
                } else {
                    Some(limits.memory_bytes)
                },
                nofile: Some(limits.nofile),
            },
            limits,
            control_tx,
            pending: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            exit_notify: Notify::new(),
            zygote_gone: Mutex::new(None),
            next_worker: AtomicU64::new(1),
            spares: tokio::sync::Mutex::new(Vec::new()),
            spare_target: opts.spare_workers,
            refilling: AtomicBool::new(false),
            stats: stats::Counters::new(),
            faults: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            zygote_group,
            slow_cgroup_kill: opts.test_hooks.slow_cgroup_kill,
            jail: Mutex::new(Some(jail)),
            workdir,
            allow_degraded: opts.allow_degraded,
            worker_ids: if jail_unconfined { None } else { lease.workers },
            _ids: lease,
        });

        let ready = match wait_ready(control_rx, &shared, opts.startup_timeout).await {
            Ok(r) => r,
            Err(e) => {
                shutdown_shared(&shared).await;
                return Err(e);
            }
        };
        let sandbox = Sandbox {
            shared,
            ready: Arc::new(ready),
            report: Arc::new(report),
            csv_in_jail: Arc::new(csv_in_jail),
        };
        sandbox.refill_spares();
        Ok(sandbox)
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }
    /// Layers as set up (the doctor measures them from inside, see [`measure`]).
    pub fn report(&self) -> &IsolationReport {
        &self.report
    }
    pub fn zygote(&self) -> &ZygoteReady {
        &self.ready
    }
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }
    /// A file readable by its mode bits that no Landlock rule covers: reading
    /// it from a worker fails only while Landlock is enforced.
    pub fn landlock_canary(&self) -> String {
        match &self.shared.workdir {
            Some(dir) => dir.canary().display().to_string(),
            None => measure::LANDLOCK_CANARY.to_string(),
        }
    }

    pub fn csv_path_in_jail(&self) -> &str {
        &self.csv_in_jail
    }
    /// Host pid of the zygote (pid 1 of the jail).
    pub fn zygote_host_pid(&self) -> Option<u32> {
        zygote_pid(&self.shared)
    }
    /// Bytes charged to the zygote's cgroup: the imports, the loaded CSV and
    /// the page cache it read (None without cgroups).
    pub fn zygote_cgroup_memory(&self) -> Option<u64> {
        self.shared
            .zygote_group
            .as_ref()
            .and_then(|g| g.memory_usage())
    }
    /// Whether the zygote still serves forks (its control socket is open).
    pub fn is_alive(&self) -> bool {
        !self.shared.closed.load(Ordering::Relaxed)
            && self
                .shared
                .zygote_gone
                .lock()
                .map(|g| g.is_none())
                .unwrap_or(false)
    }
    /// Why the zygote is gone, once it is.
    pub fn gone_reason(&self) -> Option<String> {
        self.shared.gone_reason()
    }
    /// Host pid of the jail's monitor (`csv-agent __jail-init`).
    pub fn monitor_host_pid(&self) -> Option<u32> {
        Some(self.shared.jail.lock().ok()?.as_ref()?.init_pid)
    }
    /// Faults seen so far (timeouts, OOM kills, crashes).
    /// How this sandbox's workers were obtained so far.
    pub fn worker_stats(&self) -> stats::WorkerStats {
        self.shared.stats.snapshot()
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.shared
            .faults
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// A worker for a new task: a pre-forked spare if there is one, else a fresh fork.
    pub async fn acquire(&self) -> Result<Worker, SandboxError> {
        let spare = self.shared.spares.lock().await.pop();
        let worker = match spare {
            Some(w) if w.is_alive() => {
                self.shared.stats.acquired(true);
                w
            }
            _ => {
                self.shared.stats.acquired(false);
                fork_worker(&self.shared).await?
            }
        };
        self.refill_spares();
        Ok(worker)
    }

    /// A task: cells run in one worker; a lost worker is replaced for the next cell.
    pub fn task(&self) -> Task {
        Task {
            sandbox: self.clone(),
            worker: None,
            cells: 0,
            restarts: 0,
        }
    }

    pub(super) fn refill_spares(&self) {
        if self.shared.spare_target == 0 || self.shared.closed.load(Ordering::Relaxed) {
            return;
        }
        if self.shared.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        let refill = async move {
            loop {
                if shared.closed.load(Ordering::Relaxed) {
                    break;
                }
                let have = shared.spares.lock().await.len();
                if have >= shared.spare_target {
                    break;
                }
                match fork_worker(&shared).await {
                    Ok(w) => shared.spares.lock().await.push(w),
                    Err(e) => {
                        tracing::debug!(
                            sandbox = %shared.id,
                            "pre-forking a spare worker failed: {e}"
                        );
                        break;
                    }
                }
            }
            shared.refilling.store(false, Ordering::Release);
        };
        tokio::spawn(refill.in_current_span().with_current_subscriber());
    }

    /// Stop every worker and the zygote, remove the cgroups.
    pub async fn shutdown(self) {
        shutdown_shared(&self.shared).await;
    }
}

/// The zygote's cgroup, and the `cgroup_limits` layer it makes (active, or
/// unavailable with the fallback the workers get instead).
fn zygote_cgroup(
    id: &str,
    limits: &Limits,
    report: &mut IsolationReport,
) -> Option<Arc<cgroup::Group>> {
    match cgroup::Group::create(
        &cgroup::sandbox_group_path(id, "zygote"),
        cgroup::GroupLimits {
            memory_bytes: limits.zygote_memory_bytes,
            pids: limits.pids.max(64),
        },
    ) {
        Ok(g) => {
            report.set(Layer::active(
                "cgroup_limits",
                format!(
                    "{}; per worker: memory {} MiB, pids {}",
                    g.describe(),
                    limits.memory_bytes >> 20,
                    limits.pids
                ),
            ));
            Some(Arc::new(g))
        }
        Err(e) => {
            report.set(Layer::unavailable(
                "cgroup_limits",
                format!(
                    "{e}; fallback: RLIMIT_AS of {} MiB above the zygote per worker, RLIMIT_NPROC {} per jail",
                    limits.memory_bytes >> 20,
                    limits.nproc
                ),
            ));
            None
        }
    }
}

/// The namespace layers and the workers' isolation, once the init is up:
/// `unconfined` is why it runs without namespaces, if it does.
fn finish_report(report: &mut IsolationReport, unconfined: Option<&str>, lease: &IdLease) {
    if let Some(reason) = unconfined {
        for ns in layers::NAMESPACE_LAYERS {
            report.set(Layer::unavailable(ns, reason.to_string()));
        }
    }
    // The init got this far only because unshare() of all of these
    // succeeded; `measure` confirms them from inside and outside.
    for ns in layers::NAMESPACE_LAYERS {
        if report.get(ns).is_none() {
            report.set(Layer::active(ns, "created by the jail init"));
        }
    }
    report.worker_isolation = Some(match (&lease.workers, unconfined) {
        (Some(_), None) => WorkerIsolation::per_worker_uid(lease.describe()),
        (_, Some(reason)) => WorkerIsolation::single_uid(format!(
            "single uid: no user namespace ({reason}); seccomp argument filters and Landlock scoping separate the workers"
        )),
        (None, None) => WorkerIsolation::single_uid(lease.describe()),
    });
    report.normalize();
}

/// Two descriptors of the control socket: one for the reader task, one for
/// senders (tokio cannot register the same descriptor twice). `try_clone`
/// duplicates with FD_CLOEXEC (F_DUPFD_CLOEXEC); a plain dup(2) would not,
/// and every jail started later by this process would inherit this one's
/// control socket.
fn control_sockets(control: &OwnedFd) -> Result<(FramedSocket, FramedSocket), SandboxError> {
    let dup = |what: &str| {
        control.try_clone().map_err(|source| SandboxError::Io {
            what: what.to_string(),
            source,
        })
    };
    let rx = FramedSocket::new(
        dup("duplicating the control socket")?,
        "control",
        ChannelPolicy::control(),
    )?;
    let tx = FramedSocket::new(
        dup("cloning the control socket")?,
        "control",
        ChannelPolicy::control(),
    )?;
    Ok((rx, tx))
}

/// Why user namespaces cannot be created here, when the host says so plainly
/// (the jail init finds out for certain; this is for early messages).
pub(super) fn user_namespaces_disabled() -> Option<String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|t| t.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user.max_user_namespaces is 0 on this host".to_string());
    }
    if !nix::unistd::geteuid().is_root()
        && read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        return Some("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)".to_string());
    }
    None
}

/// The zygote's host pid: the jail init's only child.
fn zygote_pid(shared: &Shared) -> Option<u32> {
    let init = shared.jail.lock().ok()?.as_ref()?.init_pid;
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

pub(super) async fn shutdown_shared(shared: &Arc<Shared>) {
    if shared.closed.swap(true, Ordering::AcqRel) {
        return;
    }
    let spares: Vec<Worker> = shared.spares.lock().await.drain(..).collect();
    drop(spares);
    if let Some(pid) = zygote_pid(shared) {
        shared.stats.zygote_ended(pid);
    }
    let _ = shared.control_tx.send(&ToZygote::Shutdown).await;
    let jail = shared.jail.lock().ok().and_then(|mut j| j.take());
    if let Some(mut jail) = jail {
        if tokio::time::timeout(Duration::from_secs(5), jail.child.wait())
            .await
            .is_err()
        {
            // Closing the sync socket makes the monitor kill the jail; kill the
            // monitor too in case it is stuck.
            let _ = jail.child.start_kill();
            let _ = jail.child.wait().await;
        }
    }
    remove_groups(shared.zygote_group.clone(), &shared.id)
        .wait()
        .await;
    if let Some(dir) = &shared.workdir {
        dir.remove();
    }
}

/// Remove the zygote's group and the sandbox's parent group, on a thread of
/// their own (see [`reaper`]): `remove` may sleep on cgroup v1.
fn remove_groups(group: Option<Arc<cgroup::Group>>, id: &str) -> reaper::Done {
    let parent = cgroup::sandbox_parent_path(id);
    reaper::spawn("removing a sandbox's cgroups", move || {
        if let Some(g) = group {
            g.remove();
        }
        cgroup::remove_parent(&parent);
    })
}

impl Shared {
    /// Why the zygote is gone, once it is.
    pub(super) fn gone_reason(&self) -> Option<String> {
        self.zygote_gone.lock().ok().and_then(|g| g.clone())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Last handle gone without shutdown(): dropping the JailProcess
        // closes the sync socket and kills the init (kill_on_drop); the
        // monitor's death takes the jail with it (PDEATHSIG).
        if let Ok(mut j) = self.jail.lock() {
            j.take();
        }
        // Possibly on a runtime thread: the removal runs on its own.
        let _ = remove_groups(self.zygote_group.take(), &self.id);
        if let Some(dir) = &self.workdir {
            dir.remove();
        }
    }
}
