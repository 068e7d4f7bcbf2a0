//! The broker's key material at rest: the SSH user CA, the SSH host CA and
//! the bastion's host key, each sealed (ChaCha20-Poly1305) under a master key
//! and kept in `<data-dir>/keys/` with mode 0600. Nothing here is ever logged
//! or returned by an API; only public halves leave this module.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use gatehouse_ca::SshCa;
use gatehouse_ca::ssh_key::PrivateKey;
use rand::RngExt;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::error::{BrokerError, Result};

const SEALED_HEADER: &str = "gatehouse-sealed-v1";

/// The 32-byte key every stored private key is sealed under.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Where the master key comes from. `Debug` never shows a given value.
#[derive(Clone)]
pub enum MasterKeySource {
    /// A file holding 64 hex digits.
    File(PathBuf),
    /// The value itself (from `GATEHOUSE_MASTER_KEY`).
    Value(Zeroizing<String>),
    /// `<data-dir>/master.key`, generated on first start.
    DataDir,
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
            Self::DataDir => f.write_str("DataDir"),
        }
    }
}

impl MasterKey {
    fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| BrokerError::Invalid("master key must be 64 hex digits (32 bytes)".into()))?;
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&bytes);
        Ok(Self(k))
    }

    /// Resolve the master key. Generates `<data-dir>/master.key` only when no
    /// key was given *and* nothing sealed exists yet; a missing key for
    /// existing sealed keys is an error, never a silent new CA.
    pub fn load(source: &MasterKeySource, data_dir: &Path) -> Result<(Self, bool)> {
        match source {
            MasterKeySource::File(p) => {
                let text = Zeroizing::new(
                    fs::read_to_string(p)
                        .map_err(|e| BrokerError::Io(format!("cannot read master key file {}: {e}", p.display())))?,
                );
                Ok((Self::parse(&text)?, false))
            }
            MasterKeySource::Value(v) => Ok((Self::parse(v)?, false)),
            MasterKeySource::DataDir => {
                let path = data_dir.join("master.key");
                if path.exists() {
                    let text = Zeroizing::new(fs::read_to_string(&path)?);
                    return Ok((Self::parse(&text)?, false));
                }
                if keys_dir(data_dir).join(USER_CA_FILE).exists() {
                    return Err(BrokerError::Invalid(format!(
                        "the data dir holds sealed keys but no master key was given \
                         (--master-key-file, GATEHOUSE_MASTER_KEY, or {})",
                        path.display()
                    )));
                }
                let mut k = Zeroizing::new([0u8; 32]);
                rand::rng().fill(&mut k[..]);
                let hex = Zeroizing::new(hex::encode(&k[..]));
                write_private(&path, hex.as_bytes())?;
                Ok((Self(k), true))
            }
        }
    }

    /// An independent key for another purpose (e.g. sealing webhook
    /// secrets in the database), derived as SHA-256(label ‖ 0 ‖ master key).
    pub fn derive(&self, label: &str) -> MasterKey {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update([0u8]);
        h.update(&self.0[..]);
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&h.finalize());
        Self(k)
    }

    fn aead(&self) -> Result<LessSafeKey> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &self.0[..])
            .map_err(|_| BrokerError::Internal("bad master key length".into()))?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Seal `plain`, binding it to `label` (so sealed files cannot be swapped).
    pub fn seal(&self, label: &str, plain: &[u8]) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce[..]);
        let mut buf = Zeroizing::new(plain.to_vec());
        self.aead()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(label.as_bytes()), &mut *buf)
            .map_err(|_| BrokerError::Internal("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{SEALED_HEADER}\n{}\n", B64.encode(out)))
    }

    /// Open what [`MasterKey::seal`] produced.
    pub fn open(&self, label: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>> {
        let wrong =
            || BrokerError::Invalid(format!("cannot unseal {label}: wrong master key, or the file was altered"));
        let body = sealed
            .strip_prefix(SEALED_HEADER)
            .map(str::trim)
            .ok_or_else(|| BrokerError::Invalid(format!("{label} is not a sealed key file")))?;
        let raw = B64.decode(body).map_err(|_| wrong())?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(wrong());
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let plain_len =
            self.aead()?.open_in_place(nonce, Aad::from(label.as_bytes()), &mut buf).map_err(|_| wrong())?.len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

const USER_CA_FILE: &str = "ssh_user_ca.sealed";
/// The user CA replaced by the last `ca rotate`, sealed together with the
/// end of its grace period (so the period cannot be extended by editing a
/// file without the master key).
const PREVIOUS_USER_CA_FILE: &str = "ssh_user_ca.previous.sealed";
const PREVIOUS_USER_CA_LABEL: &str = "previous ssh user CA";
const HOST_CA_FILE: &str = "ssh_host_ca.sealed";
const BASTION_KEY_FILE: &str = "bastion_host_ed25519.sealed";
/// Public half of the bastion host key, for operators and test harnesses.
pub const BASTION_PUB_FILE: &str = "bastion_host_ed25519.pub";

pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// The user CAs: the one that signs, and the one a rotation replaced while
/// its grace period lasts (targets may still trust only that one).
#[derive(Clone)]
pub struct UserCas {
    pub current: SshCa,
    /// The replaced CA and the end of its grace period (Unix ms).
    pub previous: Option<(SshCa, i64)>,
}

impl UserCas {
    /// The CAs a session certificate may be signed by at `now_ms`, the one
    /// that signs first.
    pub fn trusted(&self, now_ms: i64) -> Vec<&SshCa> {
        let mut v = vec![&self.current];
        if let Some((ca, until)) = &self.previous
            && now_ms < *until
        {
            v.push(ca);
        }
        v
    }
}

/// What `ca rotate` did.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub new_fingerprint: String,
    pub previous_fingerprint: String,
    /// End of the previous CA's grace period (Unix ms).
    pub previous_until: i64,
}

/// The broker's private keys, in memory only.
pub struct KeyStore {
    user_cas: std::sync::RwLock<UserCas>,
    pub host_ca: SshCa,
    pub bastion_key: PrivateKey,
    /// True when this start created the keys.
    pub created: bool,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cas = self.user_cas();
        f.debug_struct("KeyStore")
            .field("user_ca", &cas.current)
            .field("previous_user_ca", &cas.previous.as_ref().map(|(ca, until)| (ca, until)))
            .field("host_ca", &self.host_ca)
            .field("bastion_key", &"<redacted>")
            .finish()
    }
}

