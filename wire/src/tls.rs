//! Certificates for mutual TLS: a cluster CA made with rcgen, the node and router identities it
//! signs, and their PEM files on disk (`ca.pem` + `ca.key`, `<name>.pem` + `<name>.key`).
//!
//! Every identity is good for both ends of a connection (server and client authentication), so a
//! node uses the same files to serve and to call its peers. Trust is the CA alone: any
//! certificate it signed may connect; the Hello exchange (see [`crate::quic`]) then checks which
//! node a peer is.

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// The cluster name `init_ca` puts in the CA's subject when none is given.
pub const CLUSTER_NAME_DEFAULT: &str = "scoregrid";
/// The CA certificate's file name in a certificate directory.
pub const CA_CERTIFICATE_FILE: &str = "ca.pem";
/// The CA private key's file name in a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a CA or an identity stays valid, in years from the start of the current year.
/// Certificates are not rotated automatically; reissuing means a new `certs issue` run.
pub const CERTIFICATE_VALIDITY_YEARS: i32 = 10;
/// Longest certificate name (a DNS name: 253 bytes, labels of at most 63).
pub const NAME_BYTES_MAX: usize = 253;
const LABEL_BYTES_MAX: usize = 63;

/// The common name of every cluster CA; the cluster's own name is its organization.
const CA_COMMON_NAME: &str = "scoregrid cluster CA";

/// Why a certificate could not be made, written, read or trusted. Each variant names the file or
/// the name at fault.
#[derive(Debug, Error)]
pub enum CertError {
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("could not generate a certificate for {name:?}: {reason}")]
    Generate { name: String, reason: String },
    #[error("a cluster CA already exists at {}: refusing to overwrite it", path.display())]
    CaExists { path: PathBuf },
    #[error("{} already exists: refusing to overwrite it", path.display())]
    FileExists { path: PathBuf },
    #[error("could not write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("the key in {} does not belong to the certificate in {}", key_path.display(), certificate_path.display())]
    KeyMismatch {
        key_path: PathBuf,
        certificate_path: PathBuf,
    },
    #[error("certificate {name:?} is not trusted by the cluster CA: {reason}")]
    Untrusted { name: String, reason: String },
}

