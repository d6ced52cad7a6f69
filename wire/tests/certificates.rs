//! Certificate files as `scoregrid certs init` / `certs issue` write them: they load back, they
//! work on a real QUIC connection, nothing is overwritten, keys are private, and a broken file is
//! reported by its path.

mod support;

use scoregrid_wire::tls::{CA_CERTIFICATE_FILE, CA_KEY_FILE};
use scoregrid_wire::{
    CertError, Identity, NodeClient, NodeId, QuicClient, Role, init_ca, issue_to_dir,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{EchoService, echoed, fetch, localhost, start_server, test_config};

fn load(dir: &Path, name: &str) -> Result<Identity, CertError> {
    Identity::load(
        &dir.join(CA_CERTIFICATE_FILE),
        &dir.join(format!("{name}.pem")),
        &dir.join(format!("{name}.key")),
    )
}

/// Proves `init_ca`, then `issue_to_dir`, then `Identity::load` give identities that a server and
/// a client accept from each other: a call made with the loaded files is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_by_init_and_issue_load_and_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_ca(dir.path()).expect("CA created");
    issue_to_dir(
        dir.path(),
        "n1",
        Role::for_name("n1"),
        &["127.0.0.1".to_owned()],
    )
    .expect("node identity issued");
    issue_to_dir(dir.path(), "router", Role::for_name("router"), &[])
        .expect("router identity issued");
    let node = load(dir.path(), "n1").expect("node identity loads");
    let router = load(dir.path(), "router").expect("router identity loads");

    let service = Arc::new(EchoService::default());
    let server = start_server(
        localhost(),
        &node,
        NodeId(1),
        test_config(),
        service.clone(),
    );
    let client = QuicClient::new(NodeId(1), server.addr, "n1".into(), &router, test_config())
        .expect("client builds");
    let response = tokio::time::timeout(Duration::from_secs(5), client.call(fetch(5)))
        .await
        .expect("answered within 5 s")
        .expect("call succeeds");
    assert_eq!(echoed(&response), Some(5));
    // The node's IP address is a name of its certificate too.
    let by_ip = QuicClient::new(
        NodeId(1),
        server.addr,
        "127.0.0.1".into(),
        &router,
        test_config(),
    )
    .expect("client builds");
    by_ip
        .call(fetch(6))
        .await
        .expect("the IP alternative name verifies");
    server.stop().await;
}

/// Proves private keys are written readable by their owner only.
#[cfg(unix)]
#[test]
fn keys_are_written_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    init_ca(dir.path()).expect("CA created");
    issue_to_dir(dir.path(), "n1", Role::for_name("n1"), &[]).expect("issued");
    for key in [CA_KEY_FILE, "n1.key"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .expect("key exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} has mode {:o}", mode & 0o777);
    }
}

/// Proves a second `init_ca` in the same directory is refused with a typed error and leaves the
/// first CA untouched (identities issued from it still load), and the same for `issue_to_dir`.
#[test]
fn nothing_is_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_ca(dir.path()).expect("CA created");
    let ca_before = std::fs::read(dir.path().join(CA_CERTIFICATE_FILE)).expect("ca.pem");
    let key_before = std::fs::read(dir.path().join(CA_KEY_FILE)).expect("ca.key");
    let error = init_ca(dir.path()).expect_err("a second CA must be refused");
    assert!(matches!(error, CertError::CaExists { .. }), "{error}");
    assert!(error.to_string().contains("ca."), "{error}");
    assert_eq!(
        std::fs::read(dir.path().join(CA_CERTIFICATE_FILE)).expect("ca.pem"),
        ca_before
    );
    assert_eq!(
        std::fs::read(dir.path().join(CA_KEY_FILE)).expect("ca.key"),
        key_before
    );

    issue_to_dir(dir.path(), "n1", Role::for_name("n1"), &[]).expect("issued");
    let error = issue_to_dir(dir.path(), "n1", Role::for_name("n1"), &[])
        .expect_err("a second n1 must be refused");
    assert!(matches!(error, CertError::FileExists { .. }), "{error}");
    load(dir.path(), "n1").expect("the first n1 still loads");
}

/// Proves garbage or missing PEM files give an error naming the file at fault.
#[test]
fn a_broken_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_ca(dir.path()).expect("CA created");
    issue_to_dir(dir.path(), "n1", Role::for_name("n1"), &[]).expect("issued");

    let certificate = dir.path().join("n1.pem");
    std::fs::write(&certificate, "this is not a certificate\n").expect("overwritten");
    let error = load(dir.path(), "n1").expect_err("garbage must be refused");
    assert!(matches!(error, CertError::Read { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&certificate.display().to_string()),
        "{error}"
    );

    issue_to_dir(dir.path(), "n2", Role::for_name("n2"), &[]).expect("issued");
    let key = dir.path().join("n2.key");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .expect("overwritten");
    let error = load(dir.path(), "n2").expect_err("a broken key must be refused");
    assert!(
        error.to_string().contains(&key.display().to_string()),
        "{error}"
    );

    let missing = dir.path().join("n3.pem");
    let error = load(dir.path(), "n3").expect_err("a missing file must be refused");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );

    let ca_key = dir.path().join(CA_KEY_FILE);
    std::fs::write(&ca_key, "garbage").expect("overwritten");
    let error = issue_to_dir(dir.path(), "n4", Role::for_name("n4"), &[])
        .expect_err("a broken CA key must be refused");
    assert!(
        error.to_string().contains(&ca_key.display().to_string()),
        "{error}"
    );
}

/// Proves `Identity::load` refuses a certificate that another CA signed, before any connection.
#[test]
fn a_certificate_of_another_ca_does_not_load() {
    let ours = tempfile::tempdir().expect("tempdir");
    let theirs = tempfile::tempdir().expect("tempdir");
    init_ca(ours.path()).expect("CA created");
    init_ca(theirs.path()).expect("CA created");
    issue_to_dir(theirs.path(), "n1", Role::Node, &[]).expect("issued");
    let error = Identity::load(
        &ours.path().join(CA_CERTIFICATE_FILE),
        &theirs.path().join("n1.pem"),
        &theirs.path().join("n1.key"),
    )
    .expect_err("a foreign certificate must be refused");
    assert!(matches!(error, CertError::Untrusted { .. }), "{error}");
}