impl KeyStore {
    /// Load the sealed keys, creating any that do not exist yet.
    pub fn load_or_create(data_dir: &Path, master: &MasterKey) -> Result<Self> {
        let dir = keys_dir(data_dir);
        create_private_dir(&dir)?;
        let mut created = false;
        let user_ca = load_or_create_ca(&dir.join(USER_CA_FILE), "ssh user CA", master, &mut created)?;
        let previous = load_previous_user_ca(&dir, master)?;
        let host_ca = load_or_create_ca(&dir.join(HOST_CA_FILE), "ssh host CA", master, &mut created)?;
        let bastion = load_or_create_ca(&dir.join(BASTION_KEY_FILE), "bastion host key", master, &mut created)?;
        let bastion_key = bastion.private_key().clone();
        let pub_line = gatehouse_ca::public_key_line(bastion_key.public_key(), "gatehouse-bastion");
        fs::write(dir.join(BASTION_PUB_FILE), format!("{pub_line}\n"))?;
        Ok(Self {
            user_cas: std::sync::RwLock::new(UserCas { current: user_ca, previous }),
            host_ca,
            bastion_key,
            created,
        })
    }

    /// A snapshot of the user CAs.
    pub fn user_cas(&self) -> UserCas {
        match self.user_cas.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The user CA that signs now.
    pub fn user_ca(&self) -> SshCa {
        self.user_cas().current
    }

    /// Make a new user CA that signs from now on; the current one stays
    /// trusted (offered to targets after the new one) until `now + grace`.
    /// A CA still in an earlier grace period is dropped. The new key is
    /// written before the old one is replaced, so a crash in between leaves
    /// the old CA signing.
    pub fn rotate_user_ca(
        &self,
        data_dir: &Path,
        master: &MasterKey,
        grace: std::time::Duration,
        now_ms: i64,
    ) -> Result<Rotation> {
        let dir = keys_dir(data_dir);
        let mut cas = self.user_cas.write().map_err(|_| BrokerError::Internal("user CA lock poisoned".into()))?;
        let until = now_ms.saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        let new = SshCa::generate();
        let new_pem = new.to_openssh()?;
        let old_pem = cas.current.to_openssh()?;
        let mut prev_plain = Zeroizing::new(format!("until={until}\n").into_bytes());
        prev_plain.extend_from_slice(old_pem.as_bytes());
        replace_private(
            &dir.join(PREVIOUS_USER_CA_FILE),
            master.seal(PREVIOUS_USER_CA_LABEL, &prev_plain)?.as_bytes(),
        )?;
        replace_private(&dir.join(USER_CA_FILE), master.seal("ssh user CA", new_pem.as_bytes())?.as_bytes())?;
        let rotation = Rotation {
            new_fingerprint: new.fingerprint(),
            previous_fingerprint: cas.current.fingerprint(),
            previous_until: until,
        };
        let old = std::mem::replace(&mut cas.current, new);
        cas.previous = Some((old, until));
        Ok(rotation)
    }
}

/// Load the CA a rotation replaced, if its grace period is not over; an
/// expired one is deleted.
fn load_previous_user_ca(dir: &Path, master: &MasterKey) -> Result<Option<(SshCa, i64)>> {
    let path = dir.join(PREVIOUS_USER_CA_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let plain = master.open(PREVIOUS_USER_CA_LABEL, &fs::read_to_string(&path)?)?;
    let bad = || BrokerError::Invalid(format!("{} is damaged", path.display()));
    let nl = plain.iter().position(|b| *b == b'\n').ok_or_else(bad)?;
    let head = std::str::from_utf8(&plain[..nl]).map_err(|_| bad())?;
    let until: i64 = head.strip_prefix("until=").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    if until <= crate::now_ms() {
        fs::remove_file(&path)?;
        return Ok(None);
    }
    Ok(Some((SshCa::from_openssh(&plain[nl + 1..])?, until)))
}

/// Replace a private file atomically: write a sibling, then rename over.
fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write_private(&tmp, bytes)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn load_or_create_ca(path: &Path, label: &str, master: &MasterKey, created: &mut bool) -> Result<SshCa> {
    if path.exists() {
        let sealed = fs::read_to_string(path)?;
        let plain = master.open(label, &sealed)?;
        return Ok(SshCa::from_openssh(&plain)?);
    }
    let ca = SshCa::generate();
    let pem = ca.to_openssh()?;
    write_private(path, master.seal(label, pem.as_bytes())?.as_bytes())?;
    *created = true;
    Ok(ca)
}

/// Create a directory readable only by its owner.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Write a file with mode 0600 (created that way, never world-readable even briefly).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_survive_a_restart_and_refuse_a_wrong_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let (mk, generated) = MasterKey::load(&MasterKeySource::DataDir, dir.path()).unwrap();
        assert!(generated);
        let ks = KeyStore::load_or_create(dir.path(), &mk).unwrap();
        assert!(ks.created);
        let (mk2, generated2) = MasterKey::load(&MasterKeySource::DataDir, dir.path()).unwrap();
        assert!(!generated2);
        let ks2 = KeyStore::load_or_create(dir.path(), &mk2).unwrap();
        assert!(!ks2.created);
        assert_eq!(ks.user_ca().fingerprint(), ks2.user_ca().fingerprint());

        // rotation: the new CA signs, the old one stays trusted for the grace
        // period, across a restart, and is gone once it is over
        let old = ks2.user_ca().fingerprint();
        let now = 1_000_000;
        let r = ks2.rotate_user_ca(dir.path(), &mk2, std::time::Duration::from_secs(3600), now).unwrap();
        assert_eq!(r.previous_fingerprint, old);
        assert_ne!(r.new_fingerprint, old);
        let fps = |ks: &KeyStore, t| ks.user_cas().trusted(t).iter().map(|c| c.fingerprint()).collect::<Vec<_>>();
        assert_eq!(fps(&ks2, now), vec![r.new_fingerprint.clone(), old.clone()]);
        assert_eq!(fps(&ks2, now + 3_600_000), vec![r.new_fingerprint.clone()]);
        let ks3 = KeyStore::load_or_create(dir.path(), &mk2).unwrap();
        assert_eq!(ks3.user_ca().fingerprint(), r.new_fingerprint);
        // the stored grace end (1970 + 1h) is long over: dropped at load
        assert!(ks3.user_cas().previous.is_none());
        assert!(!keys_dir(dir.path()).join(PREVIOUS_USER_CA_FILE).exists());
        let real_now = crate::now_ms();
        ks3.rotate_user_ca(dir.path(), &mk2, std::time::Duration::from_secs(3600), real_now).unwrap();
        let ks4 = KeyStore::load_or_create(dir.path(), &mk2).unwrap();
        assert_eq!(ks4.user_cas().trusted(real_now).len(), 2);

        let wrong = MasterKey::parse(&"11".repeat(32)).unwrap();
        let err = KeyStore::load_or_create(dir.path(), &wrong).unwrap_err();
        assert!(err.to_string().contains("wrong master key"), "{err}");

        // losing master.key is an error, not a new CA
        fs::remove_file(dir.path().join("master.key")).unwrap();
        let err = MasterKey::load(&MasterKeySource::DataDir, dir.path()).unwrap_err();
        assert!(err.to_string().contains("no master key"), "{err}");

        // sealed files hold no plaintext key
        let sealed = fs::read_to_string(keys_dir(dir.path()).join(USER_CA_FILE)).unwrap();
        assert!(!sealed.contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(keys_dir(dir.path()).join(USER_CA_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let hex = "ab".repeat(32);
        let src = MasterKeySource::Value(Zeroizing::new(hex.clone()));
        let mk = MasterKey::parse(&hex).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::load_or_create(dir.path(), &mk).unwrap();
        let pem = ks.user_ca().to_openssh().unwrap();
        let b64_line = pem.lines().nth(1).unwrap().to_string();
        for shown in [format!("{src:?}"), format!("{mk:?}"), format!("{ks:?}"), format!("{:?}", ks.user_cas().current)]
        {
            assert!(!shown.contains(&hex), "{shown}");
            assert!(!shown.contains(&b64_line), "{shown}");
            assert!(!shown.contains("PRIVATE"), "{shown}");
        }
    }

    #[test]
    fn sealed_blobs_are_bound_to_their_label() {
        let mk = MasterKey::parse(&"ab".repeat(32)).unwrap();
        let s = mk.seal("a", b"secret").unwrap();
        assert_eq!(&*mk.open("a", &s).unwrap(), b"secret");
        assert!(mk.open("b", &s).is_err());
    }
}
