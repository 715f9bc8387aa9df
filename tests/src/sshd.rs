//! A real `sshd` on a loopback port for tests and benchmarks (push-pem logins, rsync
//! over ssh), killed on drop.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A free TCP port on loopback.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// Writes a new host key and an sshd configuration into `dir` (sshd listening on
/// `listen`:`port`, accepting root's keys from `authorized_keys`, its pid file in
/// `dir`); returns the configuration's path.
pub fn write_config(dir: &Path, listen: &str, port: u16, authorized_keys: &Path) -> PathBuf {
    let host_key = dir.join("host_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress {listen}\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             AllowTcpForwarding yes\nPermitTTY yes\nLogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            host_key.display(),
            authorized_keys.display(),
            dir.join("sshd.pid").display()
        ),
    )
    .expect("write sshd_config");
    config
}

/// A real `sshd` on a loopback port, killed on drop.
pub struct Sshd {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    made_privsep_dir: bool,
}

impl Sshd {
    /// Starts sshd with its files (host key, config, log `sshd.log`) in `dir`,
    /// accepting the keys in `authorized_keys` for root.
    pub fn start(dir: &Path, authorized_keys: &Path) -> Sshd {
        // sshd refuses to start without its privilege separation directory.
        let privsep = Path::new("/run/sshd");
        let made_privsep_dir = !privsep.exists();
        if made_privsep_dir {
            std::fs::create_dir_all(privsep).unwrap();
            std::fs::set_permissions(privsep, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let port = free_tcp_port();
        let config = write_config(dir, "127.0.0.1", port, authorized_keys);
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "sshd (openssh-server) is installed: .ci/run installs it"
        );
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd {
            child,
            port,
            made_privsep_dir,
        }
    }

    /// The sshd daemon's process id (its connections' CPU time ends up in its
    /// children's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `ssh` options for a non-interactive login with `key` to this sshd.
    pub fn ssh_options(&self, key: &Path) -> Vec<String> {
        [
            "-i",
            &key.display().to_string(),
            "-p",
            &self.port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `ssh -i KEY [EXTRA...] root@127.0.0.1 [COMMAND...]`, non-interactive, bounded.
    pub fn ssh(&self, key: &Path, extra: &[&str], command: &[&str]) -> Output {
        Command::new("timeout")
            .arg("20")
            .arg("ssh")
            .args(self.ssh_options(key))
            .args(extra)
            .arg("root@127.0.0.1")
            .args(command)
            .stdin(Stdio::null())
            .output()
            .expect("ssh (openssh-client) is installed")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.made_privsep_dir {
            let _ = std::fs::remove_dir("/run/sshd");
        }
    }
}
