//! A lab: machines (namespaces) on one bridge, and the faults one can inflict on them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::Signal;

use crate::plan::{self, DEFAULT_LAB};
use crate::procs::{self, Process};
use crate::state::{self, LabState};
use crate::{ns, sys};

/// One machine of a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `n1`, `n2`…; also the machine's hostname.
    pub name: String,
    pub addr: Ipv4Addr,
    /// The network namespace's name (see `ip netns list`).
    pub netns: String,
    /// The machine's directory: UTS pin, node config, data and log.
    pub dir: PathBuf,
}

impl Machine {
    pub fn hostname(&self) -> &str {
        &self.name
    }
    pub fn netns_path(&self) -> PathBuf {
        ns::netns_path(&self.netns)
    }
    fn uts_pin(&self) -> PathBuf {
        self.dir.join("uts")
    }
    fn netns_inode(&self) -> Option<u64> {
        ns::ns_inode(&self.netns_path())
    }
}

/// A lab of machines. Made by [`Lab::create`], it is torn down when dropped (tests);
/// [`Lab::keep`] leaves it standing (the CLI). [`Lab::open`] attaches to an existing lab
/// without owning it.
pub struct Lab {
    root: PathBuf,
    state: LabState,
    machines: Vec<Machine>,
    teardown_on_drop: bool,
    /// Processes this handle started, reaped on drop so none is left a zombie.
    pub(crate) children: Mutex<Vec<Child>>,
}

/// Refuses to go on without root, in one line.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`nuage lab {what}` needs root (it makes network namespaces, bridges and nftables rules); run it as root, e.g. with sudo"
        );
    }
    Ok(())
}

impl Lab {
    /// Creates lab `name` with machines n1..=n`machines`, each in its own network and UTS
    /// namespaces, on a fresh bridge and subnet.
    pub fn create(name: &str, machines: usize) -> anyhow::Result<Lab> {
        require_root("up")?;
        plan::check_lab_name(name)?;
        plan::check_machine_count(machines)?;
        let root = state::root();
        let _lock = state::lock(&root)?;
        if let Some(old) = state::load(&root, name)? {
            bail!(
                "lab `{name}` already exists ({} machines on 10.213.{}.0/24); remove it with `nuage lab down --name {name}`",
                old.machines,
                old.index
            );
        }
        let mut used: BTreeSet<u8> = state::list(&root)?.iter().map(|s| s.index).collect();
        // A bridge left by something else (or a lost state file) also marks its index used.
        used.extend((0..=u8::MAX).filter(|k| sys::link_exists(&plan::bridge_name(*k))));
        let index = plan::pick_index(&used)?;
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let state = LabState {
            name: name.to_owned(),
            index,
            machines,
            created_at,
            partition: None,
        };
        state::save(&root, &state)?;
        let mut lab = Lab::from_state(root, state);
        if let Err(e) = lab.build() {
            lab.teardown_on_drop = false;
            let cleanup = teardown_locked(&lab.root, name);
            let e = e.context(format!("creating lab `{name}`"));
            return Err(match cleanup {
                Ok(()) => e,
                Err(c) => e.context(format!("and cleaning up failed too: {c:#}")),
            });
        }
        lab.teardown_on_drop = true;
        Ok(lab)
    }

    /// Attaches to the existing lab `name`.
    pub fn open(name: &str) -> anyhow::Result<Lab> {
        plan::check_lab_name(name)?;
        let root = state::root();
        match state::load(&root, name)? {
            Some(state) => Ok(Lab::from_state(root, state)),
            None => Err(no_such_lab(&root, name)),
        }
    }

    /// Every existing lab.
    pub fn list() -> anyhow::Result<Vec<Lab>> {
        let root = state::root();
        Ok(state::list(&root)?
            .into_iter()
            .map(|s| Lab::from_state(root.clone(), s))
            .collect())
    }

    /// Removes lab `name`: its processes, namespaces, interfaces, nftables table, route
    /// and directory. Idempotent; also clears what a crashed run left. Returns whether
    /// there was anything to remove.
    pub fn destroy(name: &str) -> anyhow::Result<bool> {
        require_root("down")?;
        plan::check_lab_name(name)?;
        let root = state::root();
        let _lock = state::lock(&root)?;
        let existed = state::lab_dir(&root, name).exists() || !leftover_netns(name).is_empty();
        teardown_locked(&root, name)?;
        Ok(existed)
    }