/// What a certificate allows its holder to do, written in the certificate's subject as its
/// organizational unit (`scoregrid certs issue --role`). Servers decide from it which requests a
/// peer may make: only nodes take part in Raft and node-to-node calls; a router uses the request
/// path and the map watch; a loader stages and activates model versions; an operator may also
/// change membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Node,
    Router,
    Loader,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Router => "router",
            Role::Loader => "loader",
            Role::Operator => "operator",
        }
    }

    /// # Errors
    /// A message naming the roles there are.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "node" => Ok(Role::Node),
            "router" => Ok(Role::Router),
            "loader" => Ok(Role::Loader),
            "operator" => Ok(Role::Operator),
            other => Err(format!(
                "{other:?} is not a role: node, router, loader or operator"
            )),
        }
    }

    /// The role a certificate name suggests when none is given: `router*`, `loader*` and
    /// `operator*`/`client*` names get those roles, any other name is a node's.
    pub fn for_name(name: &str) -> Self {
        if name.starts_with("router") {
            Role::Router
        } else if name.starts_with("loader") {
            Role::Loader
        } else if name.starts_with("operator") || name.starts_with("client") {
            Role::Operator
        } else {
            Role::Node
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is at the other end of a connection, read from its (verified) certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's common name (`certs issue --name`).
    pub name: String,
    pub role: Role,
}

impl PeerIdentity {
    /// Reads the name and role from a certificate this process has already verified.
    ///
    /// # Errors
    /// [`CertError::Untrusted`] when the certificate does not parse, has no common name, or
    /// names no valid role (a certificate issued without one is refused rather than guessed).
    pub fn from_certificate(certificate: &CertificateDer<'_>) -> Result<Self, CertError> {
        let untrusted = |reason: String| CertError::Untrusted {
            name: "peer certificate".to_owned(),
            reason,
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
            .map_err(|error| untrusted(format!("does not parse: {error}")))?;
        let subject = parsed.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| untrusted("has no common name".to_owned()))?
            .to_owned();
        let role = subject
            .iter_organizational_unit()
            .next()
            .and_then(|ou| ou.as_str().ok())
            .ok_or_else(|| {
                untrusted(format!(
                    "{name:?} names no role (reissue it with `scoregrid certs issue --role`)"
                ))
            })
            .and_then(|ou| Role::parse(ou).map_err(|e| untrusted(format!("{name:?}: {e}"))))?;
        Ok(Self { name, role })
    }
}

/// The process-wide crypto provider: ring, always passed explicitly. Two providers in one binary
/// make rustls' implicit `builder()` panic at run time, so nothing here relies on a default.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A cluster's certificate authority: it signs every node's and router's certificate, and every
/// process trusts exactly the certificates it signed.
pub struct ClusterCa {
    cluster_name: String,
    issuer: Issuer<'static, KeyPair>,
    certificate: CertificateDer<'static>,
    certificate_pem: String,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new CA (ECDSA P-256) for the cluster `cluster_name`.
    ///
    /// # Errors
    /// [`CertError::InvalidName`] for a name that is not a DNS-style name,
    /// [`CertError::Generate`] if rcgen fails.
    pub fn generate(cluster_name: &str) -> Result<Self, CertError> {
        check_name(cluster_name)?;
        let key = KeyPair::generate().map_err(|error| generate_error(cluster_name, error))?;
        let params = ca_params(ca_distinguished_name(cluster_name));
        let certificate = params
            .self_signed(&key)
            .map_err(|error| generate_error(cluster_name, error))?;
        Ok(Self {
            cluster_name: cluster_name.to_owned(),
            certificate_pem: certificate.pem(),
            certificate: certificate.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The CA certificate, the one root every process trusts.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Issues an identity for `name`: a new key and a certificate signed by this CA, valid for
    /// both server and client authentication. Its subject alternative names are `name` (as a DNS
    /// name) and each of `subject_alt_names` (an IP address when it parses as one, else a DNS
    /// name). Before returning, the certificate is verified against this CA as rustls will
    /// verify it on a connection (as a client certificate and as a server certificate for each
    /// of its names), so a certificate that would be refused is an error here, not at connect.
    ///
    /// # Errors
    /// [`CertError::InvalidName`] for a name or alternative name that is neither a DNS name nor
    /// an IP address, [`CertError::Generate`] if rcgen fails, [`CertError::Untrusted`] if the
    /// result does not verify (a bug, or a CA file edited by hand).
    pub fn issue(&self, name: &str, subject_alt_names: &[String]) -> Result<Identity, CertError> {
        self.issue_with_role(name, Role::for_name(name), subject_alt_names)
    }

    /// As [`ClusterCa::issue`], with the role given rather than taken from the name.
    ///
    /// # Errors
    /// As [`ClusterCa::issue`].
    pub fn issue_with_role(
        &self,
        name: &str,
        role: Role,
        subject_alt_names: &[String],
    ) -> Result<Identity, CertError> {
        self.issue_with_pem(name, role, subject_alt_names)
            .map(|issued| issued.identity)
    }

    fn issue_with_pem(
        &self,
        name: &str,
        role: Role,
        subject_alt_names: &[String],
    ) -> Result<IssuedIdentity, CertError> {
        check_name(name)?;
        let mut params = CertificateParams::default();
        params
            .subject_alt_names
            .push(SanType::DnsName(dns_name(name)?));
        for alt_name in subject_alt_names {
            let san = match alt_name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    check_name(alt_name)?;
                    SanType::DnsName(dns_name(alt_name)?)
                }
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        let mut distinguished_name = DistinguishedName::new();
        distinguished_name.push(DnType::CommonName, name);
        distinguished_name.push(DnType::OrganizationName, self.cluster_name.as_str());
        distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
        params.distinguished_name = distinguished_name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);

        let key = KeyPair::generate().map_err(|error| generate_error(name, error))?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|error| generate_error(name, error))?;
        let identity = Identity {
            roots: vec![self.certificate.clone()],
            chain: vec![certificate.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        };
        // Pair assertion: what we just signed must pass the verifiers the transport uses.
        identity.verify(name)?;
        let read_back = PeerIdentity::from_certificate(certificate.der())?;
        if read_back.name != name || read_back.role != role {
            return Err(CertError::Untrusted {
                name: name.to_owned(),
                reason: format!(
                    "reads back as {:?} with role {}",
                    read_back.name, read_back.role
                ),
            });
        }
        for alt_name in std::iter::once(name).chain(subject_alt_names.iter().map(String::as_str)) {
            identity.verify_server_name(name, alt_name)?;
        }
        Ok(IssuedIdentity {
            identity,
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600 on unix) into `dir`, creating it if needed.
    ///
    /// # Errors
    /// [`CertError::CaExists`] if either file is already there (nothing is overwritten),
    /// [`CertError::Write`] naming the file that could not be written.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), CertError> {
        let certificate_path = dir.join(CA_CERTIFICATE_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&certificate_path, &key_path] {
            if path.exists() {
                return Err(CertError::CaExists { path: path.clone() });
            }
        }
        create_dir(dir)?;
        // Lost a race with another writer: still "a CA exists".
        let ca_exists = |error| match error {
            CertError::FileExists { path } => CertError::CaExists { path },
            other => other,
        };
        let key_pem = self.issuer.key().serialize_pem();
        write_new_file(&key_path, key_pem.as_bytes(), true).map_err(ca_exists)?;
        write_new_file(&certificate_path, self.certificate_pem.as_bytes(), false).map_err(ca_exists)
    }

    /// Reads the CA written by [`ClusterCa::write_to_dir`] back from `dir`.
    ///
    /// # Errors
    /// [`CertError::Read`] naming the file that is missing, not PEM, or not a CA this tool
    /// wrote; [`CertError::KeyMismatch`] when `ca.key` does not belong to `ca.pem`.
    pub fn load_from_dir(dir: &Path) -> Result<Self, CertError> {
        let certificate_path = dir.join(CA_CERTIFICATE_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let certificate_pem = fs::read_to_string(&certificate_path)
            .map_err(|error| read_error(&certificate_path, error.to_string()))?;
        let certificate = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|error| read_error(&certificate_path, pem_reason(error)))?;
        let key_pem = fs::read_to_string(&key_path)
            .map_err(|error| read_error(&key_path, error.to_string()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|error| read_error(&key_path, format!("not a private key: {error}")))?;
        let spki = key.subject_public_key_info();
        if !certificate
            .as_ref()
            .windows(spki.len())
            .any(|window| window == spki.as_slice())
        {
            return Err(CertError::KeyMismatch {
                key_path,
                certificate_path,
            });
        }
        let distinguished_name = der::subject_of(certificate.as_ref())
            .map_err(|reason| read_error(&certificate_path, reason))?;
        let cluster_name = match distinguished_name.get(&DnType::OrganizationName) {
            Some(DnValue::Utf8String(name)) => name.clone(),
            Some(DnValue::PrintableString(name)) => name.as_str().to_owned(),
            _ => {
                return Err(read_error(
                    &certificate_path,
                    "the CA subject names no cluster (organization)",
                ));
            }
        };
        let params = ca_params(distinguished_name);
        Ok(Self {
            cluster_name,
            issuer: Issuer::new(params, key),
            certificate,
            certificate_pem,
        })
    }
}

/// Creates a new cluster CA named [`CLUSTER_NAME_DEFAULT`] and writes it into `dir` (what
/// `scoregrid certs init` does).
///
/// # Errors
/// As [`ClusterCa::generate`] and [`ClusterCa::write_to_dir`]: a CA already in `dir` is
/// [`CertError::CaExists`].
pub fn init_ca(dir: &Path) -> Result<ClusterCa, CertError> {
    let ca = ClusterCa::generate(CLUSTER_NAME_DEFAULT)?;
    ca.write_to_dir(dir)?;
    Ok(ca)
}

/// Issues an identity for `name` with the CA found in `dir` and writes `<name>.pem` and
/// `<name>.key` (mode 0600 on unix) beside it (what `scoregrid certs issue --name N` does).
///
/// # Errors
/// As [`ClusterCa::load_from_dir`] and [`ClusterCa::issue`]; [`CertError::FileExists`] when
/// either file is already there (nothing is overwritten).
pub fn issue_to_dir(
    dir: &Path,
    name: &str,
    role: Role,
    subject_alt_names: &[String],
) -> Result<Identity, CertError> {
    check_name(name)?;
    if name == "ca" {
        return Err(CertError::InvalidName {
            name: name.to_owned(),
            reason: "reserved for the cluster CA's files".to_owned(),
        });
    }
    let certificate_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    for path in [&certificate_path, &key_path] {
        if path.exists() {
            return Err(CertError::FileExists { path: path.clone() });
        }
    }
    let ca = ClusterCa::load_from_dir(dir)?;
    let issued = ca.issue_with_pem(name, role, subject_alt_names)?;
    write_new_file(&key_path, issued.key_pem.as_bytes(), true)?;
    write_new_file(&certificate_path, issued.certificate_pem.as_bytes(), false)?;
    Ok(issued.identity)
}

struct IssuedIdentity {
    identity: Identity,
    certificate_pem: String,
    key_pem: String,
}

/// What a process presents and trusts on every connection: its certificate chain and key, and the
/// cluster CA certificate(s) it accepts peers from.
pub struct Identity {
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Reads an identity from PEM files: the CA certificate(s) to trust (`ca_path`, usually
    /// `ca.pem`; several certificates are all trusted, which allows a CA rotation), this
    /// process's certificate chain (`certificate_path`, leaf first) and its private key
    /// (`key_path`). The chain is checked against the CA before returning.
    ///
    /// # Errors
    /// [`CertError::Read`] naming the file that is missing, not PEM or holds no item of the
    /// expected kind; [`CertError::Untrusted`] when the certificate is not signed by the CA.
    pub fn load(
        ca_path: &Path,
        certificate_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CertError> {
        let roots = read_certificates(ca_path)?;
        if roots.is_empty() {
            return Err(read_error(ca_path, "holds no certificate"));
        }
        let chain = read_certificates(certificate_path)?;
        if chain.is_empty() {
            return Err(read_error(certificate_path, "holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|error| read_error(key_path, pem_reason(error)))?;
        let identity = Self { roots, chain, key };
        identity.verify(&certificate_path.display().to_string())?;
        Ok(identity)
    }

    /// Builds an identity from parts already in memory, without checking them (tests use it to
    /// make a peer whose certificate comes from another CA).
    pub fn from_parts(
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        Self { roots, chain, key }
    }

    /// The same certificate and key, trusting `roots` instead (a CA rotation; tests use it to
    /// make a peer that trusts the cluster but holds a certificate of another CA).
    pub fn with_roots(self, roots: Vec<CertificateDer<'static>>) -> Self {
        Self { roots, ..self }
    }

    /// The CA certificates this identity trusts.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The certificate chain this identity presents, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A QUIC endpoint configuration whose stateless-reset key and connection IDs are derived
    /// from this identity's private key, so that they survive a restart: the new process of a
    /// node killed with `kill -9` recognises the connection IDs its old process issued and
    /// answers the first packet of a peer's old connection with a reset the peer accepts, and
    /// the peer reconnects at once instead of waiting out the idle timeout (CHAOS.md, bug 1).
    /// Derived one-way: the private key itself never reaches QUIC.
    pub(crate) fn endpoint_config(&self) -> quinn::EndpointConfig {
        let derive = |purpose: &[u8]| {
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            context.update(purpose);
            context.update(self.key.secret_der());
            context.finish()
        };
        let reset = derive(b"scoregrid quic stateless reset key v1");
        let cid = derive(b"scoregrid quic connection id key v1");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid.as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            reset.as_ref(),
        )));
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The trust store built from [`Identity::roots`].
    pub(crate) fn root_store(&self) -> Result<Arc<RootCertStore>, CertError> {
        let mut store = RootCertStore::empty();
        for (index, root) in self.roots.iter().enumerate() {
            store
                .add(root.clone())
                .map_err(|error| CertError::Untrusted {
                    name: format!("CA certificate #{index}"),
                    reason: error.to_string(),
                })?;
        }
        Ok(Arc::new(store))
    }

    /// Checks the chain against the roots as the server's client verifier will.
    fn verify(&self, name: &str) -> Result<(), CertError> {
        let untrusted = |reason: String| CertError::Untrusted {
            name: name.to_owned(),
            reason,
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.root_store()?, crypto_provider())
                .build()
                .map_err(|error| untrusted(error.to_string()))?;
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .ok_or_else(|| untrusted("no certificate".to_owned()))?;
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|error| untrusted(error.to_string()))?;
        Ok(())
    }

    /// Checks the chain against the roots as a client connecting to `server_name` will.
    fn verify_server_name(&self, name: &str, server_name: &str) -> Result<(), CertError> {
        let untrusted = |reason: String| CertError::Untrusted {
            name: name.to_owned(),
            reason,
        };
        let verifier =
            WebPkiServerVerifier::builder_with_provider(self.root_store()?, crypto_provider())
                .build()
                .map_err(|error| untrusted(error.to_string()))?;
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|error| untrusted(format!("{server_name:?}: {error}")))?;
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .ok_or_else(|| untrusted("no certificate".to_owned()))?;
        verifier
            .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
            .map_err(|error| untrusted(error.to_string()))?;
        Ok(())
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|error| read_error(path, pem_reason(error)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read_error(path, pem_reason(error)))
}

fn pem_reason(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of the expected kind".to_owned()
        }
        other => format!("not valid PEM: {other}"),
    }
}

fn read_error(path: &Path, reason: impl Into<String>) -> CertError {
    CertError::Read {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn generate_error(name: &str, error: rcgen::Error) -> CertError {
    CertError::Generate {
        name: name.to_owned(),
        reason: error.to_string(),
    }
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes a file that must not exist yet (`create_new`, so a race cannot overwrite either);
/// `secret` files get mode 0600 on unix from the moment they exist.
fn write_new_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let write_error = |source: std::io::Error| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file: File = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::FileExists {
                path: path.to_owned(),
            }
        } else {
            write_error(source)
        }
    })?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// A certificate name must be a DNS name (it is the server name clients verify, and a file name).
fn check_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason: &str| CertError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(invalid("must be 1-253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > LABEL_BYTES_MAX {
            return Err(invalid("each dot-separated label must be 1-63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label may not start or end with '-'"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("may only hold [A-Za-z0-9.-]"));
        }
    }
    Ok(())
}

fn dns_name(name: &str) -> Result<Ia5String, CertError> {
    Ia5String::try_from(name).map_err(|error| CertError::InvalidName {
        name: name.to_owned(),
        reason: error.to_string(),
    })
}

fn ca_distinguished_name(cluster_name: &str) -> DistinguishedName {
    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    distinguished_name.push(DnType::OrganizationName, cluster_name);
    distinguished_name
}

/// The CA's parameters. Only the subject, the key identifier method and the key usages matter
/// for signing (they are what [`Issuer`] keeps), so a CA read back from disk signs exactly as
/// the one that was generated.
fn ca_params(distinguished_name: DistinguishedName) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

/// From January 1st of last year (a clock a little behind still accepts a new certificate) to
/// [`CERTIFICATE_VALIDITY_YEARS`] later.
fn set_validity(params: &mut CertificateParams) {
    const SECONDS_PER_YEAR: u64 = 31_556_952; // 365.2425 days
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let year = 1970 + i32::try_from(seconds / SECONDS_PER_YEAR).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CERTIFICATE_VALIDITY_YEARS, 1, 1);
}

/// Just enough DER to read a certificate's subject back: rcgen (without its x509-parser
/// feature, which would pull a second ASN.1 stack) cannot parse certificates, and an issuer must
/// reproduce the CA's subject byte for byte.
mod der {
    use rcgen::string::PrintableString;
    use rcgen::{DistinguishedName, DnType, DnValue};

    const TAG_SEQUENCE: u8 = 0x30;
    const TAG_SET: u8 = 0x31;
    const TAG_OID: u8 = 0x06;
    const TAG_UTF8_STRING: u8 = 0x0c;
    const TAG_PRINTABLE_STRING: u8 = 0x13;
    const TAG_VERSION: u8 = 0xa0;
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    const OID_ORGANIZATION_NAME: &[u8] = &[0x55, 0x04, 0x0a];

    /// Splits one tag-length-value off `input`: (tag, value, rest).
    fn read_tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
        let truncated = || "truncated DER".to_owned();
        let (&tag, rest) = input.split_first().ok_or_else(truncated)?;
        let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
        let length = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err("unsupported DER length".to_owned());
            }
            let (bytes, after) = rest.split_at_checked(count).ok_or_else(truncated)?;
            rest = after;
            bytes
                .iter()
                .fold(0usize, |length, &byte| (length << 8) | usize::from(byte))
        };
        let (value, rest) = rest.split_at_checked(length).ok_or_else(truncated)?;
        Ok((tag, value, rest))
    }

    fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
        let (found, value, rest) = read_tlv(input)?;
        if found != tag {
            return Err(format!(
                "expected {what} (tag {tag:#04x}), found tag {found:#04x}"
            ));
        }
        Ok((value, rest))
    }

    /// The subject of an X.509 certificate, for the attribute kinds this tool writes.
    pub(super) fn subject_of(certificate: &[u8]) -> Result<DistinguishedName, String> {
        let (certificate, _) = expect(certificate, TAG_SEQUENCE, "certificate")?;
        let (tbs, _) = expect(certificate, TAG_SEQUENCE, "to-be-signed certificate")?;
        let (tag, _, after_version) = read_tlv(tbs)?;
        let rest = if tag == TAG_VERSION {
            after_version
        } else {
            tbs
        };
        let (_, _serial, rest) = read_tlv(rest)?;
        let (_, rest) = expect(rest, TAG_SEQUENCE, "signature algorithm")?;
        let (_, rest) = expect(rest, TAG_SEQUENCE, "issuer")?;
        let (_, rest) = expect(rest, TAG_SEQUENCE, "validity")?;
        let (mut subject, _) = expect(rest, TAG_SEQUENCE, "subject")?;

        let mut name = DistinguishedName::new();
        while !subject.is_empty() {
            let (set, rest) = expect(subject, TAG_SET, "relative distinguished name")?;
            subject = rest;
            let (attribute, _) = expect(set, TAG_SEQUENCE, "attribute")?;
            let (oid, value) = expect(attribute, TAG_OID, "attribute type")?;
            let (tag, value, _) = read_tlv(value)?;
            let kind = match oid {
                OID_COMMON_NAME => DnType::CommonName,
                OID_ORGANIZATION_NAME => DnType::OrganizationName,
                _ => return Err("the subject holds an attribute this tool does not write".into()),
            };
            let text = std::str::from_utf8(value)
                .map_err(|_| "a subject attribute is not text".to_owned())?;
            let value = match tag {
                TAG_UTF8_STRING => DnValue::Utf8String(text.to_owned()),
                TAG_PRINTABLE_STRING => DnValue::PrintableString(
                    PrintableString::try_from(text).map_err(|error| error.to_string())?,
                ),
                _ => return Err(format!("unsupported string tag {tag:#04x} in the subject")),
            };
            name.push(kind, value);
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves a certificate names its role and name as issued, and one without a role is
    /// refused by name rather than given a guessed role.
    #[test]
    fn roles_are_read_from_certificates_and_a_missing_one_is_refused() {
        let ca = ClusterCa::generate("test").expect("CA");
        for (name, role) in [
            ("node-1", Role::Node),
            ("router", Role::Router),
            ("loader", Role::Loader),
            ("client", Role::Operator),
        ] {
            let identity = ca.issue(name, &[]).expect("issued");
            let peer = PeerIdentity::from_certificate(&identity.chain()[0]).expect("parses");
            assert_eq!((peer.name.as_str(), peer.role), (name, role));
        }
        let identity = ca
            .issue_with_role("ops-7", Role::Operator, &[])
            .expect("issued");
        let peer = PeerIdentity::from_certificate(&identity.chain()[0]).expect("parses");
        assert_eq!(peer.role, Role::Operator);

        let mut params = CertificateParams::new(vec!["legacy".to_owned()]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "legacy");
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("key");
        let legacy = params.self_signed(&key).expect("signed");
        let error = PeerIdentity::from_certificate(legacy.der()).expect_err("no role");
        assert!(error.to_string().contains("names no role"), "{error}");
        assert!(Role::parse("admin").unwrap_err().contains("not a role"));
    }

    /// Proves the DER reader recovers the subject rcgen wrote, so a CA loaded from disk signs
    /// with the same issuer name (checked end to end by the verification inside `issue`).
    #[test]
    fn subject_round_trips_through_der() {
        let ca = ClusterCa::generate("east-1").expect("CA");
        let subject = der::subject_of(ca.certificate().as_ref()).expect("subject parses");
        assert_eq!(
            subject.get(&DnType::OrganizationName),
            Some(&DnValue::Utf8String("east-1".to_owned()))
        );
        assert_eq!(
            subject.get(&DnType::CommonName),
            Some(&DnValue::Utf8String(CA_COMMON_NAME.to_owned()))
        );
    }

    /// Proves names that could not be a server name or a file name are refused up front.
    #[test]
    fn bad_names_are_refused() {
        for name in ["", "a/b", "-x", "x-", "a..b", "n 1", &"x".repeat(64)] {
            assert!(
                matches!(check_name(name), Err(CertError::InvalidName { .. })),
                "{name:?} should be refused"
            );
        }
        for name in ["n1", "router-2", "node3.cluster.internal"] {
            assert!(check_name(name).is_ok(), "{name:?} should pass");
        }
    }
}