    fn from_state(root: PathBuf, state: LabState) -> Lab {
        let dir = state::lab_dir(&root, &state.name);
        let machines = (1..=state.machines)
            .map(|i| {
                let name = plan::machine_name(i);
                Machine {
                    addr: plan::machine_addr(state.index, i),
                    netns: plan::netns_name(&state.name, &name),
                    dir: dir.join(&name),
                    name,
                }
            })
            .collect();
        Lab {
            root,
            state,
            machines,
            teardown_on_drop: false,
            children: Mutex::new(Vec::new()),
        }
    }

    fn build(&self) -> anyhow::Result<()> {
        let (net, prefix) = plan::SUPERNET;
        // Nothing addressed to the lab range may leave the host: the route to each lab's
        // /24 (on its bridge) is more specific than this one.
        sys::run(
            "ip",
            &[
                "route",
                "replace",
                "unreachable",
                &format!("{net}/{prefix}"),
            ],
        )?;
        let bridge = self.bridge();
        sys::run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"),
            "1",
        );
        sys::run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", plan::bridge_addr(self.state.index)),
                "dev",
                &bridge,
            ],
        )?;
        sys::run("ip", &["link", "set", &bridge, "up"])?;
        for (i, m) in self.machines.iter().enumerate() {
            self.build_machine(i + 1, m)
                .with_context(|| format!("machine {}", m.name))?;
        }
        Ok(())
    }

    fn build_machine(&self, i: usize, m: &Machine) -> anyhow::Result<()> {
        std::fs::create_dir_all(&m.dir)
            .with_context(|| format!("cannot create {}", m.dir.display()))?;
        sys::run("ip", &["netns", "add", &m.netns])?;
        // IPv4 only: partitions filter IPv4, so no IPv6 path may bypass them.
        for key in ["all", "default"] {
            ns::write_netns_sysctl(
                &m.netns_path(),
                &format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"),
                "1",
            )?;
        }
        ns::create_uts(&m.uts_pin(), &m.name)?;
        let veth = plan::veth_name(self.state.index, i);
        sys::run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &m.netns,
            ],
        )?;
        sys::run(
            "ip",
            &["link", "set", &veth, "master", &self.bridge(), "up"],
        )?;
        sys::run(
            "ip",
            &[
                "-n",
                &m.netns,
                "addr",
                "add",
                &format!("{}/24", m.addr),
                "dev",
                "eth0",
            ],
        )?;
        sys::run("ip", &["-n", &m.netns, "link", "set", "eth0", "up"])?;
        sys::run("ip", &["-n", &m.netns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Leaves the lab standing when this handle is dropped.
    pub fn keep(mut self) {
        self.teardown_on_drop = false;
    }

    /// Tears the lab down now, reporting errors (dropping does the same but can only log).
    pub fn down(mut self) -> anyhow::Result<()> {
        self.teardown_on_drop = false;
        self.reap_children(true);
        Lab::destroy(&self.state.name).map(|_| ())
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }
    pub fn index(&self) -> u8 {
        self.state.index
    }
    /// `10.213.K.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.213.{}.0/24", self.state.index)
    }
    pub fn bridge(&self) -> String {
        plan::bridge_name(self.state.index)
    }
    /// The host's own address on the lab's subnet.
    pub fn host_addr(&self) -> Ipv4Addr {
        plan::bridge_addr(self.state.index)
    }
    pub fn dir(&self) -> PathBuf {
        state::lab_dir(&self.root, &self.state.name)
    }
    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }
    pub fn partition_sides(&self) -> Option<&[Vec<String>]> {
        self.state.partition.as_deref()
    }

    pub fn machine(&self, name: &str) -> anyhow::Result<&Machine> {
        self.machines
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.machines.iter().map(|m| m.name.as_str()).collect();
                anyhow!(
                    "no machine `{name}` in lab `{}` (it has {})",
                    self.state.name,
                    names.join(", ")
                )
            })
    }

    pub fn addr(&self, machine: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.machine(machine)?.addr)
    }

    pub fn hostname(&self, machine: &str) -> anyhow::Result<&str> {
        Ok(self.machine(machine)?.hostname())
    }

    /// A command that runs `program` inside `machine` (its network and its hostname).
    /// It inherits this process's environment, plus `NUAGE_LAB`, `NUAGE_MACHINE` and
    /// `NUAGE_GROUP_RUNTIME_DIR` (the machine's directory).
    pub fn command(
        &self,
        machine: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        require_root("exec")?;
        let m = self.machine(machine)?;
        let mut cmd = Command::new(program);
        cmd.env("NUAGE_LAB", &self.state.name)
            .env("NUAGE_MACHINE", &m.name)
            // Machines share the host's file system: each keeps the group daemon's Unix
            // sockets (Spread's /tmp/<port>) in its own directory (docs/groups.md).
            .env("NUAGE_GROUP_RUNTIME_DIR", &m.dir);
        ns::enter(&mut cmd, &m.netns_path(), &m.uts_pin()).with_context(|| {
            format!(
                "machine {} of lab `{}` is not set up; recreate the lab",
                m.name, self.state.name
            )
        })?;
        Ok(cmd)
    }

    /// Runs `program args…` inside `machine` to completion and returns its output.
    pub fn exec(&self, machine: &str, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.command(machine, program)?;
        cmd.args(args).stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("cannot run `{program}` in {machine}"))
    }

    /// Starts `program args…` inside `machine` and returns its handle.
    pub fn spawn(&self, machine: &str, program: &str, args: &[&str]) -> anyhow::Result<Child> {
        let mut cmd = self.command(machine, program)?;
        cmd.args(args);
        cmd.spawn()
            .with_context(|| format!("cannot start `{program}` in {machine}"))
    }

    /// The live processes of `machine`.
    pub fn processes(&self, machine: &str) -> anyhow::Result<Vec<Process>> {
        let m = self.machine(machine)?;
        Ok(match m.netns_inode() {
            Some(ino) => procs::pids_in_netns(ino)
                .into_iter()
                .filter_map(procs::describe)
                .collect(),
            None => Vec::new(),
        })
    }

    /// Cuts the lab into `sides` (machine names): no packet crosses between two sides,
    /// in either direction. Machines on no side keep talking to every side. Replaces any
    /// partition in force.
    pub fn partition<S: AsRef<str>>(&mut self, sides: &[Vec<S>]) -> anyhow::Result<()> {
        require_root("partition")?;
        let args: Vec<String> = sides
            .iter()
            .map(|s| s.iter().map(|m| m.as_ref()).collect::<Vec<_>>().join(","))
            .collect();
        let names: Vec<String> = self.machines.iter().map(|m| m.name.clone()).collect();
        let sides = plan::parse_sides(&args, &names)?;
        let addrs: Vec<Vec<Ipv4Addr>> = sides
            .iter()
            .map(|side| {
                side.iter()
                    .map(|n| self.machine(n).map(|m| m.addr))
                    .collect()
            })
            .collect::<anyhow::Result<_>>()?;
        sys::nft_apply(&plan::partition_script(
            &plan::nft_table(&self.state.name),
            &addrs,
        ))?;
        self.state.partition = Some(sides);
        state::save(&self.root, &self.state)
    }

    /// Ends any partition: every machine reaches every other again.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        require_root("heal")?;
        sys::nft_apply(&plan::remove_table_script(&plan::nft_table(
            &self.state.name,
        )))?;
        self.state.partition = None;
        state::save(&self.root, &self.state)
    }

    /// SIGKILLs every process of `machine` and waits until they are gone. Returns how many.
    pub fn kill(&self, machine: &str) -> anyhow::Result<usize> {
        require_root("kill")?;
        let m = self.machine(machine)?;
        let n = match m.netns_inode() {
            Some(ino) => procs::kill_all(ino).with_context(|| format!("killing {machine}"))?,
            None => 0,
        };
        self.reap_children(false);
        Ok(n)
    }

    /// SIGSTOPs every process of `machine` (a machine that hangs). Returns how many.
    pub fn pause(&self, machine: &str) -> anyhow::Result<usize> {
        self.signal(machine, Signal::SIGSTOP, "pause")
    }

    /// SIGCONTs every process of `machine`. Returns how many.
    pub fn resume(&self, machine: &str) -> anyhow::Result<usize> {
        self.signal(machine, Signal::SIGCONT, "resume")
    }

    fn signal(&self, machine: &str, sig: Signal, what: &str) -> anyhow::Result<usize> {
        require_root(what)?;
        let m = self.machine(machine)?;
        Ok(m.netns_inode().map_or(0, |ino| procs::signal_all(ino, sig)))
    }

    /// Reaps children that have exited; with `all`, kills and reaps the rest too.
    pub(crate) fn reap_children(&self, all: bool) {
        let mut children = self.children.lock().expect("children lock poisoned");
        children.retain_mut(|c| {
            if all {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            !matches!(c.try_wait(), Ok(Some(_)))
        });
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("name", &self.state.name)
            .field("subnet", &self.subnet())
            .field("machines", &self.state.machines)
            .finish()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.teardown_on_drop {
            self.reap_children(true);
            if let Err(e) = Lab::destroy(&self.state.name) {
                eprintln!(
                    "nuage-lab: tearing down lab `{}` failed: {e:#}",
                    self.state.name
                );
            }
        } else {
            self.reap_children(false);
        }
    }
}

fn no_such_lab(root: &Path, name: &str) -> anyhow::Error {
    let others: Vec<String> = state::list(root)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.name)
        .collect();
    if name == DEFAULT_LAB && others.len() == 1 {
        return anyhow!(
            "no lab named `{name}`; the only lab is `{}`: pass --name {}",
            others[0],
            others[0]
        );
    }
    let hint = if others.is_empty() {
        "there are no labs; create one with `nuage lab up N`".to_owned()
    } else {
        format!("labs: {}; pass --name", others.join(", "))
    };
    anyhow!("no lab named `{name}` ({hint})")
}

/// Network namespaces of lab `name` that exist on the host.
fn leftover_netns(name: &str) -> Vec<String> {
    let prefix = plan::netns_name(name, "");
    std::fs::read_dir(ns::NETNS_DIR)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix(&prefix).is_some_and(|m| {
                        m.starts_with('n') && m[1..].chars().all(|c| c.is_ascii_digit())
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes everything of lab `name`; the caller holds the root lock. Each step tolerates
/// its object being gone already, so a half-built or half-removed lab is cleaned too.
fn teardown_locked(root: &Path, name: &str) -> anyhow::Result<()> {
    let dir = state::lab_dir(root, name);
    let state = state::load(root, name).ok().flatten();
    let mut netns: BTreeSet<String> = leftover_netns(name).into_iter().collect();
    if let Some(s) = &state {
        netns.extend((1..=s.machines).map(|i| plan::netns_name(name, &plan::machine_name(i))));
    }
    for ns_name in &netns {
        if let Some(ino) = ns::ns_inode(&ns::netns_path(ns_name)) {
            procs::kill_all(ino).with_context(|| format!("killing the processes of {ns_name}"))?;
        }
    }
    sys::nft_apply(&plan::remove_table_script(&plan::nft_table(name)))?;
    for ns_name in &netns {
        sys::run_tolerant(
            "ip",
            &["netns", "del", ns_name],
            &["No such file", "Invalid argument"],
        )?;
    }
    if let Some(s) = &state {
        // Deleting a namespace deletes the veth inside it and so its host end; these
        // catch what a crash between the two steps of a veth's creation left.
        for i in 1..=s.machines {
            let veth = plan::veth_name(s.index, i);
            if sys::link_exists(&veth) {
                sys::run_tolerant("ip", &["link", "del", &veth], &["Cannot find device"])?;
            }
        }
        let bridge = plan::bridge_name(s.index);
        if sys::link_exists(&bridge) {
            sys::run_tolerant("ip", &["link", "del", &bridge], &["Cannot find device"])?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
            ns::remove_pin(&entry.path().join("uts"))?;
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    if state::list(root)?.is_empty() {
        let (net, prefix) = plan::SUPERNET;
        sys::run_tolerant(
            "ip",
            &["route", "del", "unreachable", &format!("{net}/{prefix}")],
            &["No such process", "Cannot find"],
        )?;
    }
    Ok(())
}
